"""Resumable k-fold cross-validation of a Pipeline, ending in a report.

:func:`cross_validate` trains one fresh copy of a pipeline per fold, predicts that fold's
validation cases on their original grid, scores them and writes a report. Everything lands in
one folder, which :meth:`medseg.Pipeline.load` opens as an ensemble of the fold models::

    output_dir/
        cv.json                   folds, seed, the (train, validation) case ids of each fold, and the
                                  settings of the run with their digest
        fold_<k>/checkpoint.pt    written after every epoch (resumed after a kill)
        fold_<k>/pipeline.json    the fold's pipeline, with its training history
        fold_<k>/model.pt         the fold's final weights
        fold_<k>/predictions/     one label file per validation case, in the input's format
        fold_<k>/metrics.json     the fold's metric rows and history; written last: "fold done"
        report/                   metrics.csv, summary.csv, box plots, curves, overlays, report.md

Every file is written atomically, so a run killed at any moment and started again with the same
call finishes the work: folds with a ``metrics.json`` are not touched, the fold that was running
continues from its last checkpoint, and the report is rebuilt from all folds.

A rerun into the same folder must use the same settings: ``cv.json`` keeps them (the pipeline's
config without its history and split, plus the fit options, the folds, seed and the subjects the
splits grouped) and their SHA-256 digest, and a call whose settings differ is refused with a
message naming each difference. Settings that change nothing in the results (data loader workers,
windows per forward pass) are left out. A ``cv.json`` written before settings were kept resumes
with a warning, and records the settings of that call.

Metrics follow :mod:`medseg.evaluation.metrics`: every fold scores every foreground class of the
plan (or its regions), ignored voxels left out; non-finite values are written as
:mod:`medseg.evaluation.tables` writes them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError, MedsegError
from ..io import Dataset, read_image_file
from .cv_settings import check_settings, run_settings, settings_digest
from .metrics import METRIC_NAMES, metrics_to_rows, summarize
from .report import OverlayCase, write_report
from .scoring import score_prediction
from .splits import kfold_splits
from .tables import from_json, write_json

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = ["cross_validate"]

log = logging.getLogger(__name__)

_CV_FORMAT = "medseg-cv/1"
_FOLD_FORMAT = "medseg-cv-fold/1"
Split = tuple[list[str], list[str]]


# --- JSON files ---------------------------------------------------------------------------------


_write_json = write_json


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable ({error}); delete it to redo that part.") from error


# --- splits -------------------------------------------------------------------------------------


def _splits(data: Dataset, path: Path, folds: int, seed: int, groups: bool,
            settings: dict[str, Any]) -> list[Split]:
    """The folds stored in ``path`` (checked against the call), or new ones written there."""
    case_ids = data.case_ids
    if path.is_file():
        stored = _read_json(path)
        asked = {"folds": folds, "seed": seed, "groups": groups}
        differ = {key: stored.get(key) for key, value in asked.items() if stored.get(key) != value}
        if differ:
            raise ValueError(
                f"{path} holds a cross-validation with {differ}, but this call asks for "
                f"{ {key: asked[key] for key in differ} }; pass the same values to resume it, or "
                f"choose a new output_dir (or delete that one) to start another."
            )
        splits = [(list(fold["train"]), list(fold["val"])) for fold in stored["splits"]]
        stored_cases = {case for _, val in splits for case in val}
        if stored_cases != set(case_ids):
            added, gone = sorted(set(case_ids) - stored_cases), sorted(stored_cases - set(case_ids))
            raise DataError(
                f"{path} was made for other cases (now added: {added[:5]}, missing: {gone[:5]}); "
                f"choose a new output_dir to cross-validate this dataset."
            )
        if check_settings(stored, settings, path):  # an old cv.json: record this call's settings
            _write_json(path, {**stored, "settings_digest": settings_digest(settings), "settings": settings})
        return splits
    group_ids = [data.group_of(case) for case in case_ids] if groups else None
    splits = kfold_splits(case_ids, folds, seed, groups=group_ids)
    record = {"format": _CV_FORMAT, "folds": folds, "seed": seed, "groups": groups,
              "splits": [{"train": train, "val": val} for train, val in splits],
              "settings_digest": settings_digest(settings), "settings": settings}
    _write_json(path, record)
    return splits


# --- one fold -----------------------------------------------------------------------------------


def _predict_fold(member: Pipeline, val: Sequence[str], folder: Path, fold: int) -> tuple[list, dict]:
    """Predict, write and score the validation cases of one fold on their original grid: the
    Pipeline's one predict-and-write path, scored as :meth:`Pipeline.evaluate` scores (the
    dataset's classes keyed by value, or its regions; ignored voxels left out)."""
    data = member.data
    predictions = folder / "predictions"
    if predictions.exists():  # left by an unfinished run: rewritten in full
        shutil.rmtree(predictions)
    rows: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    for case in val:
        sample = data.load(case)
        if sample.label is None:
            raise DataError(f"case {case!r} has no label; cross-validation needs labelled cases.")
        prediction = member.predict_case(sample)
        path = member.write_prediction(prediction, sample.geometry, predictions, case=case)
        files[case] = path.relative_to(folder).as_posix()
        metrics = score_prediction(prediction, sample.label, member.plan.label_spec,
                                   spacing=sample.geometry.spacing, metrics=True)
        rows += metrics_to_rows(metrics, case=case, fold=fold)
    return rows, files


def _run_fold(pipe: Pipeline, fold: int, split: Split, folder: Path, seed: int,
              fit_options: dict[str, Any]) -> dict[str, Any]:
    """Train, predict and score one fold; write its ``metrics.json`` marker last."""
    train, val = split
    marker = folder / "metrics.json"
    marker.unlink(missing_ok=True)  # a fold being (re)done is not done
    member = pipe.fresh(seed=seed + fold)
    log.info("fold %d: training on %d cases, validating on %d", fold, len(train), len(val))
    member.fit(train, val, output_dir=folder, **fit_options)
    rows, files = _predict_fold(member, val, folder, fold)
    result = {"format": _FOLD_FORMAT, "fold": fold, "seed": seed + fold, "train": train,
              "val": val, "history": member.history, "rows": rows, "predictions": files}
    _write_json(marker, result)
    return result


def _read_fold(marker: Path, fold: int, split: Split) -> dict[str, Any]:
    """A finished fold's result, checked against the split it should have validated."""
    result = _read_json(marker)
    if result.get("fold") != fold or sorted(result.get("val", [])) != sorted(split[1]):
        raise DataError(
            f"{marker} does not belong to fold {fold} of this cross-validation (validation cases "
            f"differ from cv.json); delete {marker.parent} to redo that fold."
        )
    result["rows"] = [from_json(row, METRIC_NAMES) for row in result["rows"]]
    result["history"] = [from_json(entry) for entry in result["history"]]
    return result


# --- report -------------------------------------------------------------------------------------


def _case_dice(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean Dice over labels per case (finite values), as the report ranks cases."""
    values: dict[str, list[float]] = {}
    for row in rows:
        dice = row.get("dice")
        if dice is not None and math.isfinite(float(dice)):
            values.setdefault(str(row["case"]), []).append(float(dice))
    return {case: float(np.mean(found)) for case, found in values.items()}


def _overlays(data: Dataset, results: Sequence[dict[str, Any]], output_dir: Path,
              count: int) -> dict[str, OverlayCase]:
    """Image, reference and written prediction of ``count`` cases spread from worst to best Dice."""
    dice = _case_dice([row for result in results for row in result["rows"]])
    ranked = sorted(dice, key=lambda case: (dice[case], case))
    if not ranked or count == 0:
        return {}
    if count == 1:
        chosen = [ranked[(len(ranked) - 1) // 2]]
    else:
        chosen = [ranked[round(i * (len(ranked) - 1) / (count - 1))] for i in range(count)]
    where = {case: output_dir / f"fold_{result['fold']}" / file
             for result in results for case, file in result["predictions"].items()}
    overlays = {}
    for case in dict.fromkeys(chosen):
        sample = data.load(case)
        prediction = read_image_file(where[case])[0][0]
        reference = sample.label if data.label_spec is None else data.label_spec.decode(sample.label)
        overlays[case] = OverlayCase(sample.image, reference, prediction)  # both in the dataset's values
    return overlays


def _summary(results: Sequence[dict[str, Any]], output_dir: Path, report: Path) -> dict[str, Any]:
    def mean_dice(rows: Sequence[Mapping[str, Any]]) -> dict[int, float]:
        return {label: stats["dice"]["mean"] for label, stats in summarize(rows).items()}

    rows = [row for result in results for row in result["rows"]]
    return {
        "folds": len(results),
        "cases": len({row["case"] for row in rows}),
        "mean_dice": mean_dice(rows),
        "fold_mean_dice": {result["fold"]: mean_dice(result["rows"]) for result in results},
        "output_dir": output_dir,
        "splits": output_dir / "cv.json",
        "report": report,
    }


# --- entry point --------------------------------------------------------------------------------


def cross_validate(
    pipe: Pipeline,
    folds: int = 5,
    *,
    output_dir: str | os.PathLike[str],
    seed: int = 0,
    groups: bool = True,
    epochs: int | None = None,
    iterations_per_epoch: int | None = None,
    time_limit: float | None = None,
    overlays: int = 3,
    resume: bool = True,
) -> dict[str, Any]:
    """K-fold cross-validation of ``pipe``: one fresh model per fold, then a report.

    Cases are split with :func:`~medseg.evaluation.splits.kfold_splits` (a subject's cases in
    one fold when ``groups``). Fold ``k`` trains ``pipe.fresh(seed=seed + k)`` on the other
    folds' cases, predicts its own cases on their original grid and scores them with
    :func:`~medseg.evaluation.metrics.compute_metrics`. See the module docstring for the files.

    A killed run, started again with the same call, resumes: finished folds are skipped and the
    interrupted fold continues from its last epoch checkpoint. The folder then loads with
    ``Pipeline.load(output_dir)`` as an ensemble averaging the folds' softmax outputs.

    Args:
        pipe: the pipeline to validate (its data, plan and parts; it is not trained itself).
            Its architecture must be a registry name or spec, so that folds get fresh networks.
        folds: number of folds, at least 2 and at most the number of subjects.
        output_dir: folder of the run (created if missing).
        seed: seeds the split; fold ``k`` trains with seed ``seed + k``.
        groups: keep each subject's cases (``pipe.data.group_of``) in one fold.
        epochs: per fold, overrides ``pipe.training.epochs``.
        iterations_per_epoch: per fold, overrides ``pipe.training.iterations_per_epoch``.
        time_limit: seconds of training per fold.
        overlays: cases drawn over their image in the report: 3 draws the worst, median and best
            by mean Dice, 1 the median, 0 none.
        resume: continue what ``output_dir`` holds; ``False`` retrains every fold from scratch
            (on the splits of an existing ``cv.json``).

    Returns:
        ``{"folds", "cases", "mean_dice": {label: mean over cases}, "fold_mean_dice":
        {fold: {label: mean}}, "output_dir", "splits" (cv.json), "report" (report.md)}``; means
        leave out non-finite values, as :func:`~medseg.evaluation.metrics.summarize`.

    Raises:
        ValueError: on bad arguments, or when ``output_dir`` holds a cross-validation made with
            other settings (``folds``, ``seed``, ``groups``, fit options, or the pipeline's plan,
            parts and training settings); the message names what differs.
        DataError: when ``output_dir`` was made for other cases, or a case has no label.

    Example:
        >>> pipe = medseg.Pipeline("data_samples/hippocampus")            # doctest: +SKIP
        >>> cross_validate(pipe, 5, output_dir="runs/cv", time_limit=600)  # doctest: +SKIP
    """
    data = pipe.data
    if data is None:
        raise MedsegError("cross_validate needs a pipeline with data: Pipeline(data, ...).")
    if isinstance(overlays, bool) or not isinstance(overlays, int) or not 0 <= overlays <= 3:
        raise ValueError(f"overlays must be 0, 1, 2 or 3 (cases drawn), got {overlays!r}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    fit = {"epochs": epochs, "iterations_per_epoch": iterations_per_epoch, "time_limit": time_limit}
    settings = run_settings(pipe, folds=folds, seed=seed, groups=groups, fit=fit)
    splits = _splits(data, output_dir / "cv.json", folds, seed, groups, settings)
    fit_options = {**fit, "resume": resume}
    results = []
    for fold, split in enumerate(splits):
        folder = output_dir / f"fold_{fold}"
        if resume and (folder / "metrics.json").is_file():
            log.info("fold %d: done earlier, reading %s", fold, folder / "metrics.json")
            results.append(_read_fold(folder / "metrics.json", fold, split))
        else:
            results.append(_run_fold(pipe, fold, split, folder, seed, fit_options))
    plots = importlib.util.find_spec("matplotlib") is not None
    if not plots:
        warnings.warn("matplotlib is missing: the report has tables only "
                      "(pip install 'medseg[report]' for plots).", stacklevel=2)
    written = write_report(
        output_dir / "report",
        [row for result in results for row in result["rows"]],
        histories={result["fold"]: result["history"] for result in results},
        overlays=_overlays(data, results, output_dir, overlays if plots else 0),
        title=f"{len(splits)}-fold cross-validation",
        plots=plots,
        label_names=pipe.plan.label_spec.scored,  # rows are keyed by dataset value
    )
    return _summary(results, output_dir, written[-1])
