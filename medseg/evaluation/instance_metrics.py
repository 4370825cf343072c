"""Instance segmentation metrics on instance maps (0 background, any positive ids), 2D and 3D.

- :func:`instance_ious`: the IoU of every (predicted, reference) instance pair, from the joint
  histogram of the voxels where both maps are foreground (one ``np.unique`` over the pair codes,
  never one mask per pair). Ignored voxels (reference value ``-1``, medseg's ``IGNORE_INDEX``, or
  an ``ignore`` mask) are left out of every area.
- :func:`matching`: one-to-one matching at IoU thresholds, no scores needed (the "matching AP"
  TP / (TP + FP + FN) of the DSB 2018, StarDist and Cellpose papers; precision, recall, F1;
  panoptic quality PQ = SQ * RQ of Kirillov et al.). Only pairs with IoU >= the threshold (and
  the same class, when classes are given) may match; among those, ``linear_sum_assignment``
  finds the matching with the most pairs, and among those the largest total IoU (StarDist's
  cost). Above IoU 0.5 the matching is unique; below, it can beat greedy matching.
- :func:`instance_dice`: the mean over reference instances of the Dice with their best
  predicted instance.
- Average precision over images with scores (COCO mask AP, box AP): :mod:`medseg.evaluation.average_precision`.

Empty images (the conventions of :mod:`medseg.evaluation.metrics`: what is absent from both
scores 1, a ratio over nothing is NaN): with no instance in either map, :func:`matching`
gives precision, recall, accuracy, F1 and PQ 1 (StarDist gives 0 there); with predictions but no
reference instance recall is NaN and the others 0; with reference instances but no prediction
precision is NaN and the others 0. ``mean_matched_iou`` (SQ) is NaN when nothing matched.

Example:
    >>> ref = np.array([[1, 1, 0], [0, 0, 2]])
    >>> pred = np.array([[3, 3, 0], [0, 0, 0]])
    >>> matching(pred, ref)[0.5]["accuracy"]  # 1 TP, 0 FP, 1 FN
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["check_threshold", "classes_of", "clean_maps", "instance_dice", "instance_ious", "match_scores",
           "matched_pairs", "matching"]

Classes = Mapping[int, int] | None
"""``{instance id: class}``; ``None``: every instance is class 1."""
Scores = Mapping[int, float] | None
"""``{instance id: score}``; ``None``: every instance scores 1."""
# --- overlaps -----------------------------------------------------------------------------------


def _as_instance_map(array: object, name: str, allow_ignore: bool) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != bool and not np.issubdtype(array.dtype, np.integer):  # a bool mask is instance 1
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.mod(array, 1) == 0):
            raise TypeError(f"{name} must be an integer instance map (0 background, positive ids), got dtype "
                            f"{array.dtype}; convert it with np.rint({name}).astype(int).")
    array = array.astype(np.int64, copy=False)
    low = -1 if allow_ignore else 0
    if array.size and array.min() < low:
        raise ValueError(f"{name} holds negative values {np.unique(array[array < low])[:5].tolist()}; an instance "
                         f"map has 0 background and positive ids{' (and -1 ignored)' if allow_ignore else ''}.")
    return array


def clean_maps(pred_map, ref_map, ignore=None) -> tuple[np.ndarray, np.ndarray]:
    """Both maps as int64, checked, with ignored voxels (reference -1, ``ignore``) set to 0."""
    pred = _as_instance_map(pred_map, "pred_map", False)
    ref = _as_instance_map(ref_map, "ref_map", True)
    if pred.shape != ref.shape:
        raise ValueError(f"pred_map and ref_map must have the same shape, got {pred.shape} and {ref.shape}; "
                         f"resample the prediction onto the reference grid first.")
    drop = ref < 0
    if ignore is not None:
        ignore = np.asarray(ignore, dtype=bool)
        if ignore.shape != ref.shape:
            raise ValueError(f"ignore must have the maps' shape {ref.shape}, got {ignore.shape}.")
        drop = drop | ignore
    if drop.any():
        pred, ref = np.where(drop, 0, pred), np.where(drop, 0, ref)
    return pred, ref


def _overlaps(pred_map, ref_map, ignore=None):
    """Ids, areas and the sparse intersections ``(pred index, ref index, voxels)`` of two maps."""
    pred, ref = clean_maps(pred_map, ref_map, ignore)
    pred_ids, pred_areas = np.unique(pred[pred > 0], return_counts=True)
    ref_ids, ref_areas = np.unique(ref[ref > 0], return_counts=True)
    both = (pred > 0) & (ref > 0)
    codes = np.searchsorted(pred_ids, pred[both]) * len(ref_ids) + np.searchsorted(ref_ids, ref[both])
    pairs, inter = np.unique(codes, return_counts=True)
    p, r = np.divmod(pairs, max(len(ref_ids), 1))
    return pred_ids, pred_areas, ref_ids, ref_areas, (p, r, inter)


def instance_ious(pred_map: np.ndarray, ref_map: np.ndarray, ignore: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The IoU of every predicted with every reference instance.

    Args:
        pred_map: ``(*spatial)`` predicted instance map (0 background, positive ids).
        ref_map: ``(*spatial)`` reference instance map; ``-1`` marks ignored voxels.
        ignore: optional ``(*spatial)`` boolean mask of voxels left out of every area.

    Returns:
        ``pred_ids (P,)``, ``ref_ids (R,)`` (sorted, ids with voxels left after ignoring) and
        ``iou (P, R)`` float64 (0 for pairs that do not touch).
    """
    pred_ids, pred_areas, ref_ids, ref_areas, (p, r, inter) = _overlaps(pred_map, ref_map, ignore)
    iou = np.zeros((len(pred_ids), len(ref_ids)))
    iou[p, r] = inter / (pred_areas[p] + ref_areas[r] - inter)
    return pred_ids, ref_ids, iou


def classes_of(ids: np.ndarray, classes: Classes, name: str) -> np.ndarray:
    if classes is None:
        return np.ones(len(ids), np.int64)
    missing = [int(i) for i in ids if int(i) not in classes]
    if missing:
        raise ValueError(f"{name} has no class for instance id(s) {missing[:10]}; give every id of the map a class.")
    return np.array([int(classes[int(i)]) for i in ids], np.int64)


def _class_iou(pred_map, ref_map, pred_classes: Classes, ref_classes: Classes, ignore) -> np.ndarray:
    """IoU matrix with pairs of different classes set to 0."""
    pred_ids, ref_ids, iou = instance_ious(pred_map, ref_map, ignore)
    if pred_classes is not None or ref_classes is not None:
        same = (classes_of(pred_ids, pred_classes, "pred_classes")[:, None]
                == classes_of(ref_ids, ref_classes, "ref_classes")[None, :])
        iou = np.where(same, iou, 0.0)
    return iou


# --- matching without scores --------------------------------------------------------------------


def check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"an IoU threshold must lie in (0, 1], got {threshold}.")
    return threshold


def matched_pairs(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the one-to-one matching of ``iou (P, R)`` at ``threshold``: the most
    pairs with IoU >= threshold, and among those the largest total IoU (StarDist's cost), solved
    per connected group of candidate pairs (a lone pair matches; thousands of nuclei stay fast)."""
    p, r = np.nonzero(iou >= check_threshold(threshold))
    graph = coo_matrix((np.ones(len(p)), (p, iou.shape[0] + r)), shape=(sum(iou.shape),) * 2)
    group = connected_components(graph, directed=False)[1][p]
    lone = np.bincount(group, minlength=1)[group] == 1
    rows, cols = [p[lone]], [r[lone]]
    for k in np.unique(group[~lone]):
        sub_rows, sub_cols = np.unique(p[group == k]), np.unique(r[group == k])
        sub = iou[np.ix_(sub_rows, sub_cols)]
        ok = sub >= threshold
        i, j = linear_sum_assignment(-(ok + np.where(ok, sub, 0.0) / (2 * min(ok.shape))))
        keep = ok[i, j]
        rows.append(sub_rows[i[keep]]), cols.append(sub_cols[j[keep]])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    order = np.argsort(rows)
    return rows[order], cols[order]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def match_scores(iou: np.ndarray, threshold: float) -> dict[str, float]:
    """:func:`matching`'s scores of one threshold from an IoU matrix (see the module docstring)."""
    rows, cols = matched_pairs(iou, threshold)
    matched = iou[rows, cols]
    n_pred, n_ref = iou.shape
    tp = len(matched)
    fp, fn = n_pred - tp, n_ref - tp
    empty = n_pred == 0 and n_ref == 0
    sq = float(matched.mean()) if tp else math.nan
    rq = 1.0 if empty else tp / (tp + fp / 2 + fn / 2)
    return {
        "tp": tp, "fp": fp, "fn": fn, "n_pred": n_pred, "n_ref": n_ref,
        "precision": 1.0 if empty else _ratio(tp, n_pred),
        "recall": 1.0 if empty else _ratio(tp, n_ref),
        "accuracy": 1.0 if empty else tp / (tp + fp + fn),
        "f1": 1.0 if empty else 2 * tp / (2 * tp + fp + fn),
        "mean_matched_iou": sq,
        "segmentation_quality": sq,
        "recognition_quality": rq,
        "panoptic_quality": 1.0 if empty else (sq * rq if tp else 0.0),
    }


def matching(
    pred_map: np.ndarray,
    ref_map: np.ndarray,
    thresholds: Sequence[float] = (0.5,),
    pred_classes: Classes = None,
    ref_classes: Classes = None,
    *,
    ignore: np.ndarray | None = None,
) -> dict[float, dict[str, float]]:
    """One-to-one matching of predicted to reference instances at each IoU threshold.

    Args:
        pred_map: ``(*spatial)`` predicted instance map.
        ref_map: ``(*spatial)`` reference instance map (``-1`` ignored).
        thresholds: IoU thresholds in (0, 1].
        pred_classes: ``{id: class}`` of the prediction; with classes only same-class pairs match
            (a side without classes is all class 1).
        ref_classes: ``{id: class}`` of the reference.
        ignore: optional boolean mask of voxels left out.

    Returns:
        ``{threshold: {"tp", "fp", "fn", "n_pred", "n_ref", "precision", "recall", "accuracy"
        (TP / (TP + FP + FN)), "f1", "mean_matched_iou" (= "segmentation_quality"),
        "recognition_quality" (TP / (TP + FP/2 + FN/2)), "panoptic_quality" (SQ * RQ)}}``.
    """
    iou = _class_iou(pred_map, ref_map, pred_classes, ref_classes, ignore)
    return {float(t): match_scores(iou, t) for t in thresholds}


def instance_dice(pred_map: np.ndarray, ref_map: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Mean over reference instances of the Dice with their best predicted instance.

    Each reference instance scores the highest Dice ``2|P∩R| / (|P| + |R|)`` over the predicted
    instances (the one of highest IoU), 0 when none overlaps it; predictions may be reused and
    false positives are not penalised. NaN when the reference has no instance.
    """
    _, pred_areas, ref_ids, ref_areas, (p, r, inter) = _overlaps(pred_map, ref_map, ignore)
    if not len(ref_ids):
        return math.nan
    best = np.zeros(len(ref_ids))
    np.maximum.at(best, r, 2 * inter / (pred_areas[p] + ref_areas[r]))
    return float(best.mean())
