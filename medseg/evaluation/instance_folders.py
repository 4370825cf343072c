"""Scoring a folder of predicted instance maps against reference instances (``medseg evaluate
--task instance``).

Predictions are instance maps with their JSON sidecars, as
:func:`~medseg.io.instances.write_instances` writes them (read with
:func:`~medseg.io.instances.read_instances`; an instance without a score scores 1, one without a
sidecar is class 1). References are a :class:`~medseg.io.Dataset` or a folder (a dataset folder
:func:`~medseg.io.open_dataset` opens, else a folder of label maps with a ``dataset.json`` beside
it or none), read as instances by :func:`~medseg.io.instances.as_instances` (instance maps with
sidecars, or connected components of semantic classes: ``mode``). Cases pair by id with the
rules of :mod:`medseg.evaluation.folders` (a reference without a prediction is an error unless
``missing`` says otherwise; a prediction without a reference is an error). Classes are compared
as the dataset's values.

Per case: one-to-one matching (:func:`~medseg.evaluation.instance_metrics.matching`, same class
only) at IoU 0.5 (TP, FP, FN, precision, recall, F1, matching accuracy, PQ = SQ * RQ) and its
accuracy at IoU 0.1..0.9, and the instance Dice. Over the dataset: the per-case means (finite
values), the pooled matching (TP, FP, FN summed over cases) at each threshold, COCO mask AP
(AP 0.50:0.95, AP50, AP75, per class) and the box AP at IoU 0.1 and mAP 0.1:0.5 of nnDetection,
counting every prediction (``max_dets=None``; COCO counts the 100 best per image).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..instances.encoding import decode
from ..io.cases import CaseFiles
from ..io.datasets import Dataset, open_dataset
from ..io.instances import InstanceDataset, as_instances, read_instances, sidecar_of
from .average_precision import coco_ap, detection_ap, instance_record
from .folders import Missing, _match, label_files, spec_beside
from .instance_metrics import instance_dice, matching
from .tables import write_csv, write_json

__all__ = ["CASE_COLUMNS", "THRESHOLDS", "evaluate_instances", "reference_instances"]

THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 10))
"""The IoU thresholds of the matching-accuracy table (0.1..0.9; 0.5 is the headline)."""

_AT_05 = ("n_pred", "n_ref", "tp", "fp", "fn", "precision", "recall", "f1", "accuracy", "panoptic_quality",
          "segmentation_quality", "recognition_quality")
CASE_COLUMNS: tuple[str, ...] = ("case", *_AT_05, "instance_dice", *(f"accuracy@{t}" for t in THRESHOLDS))
"""The columns of ``instances.csv``: scores at IoU 0.5, instance Dice, accuracy per threshold."""


def reference_instances(reference: Dataset | str | os.PathLike, mode: str = "auto") -> InstanceDataset:
    """``reference`` (a Dataset, a dataset folder or a folder of label maps) as an
    :class:`~medseg.io.instances.InstanceDataset`."""
    if not isinstance(reference, Dataset):
        path = Path(reference)
        try:
            reference = open_dataset(path)
        except DataError:  # a folder of label maps, classes from a dataset.json beside it
            files = label_files(path)
            reference = Dataset({case: CaseFiles((file,), file) for case, file in files.items()}, root=path,
                                label_spec=spec_beside(path))
    return as_instances(reference, mode)


def _prediction(path: Path | None, shape: tuple[int, ...], reference: Path, values: Sequence[int]):
    """``(map, {id: class value}, {id: score})`` of a prediction file (empty without one). A map
    without a ``<case>.json`` (another tool's) takes the one foreground class ``values`` holds."""
    if path is None:
        return np.zeros(shape, np.int32), {}, {}
    pred_map, classes, scores = read_instances(path)
    if pred_map.shape != shape:
        raise DataError(f"{path}: shape {pred_map.shape} differs from its reference {reference} ({shape}); "
                        f"predict on the reference grid.")
    if sidecar_of(path) is None and classes:
        if len(values) != 1:
            raise DataError(f"{path}: no class sidecar ({Path(path).name.split('.')[0]}.json or .csv) beside it, and "
                            f"the references have {len(values)} classes {list(values)}; write each instance's class "
                            "beside the map ({\"<id>\": <class value>}).")
        classes = dict.fromkeys(classes, int(values[0]))
    return pred_map, classes, {i: scores.get(i, 1.0) for i in classes}


def _pooled(counts: dict[str, float]) -> dict[str, float]:
    """Matching scores of summed counts (the conventions of ``matching`` for empty sets)."""
    tp, fp, fn, iou_sum = counts["tp"], counts["fp"], counts["fn"], counts["iou_sum"]
    if tp + fp + fn == 0:
        return {**counts, "precision": 1.0, "recall": 1.0, "accuracy": 1.0, "f1": 1.0, "panoptic_quality": 1.0}
    return {**counts, "precision": tp / (tp + fp) if tp + fp else math.nan,
            "recall": tp / (tp + fn) if tp + fn else math.nan, "accuracy": tp / (tp + fp + fn),
            "f1": 2 * tp / (2 * tp + fp + fn), "panoptic_quality": iou_sum / (tp + fp / 2 + fn / 2)}


def _means(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    means = {}
    for column in CASE_COLUMNS[1:]:
        values = [float(row[column]) for row in rows if math.isfinite(float(row[column]))]
        means[column] = float(np.mean(values)) if values else math.nan
    return means


def evaluate_instances(
    prediction_folder: str | os.PathLike,
    reference: Dataset | str | os.PathLike,
    *,
    mode: str = "auto",
    output: str | os.PathLike | None = None,
    missing: Missing = "error",
    cases: Sequence[str] | None = None,
    max_dets: int | None = None,
) -> dict[str, Any]:
    """Instance scores of the predictions in ``prediction_folder`` (see the module docstring).

    Args:
        prediction_folder: folder of predicted instance maps (``<case><ext>`` + ``<case>.json``).
        reference: the reference Dataset, dataset folder or folder of label maps.
        mode: how references are instances: ``"auto"``, ``"map"`` or ``"components"``
            (:class:`~medseg.io.instances.InstanceDataset`).
        output: a folder to write ``instances.csv`` (per case, then a ``mean`` row) and
            ``instances.json`` (everything returned) into, atomically.
        missing: ``"error"``, ``"empty"`` (score unpredicted cases as empty) or ``"skip"``.
        cases: score these reference cases only.
        max_dets: predictions per image and class that COCO AP and box AP count: ``None`` (the
            default) all of them, as images of nuclei hold hundreds; 100 is COCO's and MONAI's.

    Returns:
        ``{"mode", "classes": {value: name}, "cases": [row per case: CASE_COLUMNS + "prediction"],
        "summary": {"mean": {column: mean}, "pooled": {threshold: counts and scores},
        "coco": coco_ap(...), "detection": detection_ap(...), "max_dets"}}``.
    """
    data = reference_instances(reference, mode)
    spec = data.semantic_spec
    refs = {case: data.files(case).label for case in data.case_ids if data.files(case).label is not None}
    pairs = _match(label_files(prediction_folder), refs, prediction_folder, data.root or reference, missing, cases)
    rows, records = [], []
    pooled = {t: {"tp": 0, "fp": 0, "fn": 0, "iou_sum": 0.0} for t in THRESHOLDS}
    for case, pred_path, ref_path in pairs:
        ref_map, indices = decode(data.load(case).label, spec.num_classes)
        ref_classes = {i: spec.values[c] for i, c in indices.items()}
        pred_map, pred_classes, scores = _prediction(pred_path, ref_map.shape, ref_path, spec.values[1:])
        found = matching(pred_map, ref_map, THRESHOLDS, pred_classes, ref_classes)
        for t, counts in pooled.items():
            for key in ("tp", "fp", "fn"):
                counts[key] += found[t][key]
            counts["iou_sum"] += found[t]["tp"] * (found[t]["mean_matched_iou"] if found[t]["tp"] else 0.0)
        rows.append({"case": case, **{key: found[0.5][key] for key in _AT_05},
                     "instance_dice": instance_dice(pred_map, ref_map),
                     **{f"accuracy@{t}": found[t]["accuracy"] for t in THRESHOLDS},
                     "prediction": None if pred_path is None else str(pred_path)})
        records.append(instance_record((pred_map, scores, pred_classes, ref_map, ref_classes)))
    result = {"mode": data.mode, "classes": dict(zip(spec.values[1:], spec.names[1:])), "cases": rows,
              "summary": {"mean": _means(rows), "pooled": {t: _pooled(c) for t, c in pooled.items()},
                          "coco": coco_ap(records, max_dets=max_dets),
                          "detection": detection_ap(records, max_dets=max_dets), "max_dets": max_dets}}
    if output is not None:
        output = Path(output)
        write_csv(output / "instances.csv", CASE_COLUMNS, [*rows, {"case": "mean", **result["summary"]["mean"]}])
        write_json(output / "instances.json", result)
    return result
