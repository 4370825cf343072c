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
        locks/fold_<k>.lock       while fold k trains: the host and pid of the process training it

Every file is written atomically, so a run killed at any moment and started again with the same
call finishes the work: folds with a ``metrics.json`` are not touched, the fold that was running
continues from its last checkpoint, and the report is rebuilt from all folds.

Folds can train at once in separate processes or machines sharing the folder
(:func:`cross_validate_fold`, ``medseg cv --fold K``), then :func:`cross_validation_report`
(``medseg cv --report``) builds the report once every fold is done. ``cv.json`` is the same
whoever writes it first (the split follows from the cases, folds and seed) and is created
exclusively: a process that finds it reads and checks it. A fold is trained under its lock
(:class:`medseg.io.locks.OwnerLock`): a second process given the same fold is refused, naming
the host and pid of the first, and takes over the lock of a killed process on the same host.

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

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, MedsegError
from ..io import Dataset
from ..io.files import remove_stale_temporaries
from .confusion import case_confusion
from .cv_folds import fold_lock, unfinished_message, write_once
from .cv_report import check_overlays, report, summary
from .cv_settings import check_settings, run_settings, settings_digest
from .instance_scores import predict_instance_case
from .metrics import METRIC_NAMES, metrics_to_rows
from .scoring import score_prediction
from .splits import kfold_splits
from .tables import from_json, write_json

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = ["cross_validate", "cross_validate_fold", "cross_validation_report"]

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


def _check_cases(path: Path, splits: Sequence[Split], case_ids: Sequence[str]) -> None:
    stored_cases = {case for _, val in splits for case in val}
    if stored_cases != set(case_ids):
        added, gone = sorted(set(case_ids) - stored_cases), sorted(stored_cases - set(case_ids))
        raise DataError(
            f"{path} was made for other cases (now added: {added[:5]}, missing: {gone[:5]}); "
            f"choose a new output_dir to cross-validate this dataset."
        )


def _stored_splits(path: Path) -> tuple[dict[str, Any], list[Split]]:
    """``cv.json`` and its splits."""
    stored = _read_json(path)
    return stored, [(list(fold["train"]), list(fold["val"])) for fold in stored["splits"]]


def _splits(data: Dataset, path: Path, folds: int, seed: int, groups: bool,
            settings: dict[str, Any]) -> list[Split]:
    """The folds stored in ``path`` (checked against the call), or new ones written there."""
    case_ids = data.case_ids
    if path.is_file():
        stored, splits = _stored_splits(path)
        asked = {"folds": folds, "seed": seed, "groups": groups}
        differ = {key: stored.get(key) for key, value in asked.items() if stored.get(key) != value}
        if differ:
            raise ValueError(
                f"{path} holds a cross-validation with {differ}, but this call asks for "
                f"{ {key: asked[key] for key in differ} }; pass the same values to resume it, or "
                f"choose a new output_dir (or delete that one) to start another."
            )
        _check_cases(path, splits, case_ids)
        if check_settings(stored, settings, path):  # an old cv.json: record this call's settings
            _write_json(path, {**stored, "settings_digest": settings_digest(settings), "settings": settings})
        return splits
    group_ids = [data.group_of(case) for case in case_ids] if groups else None
    splits = kfold_splits(case_ids, folds, seed, groups=group_ids)
    record = {"format": _CV_FORMAT, "folds": folds, "seed": seed, "groups": groups,
              "splits": [{"train": train, "val": val} for train, val in splits],
              "settings_digest": settings_digest(settings), "settings": settings}
    if not write_once(path, record):  # another fold's process wrote it first: read and check it
        return _splits(data, path, folds, seed, groups, settings)
    return splits


# --- one fold -----------------------------------------------------------------------------------


def predict_fold(member: Pipeline, val: Sequence[str], folder: Path, fold: int) -> tuple[list, dict, list | None]:
    """Predict, write and score the validation cases of one fold on their original grid: the
    Pipeline's one predict-and-write path, scored as :meth:`Pipeline.evaluate` scores (the
    dataset's classes keyed by value, or its regions; ignored voxels left out), and the fold's
    confusion matrix summed over its cases (``None`` for regions)."""
    data, confusion = member.data, None
    predictions = folder / "predictions"
    if predictions.exists():  # left by an unfinished run: rewritten in full
        shutil.rmtree(predictions)
    rows: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    instances = getattr(member, "is_instance", False)  # instance maps, scored against the encoded references
    data = member.reference_data() if instances else data
    for case in val:
        sample = data.load(case)
        if sample.label is None:
            raise DataError(f"case {case!r} has no label; cross-validation needs labelled cases.")
        if instances:
            rows, confusion, files[case] = predict_instance_case(member, sample, folder, fold, rows, confusion)
            continue
        prediction = member.predict_case(sample)
        path = member.write_prediction(prediction, sample.geometry, predictions, case=case)
        files[case] = path.relative_to(folder).as_posix()
        metrics = score_prediction(prediction, sample.label, member.plan.label_spec,
                                   spacing=sample.geometry.spacing, metrics=True)
        rows += metrics_to_rows(metrics, case=case, fold=fold)
        confusion = case_confusion(prediction, sample.label, member.plan.label_spec, confusion)
    return rows, files, None if confusion is None else confusion.tolist()


def _run_fold(pipe: Pipeline, fold: int, split: Split, folder: Path, seed: int,
              fit_options: dict[str, Any]) -> dict[str, Any]:
    """Train, predict and score one fold; write its ``metrics.json`` marker last."""
    train, val = split
    marker = folder / "metrics.json"
    marker.unlink(missing_ok=True)  # a fold being (re)done is not done
    member = pipe.fresh(seed=seed + fold)
    log.info("fold %d: training on %d cases, validating on %d", fold, len(train), len(val))
    member.fit(train, val, output_dir=folder, **fit_options)
    rows, files, confusion = predict_fold(member, val, folder, fold)
    result = {"format": _FOLD_FORMAT, "fold": fold, "seed": seed + fold, "train": train,
              "val": val, "history": member.history, "rows": rows, "predictions": files, "confusion": confusion}
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


# --- folds, one process each or all in one -------------------------------------------------------


def _fold_result(pipe: Pipeline, fold: int, split: Split, output_dir: Path, seed: int,
                 fit_options: dict[str, Any]) -> dict[str, Any]:
    """A fold's result: read when it is done (and resuming), else trained under the fold's lock."""
    folder = output_dir / f"fold_{fold}"
    marker = folder / "metrics.json"
    if fit_options["resume"] and marker.is_file():
        log.info("fold %d: done earlier, reading %s", fold, marker)
        return _read_fold(marker, fold, split)
    with fold_lock(output_dir, fold):
        if fit_options["resume"] and marker.is_file():  # finished by another process meanwhile
            return _read_fold(marker, fold, split)
        remove_stale_temporaries(folder)  # safe: no other process writes into a locked fold
        return _run_fold(pipe, fold, split, folder, seed, fit_options)


def _prepare(pipe: Pipeline, folds: int, output_dir: str | os.PathLike[str], seed: int, groups: bool,
             fit: dict[str, Any]) -> tuple[Path, list[Split]]:
    """The run's folder and its splits (``cv.json`` read and checked, or written)."""
    if pipe.data is None:
        raise MedsegError("cross-validation needs a pipeline with data: Pipeline(data, ...).")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = run_settings(pipe, folds=folds, seed=seed, groups=groups, fit=fit)
    return output_dir, _splits(pipe.data, output_dir / "cv.json", folds, seed, groups, settings)


# --- entry points --------------------------------------------------------------------------------


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
        LockHeld: when another process trains one of the folds (the message names it).

    Example:
        >>> pipe = medseg.Pipeline("data_samples/hippocampus")            # doctest: +SKIP
        >>> cross_validate(pipe, 5, output_dir="runs/cv", time_limit=600)  # doctest: +SKIP
    """
    check_overlays(overlays)
    fit = {"epochs": epochs, "iterations_per_epoch": iterations_per_epoch, "time_limit": time_limit}
    output_dir, splits = _prepare(pipe, folds, output_dir, seed, groups, fit)
    fit_options = {**fit, "resume": resume}
    results = [_fold_result(pipe, fold, split, output_dir, seed, fit_options) for fold, split in enumerate(splits)]
    return report(pipe, results, output_dir, overlays)


def cross_validate_fold(
    pipe: Pipeline,
    fold: int,
    folds: int = 5,
    *,
    output_dir: str | os.PathLike[str],
    seed: int = 0,
    groups: bool = True,
    epochs: int | None = None,
    iterations_per_epoch: int | None = None,
    time_limit: float | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Train, predict and score fold ``fold`` of :func:`cross_validate` only (no report).

    Folds of one run can go to different processes, GPUs or machines sharing ``output_dir`` at
    once; each must get the same arguments but ``fold``. The fold is trained under its lock
    (``locks/fold_<k>.lock``): a fold another live process trains is refused. A finished fold is
    read, not trained again (unless ``resume=False``, which retrains this fold from scratch and
    touches no other). Build the report with :func:`cross_validation_report` once all are done.

    Args:
        fold: the fold, ``0..folds-1``.
        pipe, folds, output_dir, seed, groups, epochs, iterations_per_epoch, time_limit, resume:
            as for :func:`cross_validate`.

    Returns:
        ``{"fold", "cases", "mean_dice": {label: mean over the fold's cases}, "output_dir"}``
        (the fold's folder).

    Raises:
        ValueError, DataError: as :func:`cross_validate`, and for a ``fold`` out of range.
        LockHeld: when another process trains this fold (the message names its host and pid).
    """
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ValueError(f"fold must be one of 0..{folds - 1} (folds={folds}), got {fold!r}.")
    fit = {"epochs": epochs, "iterations_per_epoch": iterations_per_epoch, "time_limit": time_limit}
    output_dir, splits = _prepare(pipe, folds, output_dir, seed, groups, fit)
    result = _fold_result(pipe, fold, splits[fold], output_dir, seed, {**fit, "resume": resume})
    done = summary([result], output_dir, output_dir / "report" / "report.md")
    return {"fold": fold, "cases": done["cases"], "mean_dice": done["mean_dice"],
            "output_dir": output_dir / f"fold_{fold}"}


def cross_validation_report(pipe: Pipeline, *, output_dir: str | os.PathLike[str],
                            overlays: int = 3) -> dict[str, Any]:
    """The report of a cross-validation whose folds were trained apart (:func:`cross_validate_fold`).

    Reads ``cv.json`` and every fold's ``metrics.json``; trains nothing. ``pipe`` gives the
    dataset (checked against ``cv.json``'s cases) and the classes' names.

    Returns:
        As :func:`cross_validate`.

    Raises:
        MedsegError: when a fold is not finished; the message names each one and who trains it.
        DataError: without ``cv.json``, or when it was made for other cases.
    """
    check_overlays(overlays)
    output_dir = Path(output_dir)
    path = output_dir / "cv.json"
    if pipe.data is None or not path.is_file():
        raise DataError(f"{path}: no cross-validation to report on (and a pipeline with data is needed); "
                        "train its folds first (medseg cv --fold K).")
    _, splits = _stored_splits(path)
    _check_cases(path, splits, pipe.data.case_ids)
    markers = [output_dir / f"fold_{fold}" / "metrics.json" for fold in range(len(splits))]
    missing = [fold for fold, marker in enumerate(markers) if not marker.is_file()]
    if missing:
        raise MedsegError(unfinished_message(output_dir, missing, len(splits)))
    results = [_read_fold(marker, fold, split) for fold, (marker, split) in enumerate(zip(markers, splits))]
    return report(pipe, results, output_dir, overlays)
