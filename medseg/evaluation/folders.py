"""Scoring a folder of predictions against a folder of references.

Rules (the same as :meth:`medseg.Pipeline.evaluate` and cross-validation follow):

- every case with a reference is scored: a reference without a prediction is an error that
  names the cases (``missing="empty"`` scores them as empty predictions, ``missing="skip"``
  scores only the predicted cases); a prediction without a reference is an error too;
- each file is one case: ``amos_0001.nii.gz``, ``amos_0002.nii.gz`` are two cases, never two
  channels of one (label maps have one channel);
- every case is scored on the same targets, the classes of the dataset: ``labels`` given, else
  a :class:`~medseg.io.labels.LabelSpec` (its foreground classes, or its regions; its ignore
  value left out of every metric), else the union of the non-zero values found in references
  *and* predictions. A class painted into a case whose reference lacks it scores Dice 0 there;
  a class absent from both scores Dice 1 (:func:`~medseg.evaluation.metrics.compute_metrics`'
  convention) in medseg's tables, NaN in nnU-Net's ``summary.json`` layout (nnU-Net's).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from ..errors import DataError
from ..io.cases import LABEL_SUFFIXES, find_images
from ..io.dataset_json import read_dataset_json
from ..io.files import full_suffix
from ..io.labels import LabelSpec
from ..io.readers import Image2DIO, read_image_file
from .confusion import confusion_matrix, dataset_rows, dataset_scores
from .format_pairs import Values, format_dataset, format_pairs
from .metrics import METRIC_NAMES, compute_metrics, confusion_counts, dice_per_label, summarize
from .tables import read_json, write_csv, write_json

__all__ = [
    "CaseScore",
    "Target",
    "dataset_block",
    "evaluate_folders",
    "nnunet_summary",
    "score_folders",
    "targets_of",
    "write_dataset_block",
    "write_metrics_csv",
]

Missing = Literal["error", "empty", "skip"]


class Target(NamedTuple):
    """One scored class or region: ``key`` names it in medseg's tables (the label value; for a
    region its ``regions_class_order`` value), ``values`` are the label values its mask holds."""

    key: int
    values: tuple[int, ...]
    region: bool = False

    @property
    def scored(self) -> int | tuple[int, ...]:
        """What :func:`~medseg.evaluation.metrics.compute_metrics` is asked to score."""
        return self.values if self.region else self.values[0]

    @property
    def nnunet_key(self) -> str:
        """nnU-Net's ``summary.json`` key: ``str(label)``, or ``str(tuple)`` for a region."""
        return str(self.values) if self.region else str(self.values[0])


def targets_of(spec: LabelSpec | None = None, labels: Sequence[int] | None = None) -> list[Target]:
    """The targets of explicit ``labels``, else of ``spec`` (regions when it has them)."""
    if labels is not None:
        return [Target(int(v), (int(v),)) for v in dict.fromkeys(labels)]
    if spec is None:
        raise ValueError("targets_of needs a LabelSpec or labels.")
    if spec.regions:
        return [Target(int(order), tuple(spec.values[i] for i in region), True)
                for region, order in zip(spec.regions, spec.regions_class_order, strict=True)]
    return [Target(v, (v,)) for v in spec.scored_values]


@dataclass
class CaseScore:
    """The scores of one case: metrics (by target key) and nnU-Net's voxel counts."""

    case: str
    prediction: Path | None
    reference: Path
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    counts: dict[int, dict[str, int]] = field(default_factory=dict)
    matrix: np.ndarray | None = None  # the (K, K) confusion matrix over background + classes (not regions)


# --- files --------------------------------------------------------------------------------------


def _strip(case: str) -> str:
    for suffix in LABEL_SUFFIXES:
        if case.endswith(suffix):
            return case[: -len(suffix)]
    return case


def label_files(path: str | os.PathLike) -> dict[str, Path]:
    """``{case: file}`` of the label maps in a folder (or one file): one file is one case.

    Case ids drop a ``_mask``/``_label``/``_seg`` suffix. Files are never grouped into the
    channels of one case (``amos_0001``, ``amos_0002`` are two cases).
    """
    found: dict[str, Path] = {}
    for case, (file, *_) in find_images(path).items():  # channels=None: one case per file
        case = _strip(case)
        if case in found:
            raise DataError(f"{path}: {found[case].name} and {file.name} are both case {case!r}; keep one.")
        found[case] = file
    return found


def match_cases(
    predictions: str | os.PathLike, references: str | os.PathLike, missing: Missing = "error",
    cases: Sequence[str] | None = None,
) -> list[tuple[str, Path | None, Path]]:
    """``(case, prediction file or None, reference file)`` for every case to score (of ``cases``
    only, when given: a test set among a dataset's references)."""
    if missing not in ("error", "empty", "skip"):
        raise ValueError(f"missing must be 'error', 'empty' or 'skip', got {missing!r}.")
    return _match(label_files(predictions), label_files(references), predictions, references, missing, cases)


def _match(preds: dict, refs: dict, predictions, references, missing: Missing, cases: Sequence[str] | None) -> list:
    if cases is not None:
        unknown = sorted(set(cases) - set(refs))
        if unknown:
            raise DataError(f"{references}: no reference for case(s) {unknown[:10]} of `cases`.")
        refs = {case: refs[case] for case in cases}
        preds = {case: file for case, file in preds.items() if case in refs}
    orphans = sorted(set(preds) - set(refs))
    if orphans:
        raise DataError(f"{references}: no reference for {len(orphans)} prediction(s) {orphans[:10]}; "
                        f"add their references or remove them from {predictions}.")
    unpredicted = sorted(set(refs) - set(preds))
    if unpredicted and missing == "error":
        raise DataError(
            f"{predictions}: no prediction for {len(unpredicted)} of the {len(refs)} reference case(s) "
            f"{unpredicted[:10]}; predict them, or pass --allow-missing (missing='empty') to score them "
            f"as empty predictions, or --predicted-only (missing='skip') to score the predicted cases only."
        )
    if unpredicted and missing == "skip":
        warnings.warn(f"{len(unpredicted)} reference case(s) without a prediction not scored: "
                      f"{unpredicted[:10]}", stacklevel=4)
    cases = sorted(refs) if missing == "empty" else sorted(preds)
    return [(case, preds.get(case), refs[case]) for case in cases]


def _read_label(path: Path | Values):
    """A label file; a 2D image mask stored as 0/255 reads as 0/1, as datasets read it."""
    if isinstance(path, Values):
        return path.values[None], None
    array, grid = read_image_file(path)
    if full_suffix(path) in Image2DIO.suffixes and 255 in array and set(np.unique(array).tolist()) == {0, 255}:
        array = array // 255
    return array, grid


def _read_pair(pred_path: Path | None, ref_path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    ref, ref_grid = _read_label(ref_path)
    spacing = (1.0,) * (ref.ndim - 1) if ref_grid is None else ref_grid.spacing
    if pred_path is None:
        return np.zeros(ref.shape[1:], np.int64), ref[0].astype(np.int64), spacing
    pred, _ = _read_label(pred_path)
    if pred.shape != ref.shape:
        raise DataError(f"{pred_path}: shape {pred.shape[1:]} differs from its reference {ref_path} "
                        f"({ref.shape[1:]}); resample the prediction onto the reference grid.")
    for path, array in ((pred_path, pred), (ref_path, ref)):
        if not np.array_equal(array, np.round(array)):
            raise DataError(f"{path}: a label map must hold whole numbers, found fractions.")
    return pred[0].astype(np.int64), ref[0].astype(np.int64), spacing


# --- which classes ------------------------------------------------------------------------------


def parse_labels_option(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (the ``--labels`` option)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"--labels {text!r}: give label values separated by commas, e.g. --labels 1,2,4.")
    return values


def spec_of_run(run: str | os.PathLike) -> LabelSpec:
    """The classes of a run's plan (``pipeline.json``; a cross-validation folder's first fold)."""
    run = Path(run)
    configs = [run / "pipeline.json", *sorted(run.glob("fold_*/pipeline.json"))]
    config = next((c for c in configs if c.is_file()), None)
    if config is None:
        raise DataError(f"--run {run}: no pipeline.json (nor fold_*/pipeline.json); pass a folder of medseg "
                        f"train or medseg cv, or the classes with --labels.")
    try:
        plan = read_json(config)["plan"]
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{config}: unreadable plan ({error}).") from error
    if plan.get("labels") is not None:
        return LabelSpec.from_dict(plan["labels"])
    return LabelSpec(tuple(range(int(plan["num_classes"]))), tuple(plan.get("class_names", ())))


def spec_beside(references: str | os.PathLike) -> LabelSpec | None:
    """The classes declared by a ``dataset.json`` beside the references folder, if there is one."""
    manifest = Path(references).resolve().parent / "dataset.json"
    return read_dataset_json(manifest).label_spec if manifest.is_file() else None


def resolve_classes(
    labels: str | Sequence[int] | None, run: str | os.PathLike | None, references: str | os.PathLike
) -> tuple[list[int] | None, LabelSpec | None, str]:
    """What to score, and where it came from: ``labels``, else ``run``'s plan, else a
    ``dataset.json`` beside ``references``, else (``None, None``) the values found in the files."""
    if labels is not None:
        values = parse_labels_option(labels) if isinstance(labels, str) else [int(v) for v in labels]
        return values, None, "--labels"
    if run is not None:
        return None, spec_of_run(run), f"the plan of {run}"
    data = format_dataset(references)
    if data is not None:
        return None, data.label_spec, f"the {type(data).__name__} at {references}"
    spec = spec_beside(references)
    if spec is not None:
        return None, spec, str(Path(references).resolve().parent / "dataset.json")
    return None, None, "the values found in references and predictions"


# --- scoring ------------------------------------------------------------------------------------


def _score(pred: np.ndarray, ref: np.ndarray, spacing, targets: list[Target], ignore: int | None,
           all_metrics: bool) -> dict[int, dict[str, float]]:
    scored = [t.scored for t in targets]
    if all_metrics:
        values = compute_metrics(pred, ref, spacing=spacing, labels=scored, ignore=ignore)
        return {t.key: values[t.scored] for t in targets}
    dice = dice_per_label(pred, ref, scored, ignore=ignore)
    return {t.key: {"dice": dice[t.scored]} for t in targets}


def score_folders(
    predictions: str | os.PathLike,
    references: str | os.PathLike,
    *,
    labels: Sequence[int] | None = None,
    spec: LabelSpec | None = None,
    all_metrics: bool = False,
    missing: Missing = "error",
    cases: Sequence[str] | None = None,
) -> tuple[list[Target], list[CaseScore]]:
    """Score every case (see the module docstring); returns the targets and per-case scores.

    Args:
        predictions: folder (or file) of predicted label maps.
        references: folder (or file) of reference label maps, matched by case id.
        labels: label values to score; overrides ``spec``'s classes.
        spec: the dataset's classes, ignore value and regions.
        all_metrics: all of :data:`~medseg.evaluation.metrics.METRIC_NAMES`, not only Dice.
        missing: what a reference without a prediction means (see the module docstring).
        cases: score these cases only (each needs a reference), e.g. a test set.
    """
    data = format_dataset(references)
    pairs = (match_cases(predictions, references, missing, cases) if data is None
             else _match(*format_pairs(data, predictions, cases), predictions, data.root, missing, cases))
    ignore = spec.ignore if spec is not None else None
    if labels is None and spec is None:  # the values found in references and predictions
        found: set[int] = set()
        for _, pred_path, ref_path in pairs:
            for path in (pred_path, ref_path):
                if path is not None:
                    found |= set(np.unique(_read_label(path)[0]).astype(np.int64).tolist())
        labels = sorted(found - {0})
    targets = targets_of(spec, labels)
    known = None if spec is None else {*spec.values, *([] if spec.ignore is None else [spec.ignore])}
    scores, strangers = [], {}
    for case, pred_path, ref_path in pairs:
        pred, ref, spacing = _read_pair(pred_path, ref_path)
        if known is not None:
            for path, array in ((pred_path, pred), (ref_path, ref)):
                if unknown := sorted(set(np.unique(array).tolist()) - known):
                    strangers[str(path)] = unknown
        counts = confusion_counts(pred, ref, [t.scored for t in targets], ignore=ignore)
        matrix = None if any(t.region for t in targets) else confusion_matrix(
            pred, ref, [0, *(t.key for t in targets)], ignore=ignore)
        scores.append(CaseScore(case, getattr(pred_path, "path", pred_path), getattr(ref_path, "path", ref_path),
                                _score(pred, ref, spacing, targets, ignore, all_metrics),
                                {t.key: counts[t.scored] for t in targets}, matrix))
    if strangers:
        warnings.warn(f"label values that are no class of the dataset (classes {list(spec.values)}), scored "
                      f"as background: {dict(list(strangers.items())[:5])}", stacklevel=2)
    return targets, scores


def rows_of(scores: Sequence[CaseScore]) -> list[dict[str, Any]]:
    """``{"case", "label", metric...}`` rows, as :func:`evaluate_folders` returns."""
    return [{"case": s.case, "label": key, **values} for s in scores for key, values in s.metrics.items()]


def evaluate_folders(
    predictions: str | os.PathLike,
    references: str | os.PathLike,
    *,
    all_metrics: bool = False,
    labels: list[int] | None = None,
    spec: LabelSpec | None = None,
    missing: Missing = "error",
    cases: Sequence[str] | None = None,
) -> list[dict[str, object]]:
    """Per case and label metrics of the label files in ``predictions`` against ``references``.

    See :func:`score_folders` for the arguments and the module docstring for the rules.

    Returns:
        rows ``{"case", "label", "dice"[, other metrics]}``, every case with every target.
    """
    _, scores = score_folders(predictions, references, labels=labels, spec=spec, all_metrics=all_metrics,
                              missing=missing, cases=cases)
    return rows_of(scores)


def dataset_block(targets: Sequence[Target], scores: Sequence[CaseScore],
                  names: dict[int, str] | None = None) -> dict[str, Any] | None:
    """The split's confusion-matrix scores (:func:`~medseg.evaluation.confusion.dataset_scores`:
    mean IoU, pixel accuracy, per-class IoU), or ``None`` for regions or no case."""
    if not scores or any(s.matrix is None for s in scores):
        return None
    return dataset_scores([s.matrix for s in scores], [0, *(t.key for t in targets)], names)


def write_metrics_csv(rows: list[dict[str, object]], path: str | os.PathLike) -> Path:
    """Write rows, then one ``mean`` row per label, atomically.

    A mean is over the finite values (as :func:`~medseg.evaluation.metrics.summarize`); values
    are written as :mod:`medseg.evaluation.tables` writes them (``nan``, ``inf``).
    """
    metrics = [m for m in METRIC_NAMES if rows and m in rows[0]]
    means = [{"case": "mean", "label": label, **{m: stats[m]["mean"] for m in metrics if m in stats}}
             for label, stats in summarize(rows).items()]
    return write_csv(path, ["case", "label", *metrics], [*rows, *means])


def write_dataset_block(block: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a :func:`dataset_block` beside the per-case table ``path``: ``<stem>_dataset.csv``
    (per class Dice and IoU of the summed matrix, then the mean IoU and pixel accuracy) or
    ``<stem>_dataset.json`` (the whole block, the matrix included), atomically."""
    path = Path(path)
    target = path.with_name(f"{path.stem}_dataset{path.suffix or '.csv'}")
    if target.suffix.lower() == ".json":
        return write_json(target, block)
    return write_csv(target, ["case", "label", "dice", "iou", "pixel_accuracy"], dataset_rows(block))


# --- nnU-Net's summary.json ---------------------------------------------------------------------


def _nnunet_case(counts: dict[str, int]) -> dict[str, float | int]:
    tp, fp, fn = counts["TP"], counts["FP"], counts["FN"]
    union = tp + fp + fn
    return {"Dice": 2 * tp / (2 * tp + fp + fn) if union else float("nan"),
            "IoU": tp / union if union else float("nan"),
            "FP": fp, "TP": tp, "FN": fn, "TN": counts["TN"], "n_pred": counts["n_pred"], "n_ref": counts["n_ref"]}


def nnunet_summary(targets: Sequence[Target], scores: Sequence[CaseScore]) -> dict[str, Any]:
    """nnU-Net v2's ``summary.json`` (``nnunetv2/evaluation/evaluate_predictions.py``) of the scores.

    Per case and target Dice and IoU from the voxel counts, NaN where both masks are empty
    (nnU-Net's convention, unlike medseg's tables); ``mean`` per target is the mean over cases
    leaving out NaN; ``foreground_mean`` the mean over the targets' means (a NaN mean makes it NaN).
    Keys are ``str(label)``, or ``str(tuple)`` for a region.
    """
    per_case = [{"prediction_file": None if s.prediction is None else str(s.prediction),
                 "reference_file": str(s.reference),
                 "metrics": {t.nnunet_key: _nnunet_case(s.counts[t.key]) for t in targets}} for s in scores]
    names = ("Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of only NaN is NaN
        mean = {t.nnunet_key: {m: float(np.nanmean([c["metrics"][t.nnunet_key][m] for c in per_case]))
                               for m in names} for t in targets}
        foreground = {m: float(np.mean([mean[k][m] for k in mean if k != "0"])) for m in names}
    return {"metric_per_case": per_case, "mean": mean, "foreground_mean": foreground}


def write_summary_json(targets: Sequence[Target], scores: Sequence[CaseScore], path: str | os.PathLike) -> Path:
    """Write :func:`nnunet_summary` to ``path`` atomically (NaN as ``"nan"``, see ``tables``)."""
    return write_json(path, nnunet_summary(targets, scores))
