"""Instance scores of one predicted encoded label against its reference, as
:meth:`medseg.Pipeline.evaluate` and an instance cross-validation report them, and the instance
table of a cross-validation report.

Both maps are encoded instance labels (:mod:`medseg.instances.encoding`); a predicted instance
matches a reference instance of its own class only (one-to-one, at IoU 0.5,
:func:`~medseg.evaluation.instance_metrics.matching`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..instances.encoding import class_map, decode
from ..io.files import atomic_path
from ..io.labels import LabelSpec
from .instance_metrics import instance_dice, matching
from .plots import label_title

__all__ = ["INSTANCE_METRICS", "add_instance_table", "instance_rows", "instance_scores", "predict_instance_case"]

INSTANCE_METRICS = ("match_accuracy", "match_precision", "match_recall", "match_f1", "panoptic_quality",
                    "instance_dice", "n_pred", "n_ref")
"""The per-case instance scores: matching accuracy TP / (TP + FP + FN), precision, recall and F1 at
IoU 0.5 (named ``match_*`` apart from the voxel metrics), panoptic quality, instance Dice, and the
instance counts."""


def instance_scores(predicted: np.ndarray, reference: np.ndarray, num_classes: int,
                    class_index: int | None = None) -> dict[str, float]:
    """:data:`INSTANCE_METRICS` of one case (``class_index``: of that class's instances only).

    Example:
        >>> ref, pred = np.array([[1, 1, 0, 2]]), np.array([[1, 1, 0, 0]])
        >>> instance_scores(pred, ref, 2)["match_accuracy"]   # 1 TP, 1 FN
        0.5
    """
    pred_map, pred_classes = decode(np.where(np.asarray(predicted) > 0, predicted, 0), num_classes)
    ref_map, ref_classes = decode(reference, num_classes)
    if class_index is not None:
        pred_map = np.where(np.isin(pred_map, [i for i, c in pred_classes.items() if c == class_index]), pred_map, 0)
        keep = [i for i, c in ref_classes.items() if c == class_index]
        ref_map = np.where((ref_map < 0) | np.isin(ref_map, keep), ref_map, 0)
    found = matching(pred_map, ref_map, (0.5,), pred_classes, ref_classes)[0.5]
    scores = {name: float(found[name.removeprefix("match_")]) for name in INSTANCE_METRICS[:5] + INSTANCE_METRICS[6:]}
    scores["instance_dice"] = instance_dice(pred_map, ref_map)
    return {name: scores[name] for name in INSTANCE_METRICS}


def instance_rows(predicted: np.ndarray, reference: np.ndarray, spec: LabelSpec, *, case: str,
                  fold: int | None = None, spacing: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """One report row per foreground class: the Dice of the class maps (``dice``, as a semantic
    run scores) and that class's :data:`INSTANCE_METRICS`, keyed by the class's dataset value."""
    from .scoring import score_prediction

    semantic = score_prediction(spec.decode(class_map(np.maximum(predicted, 0), spec.num_classes)),
                                class_map(reference, spec.num_classes), spec, spacing=spacing, metrics=True)
    rows = []
    for index, value in enumerate(spec.values[1:], 1):
        scores = instance_scores(predicted, reference, spec.num_classes, index if spec.num_classes > 2 else None)
        rows.append({"fold": fold, "case": case, "label": int(value), **semantic.get(value, {}), **scores})
    return rows


def predict_instance_case(member: Any, sample: Any, folder: Path, fold: int, rows: list[dict[str, Any]],
                          confusion: Any) -> tuple[list[dict[str, Any]], Any, str]:
    """One validation case of an instance cross-validation fold: predicted and written into
    ``folder/predictions`` (the pipeline's one predict-and-write path), scored by
    :func:`instance_rows`, its class maps added to the fold's confusion matrix.

    Returns:
        ``(rows + this case's rows, confusion, the written map relative to folder)``.
    """
    from .confusion import case_confusion

    spec = member.instance_spec
    prediction, scores = member.predict_instances(sample)
    path = member.write_prediction(prediction, sample.geometry, folder / "predictions", case=sample.id, scores=scores)
    rows = rows + instance_rows(prediction, sample.label, spec, case=sample.id, fold=fold,
                                spacing=sample.geometry.spacing)
    classes = spec.decode(class_map(np.maximum(prediction, 0), spec.num_classes))
    confusion = case_confusion(classes, class_map(sample.label, spec.num_classes), spec, confusion)
    return rows, confusion, path.relative_to(folder).as_posix()


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def add_instance_table(report_md: Path, rows: Sequence[Mapping[str, Any]],
                       names: Mapping[int, str] | None = None) -> Path:
    """Append the mean instance scores per class to ``report.md`` (rewritten atomically)."""
    labels = sorted({int(row["label"]) for row in rows if "panoptic_quality" in row})
    if not labels:
        return report_md
    shown = INSTANCE_METRICS[:6]
    lines = ["", "## Instances (IoU 0.5, one-to-one matching)", "",
             "Mean over cases; match_accuracy = TP / (TP + FP + FN) (the DSB 2018 matching AP).", "",
             "| label | " + " | ".join(shown) + " | instances (pred / ref) |", "|---" * (len(shown) + 2) + "|"]
    for label in labels:
        mine = [row for row in rows if int(row["label"]) == label]
        cells = [f"{_mean([row.get(name) for row in mine]):.4g}" for name in shown]
        counts = f"{sum(int(float(r.get('n_pred', 0))) for r in mine)} / {sum(int(float(r.get('n_ref', 0))) for r in mine)}"
        lines.append(f"| {label_title(label, names) if names else label} | " + " | ".join(cells) + f" | {counts} |")
    text = report_md.read_text(encoding="utf-8").rstrip() + "\n" + "\n".join(lines) + "\n"
    with atomic_path(report_md) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return report_md
