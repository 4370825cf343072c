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
- :func:`coco_ap`: COCO mask AP (pycocotools' ``COCOeval(iouType="segm")`` algorithm, crowd-free,
  area range "all") over images given as instance maps, in 2D and 3D.
- :func:`detection_ap`: the box AP nnDetection and MONAI report (AP at IoU 0.1, mAP over IoU
  0.1:0.1:0.5), with MONAI's ``box_iou`` and ``COCOMetric``.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "COCO_THRESHOLDS", "InstanceRecord", "coco_ap", "detection_ap", "instance_dice", "instance_ious",
    "instance_record", "match_scores", "matched_pairs", "matching",
]

Classes = Mapping[int, int] | None
"""``{instance id: class}``; ``None``: every instance is class 1."""
Scores = Mapping[int, float] | None
"""``{instance id: score}``; ``None``: every instance scores 1."""
InstanceCase = tuple[np.ndarray, Scores, Classes, np.ndarray, Classes]
"""``(pred_map, pred_scores, pred_classes, ref_map, ref_classes)`` of one image."""

COCO_THRESHOLDS = np.linspace(0.5, 0.95, 10)
"""pycocotools' IoU thresholds 0.50:0.05:0.95 (the same floats, so ties break the same way)."""
_RECALLS = np.linspace(0.0, 1.0, 101)


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


def _clean(pred_map, ref_map, ignore=None) -> tuple[np.ndarray, np.ndarray]:
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
    pred, ref = _clean(pred_map, ref_map, ignore)
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


def _classes_of(ids: np.ndarray, classes: Classes, name: str) -> np.ndarray:
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
        same = (_classes_of(pred_ids, pred_classes, "pred_classes")[:, None]
                == _classes_of(ref_ids, ref_classes, "ref_classes")[None, :])
        iou = np.where(same, iou, 0.0)
    return iou


# --- matching without scores --------------------------------------------------------------------


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"an IoU threshold must lie in (0, 1], got {threshold}.")
    return threshold


def matched_pairs(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the one-to-one matching of ``iou (P, R)`` at ``threshold``: the most
    pairs with IoU >= threshold, and among those the largest total IoU (StarDist's cost), solved
    per connected group of candidate pairs (a lone pair matches; thousands of nuclei stay fast)."""
    p, r = np.nonzero(iou >= _check_threshold(threshold))
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


# --- AP over scored instances -------------------------------------------------------------------


class InstanceRecord(NamedTuple):
    """What AP needs of one image (:func:`instance_record`): per instance arrays in id order."""

    scores: np.ndarray  # (P,)
    pred_classes: np.ndarray  # (P,)
    ref_classes: np.ndarray  # (R,)
    iou: np.ndarray  # (P, R) mask IoU
    pred_boxes: np.ndarray  # (P, 2 * ndim) StandardMode, float32
    ref_boxes: np.ndarray  # (R, 2 * ndim)


def _boxes(instance_map: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``(N, 2 * ndim)`` float32 StandardMode boxes of ``ids``: voxels a..b span [a, b + 1)."""
    labels = np.zeros(instance_map.shape, np.int64)
    inside = instance_map > 0
    labels[inside] = np.searchsorted(ids, instance_map[inside]) + 1
    slices = ndimage.find_objects(labels, max_label=len(ids))
    boxes = [[s.start for s in box] + [s.stop for s in box] for box in slices]
    return np.array(boxes, np.float32).reshape(len(ids), 2 * instance_map.ndim)


def instance_record(case: InstanceCase | InstanceRecord, index: int = 0) -> InstanceRecord:
    """An image's :class:`InstanceRecord` (a record is returned as is), so that AP over many
    large images need not keep their maps. Ignored voxels are left out of masks and boxes."""
    if isinstance(case, InstanceRecord):
        return case
    try:
        pred_map, scores, pred_classes, ref_map, ref_classes = case
    except (TypeError, ValueError) as error:
        raise ValueError(f"cases[{index}] must be (pred_map, pred_scores, pred_classes, ref_map, ref_classes), "
                         f"got {type(case).__name__}.") from error
    pred, ref = _clean(pred_map, ref_map)
    pred_ids, ref_ids, iou = instance_ious(pred, ref)
    if scores is not None and (missing := [int(i) for i in pred_ids if int(i) not in scores]):
        raise ValueError(f"cases[{index}]: pred_scores has no score for instance id(s) {missing[:10]}; give every "
                         f"id a score, or None for all 1.")
    values = np.ones(len(pred_ids)) if scores is None else np.array([float(scores[int(i)]) for i in pred_ids])
    return InstanceRecord(values, _classes_of(pred_ids, pred_classes, f"cases[{index}] pred_classes"),
                          _classes_of(ref_ids, ref_classes, f"cases[{index}] ref_classes"), iou,
                          _boxes(pred, pred_ids), _boxes(ref, ref_ids))


def _greedy(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """pycocotools' matching: ``(T, D)`` whether each detection (rows of ``iou (D, G)``, by
    descending score) matched; each takes the free reference of highest IoU >= the threshold
    (the last of ties)."""
    matched = np.zeros((len(thresholds), iou.shape[0]), bool)
    for t, threshold in enumerate(thresholds):
        free = np.ones(iou.shape[1], bool)
        for d in range(iou.shape[0] if iou.shape[1] else 0):
            candidates = np.where(free, iou[d], -1.0)
            m = len(candidates) - 1 - int(np.argmax(candidates[::-1]))
            if candidates[m] >= min(threshold, 1 - 1e-10):
                free[m], matched[t, d] = False, True
    return matched


def _precision_curves(scores: np.ndarray, matched: np.ndarray, n_ref: int) -> np.ndarray:
    """``(T, 101)`` interpolated precision at recall 0:0.01:1 (pycocotools' ``accumulate``)."""
    order = np.argsort(-scores, kind="mergesort")
    tps = matched[:, order]
    tp_sum, fp_sum = np.cumsum(tps, axis=1).astype(float), np.cumsum(~tps, axis=1).astype(float)
    curves = np.zeros((len(matched), len(_RECALLS)))
    for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum, strict=True)):
        recall, precision = tp / n_ref, tp / (fp + tp + np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        index = np.searchsorted(recall, _RECALLS, side="left")
        inside = index < len(precision)
        curves[t, inside] = precision[index[inside]]
    return curves


def _at(curves: np.ndarray, thresholds: np.ndarray, threshold: float) -> float:
    rows = np.flatnonzero(np.isclose(thresholds, threshold))
    return float(curves[rows].mean()) if len(rows) and curves.size else math.nan


def _by_class(image: InstanceRecord, max_dets: int | None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(class, predictions by descending score (the first max_dets), references)`` per class."""
    for c in np.union1d(image.pred_classes, image.ref_classes).tolist():
        d = np.flatnonzero(image.pred_classes == c)
        yield c, d[np.argsort(-image.scores[d], kind="mergesort")][:max_dets], np.flatnonzero(image.ref_classes == c)


def _check_max_dets(max_dets: int | None) -> int | None:
    if max_dets is not None and int(max_dets) < 1:
        raise ValueError(f"max_dets must be a positive number of detections per image, or None for all; got "
                         f"{max_dets}.")
    return None if max_dets is None else int(max_dets)


def coco_ap(cases: Iterable[InstanceCase | InstanceRecord], iou_thresholds: Sequence[float] = COCO_THRESHOLDS,
            max_dets: int | None = 100) -> dict:
    """COCO mask AP of scored predicted instances over images (2D or 3D instance maps).

    pycocotools' ``COCOeval(iouType="segm")`` without crowds and with the area range "all": per
    image and class the ``max_dets`` highest-scoring predictions are matched greedily by
    descending score; per class the precision over all images is interpolated at 101 recall
    points; AP is the mean over thresholds, recall points and the classes that have reference
    instances (a class without any has per-class AP NaN, like pycocotools' -1).

    Args:
        cases: ``(pred_map, pred_scores, pred_classes, ref_map, ref_classes)`` per image; scores
            ``{id: score}`` (``None``: all 1), classes ``{id: class}`` (``None``: all 1);
            reference ``-1`` voxels are ignored. Or their :func:`instance_record`.
        iou_thresholds: IoU thresholds (default 0.50:0.05:0.95).
        max_dets: detections kept per image and class (COCO's 100; ``None``: all).

    Returns:
        ``{"AP", "AP50", "AP75", "per_class": {class: {"AP", "AP50", "AP75", "n_pred", "n_ref"}}}``
        (AP50/AP75 NaN when their threshold is not evaluated; everything NaN without references).
    """
    thresholds, max_dets = np.array([_check_threshold(t) for t in iou_thresholds]), _check_max_dets(max_dets)
    found: dict[int, list] = {}  # class -> [scores per image, matches per image, n_ref, n_pred]
    for index, case in enumerate(cases):
        image = instance_record(case, index)
        for c, d, g in _by_class(image, max_dets):
            entry = found.setdefault(c, [[], [], 0, 0])
            entry[0].append(image.scores[d])
            entry[1].append(_greedy(image.iou[np.ix_(d, g)], thresholds))
            entry[2], entry[3] = entry[2] + len(g), entry[3] + len(d)
    curves = {c: _precision_curves(np.concatenate(s), np.concatenate(m, axis=1), n)
              for c, (s, m, n, _) in found.items() if n}
    every = np.stack(list(curves.values()), axis=-1) if curves else np.zeros((len(thresholds), 0))
    per_class = {c: {"AP": float(curves[c].mean()) if c in curves else math.nan,
                     **{f"AP{k}": _at(curves[c], thresholds, k / 100) if c in curves else math.nan for k in (50, 75)},
                     "n_pred": found[c][3], "n_ref": found[c][2]} for c in sorted(found)}
    return {"AP": float(every.mean()) if every.size else math.nan,
            "AP50": _at(every, thresholds, 0.5), "AP75": _at(every, thresholds, 0.75), "per_class": per_class}


def detection_ap(cases: Iterable[InstanceCase | InstanceRecord], iou_threshold: float = 0.1,
                 iou_range: tuple[float, float, float] = (0.1, 0.5, 0.1), max_dets: int | None = 100) -> dict:
    """Box AP as nnDetection and MONAI report it: AP at ``iou_threshold`` and mAP over ``iou_range``.

    Boxes are taken from the instance masks (ignored voxels left out), their IoU from MONAI's
    ``box_iou`` (float32, so an IoU exactly at a threshold may fall below it), matched as
    ``monai.apps.detection.metrics.matching.matching_batch`` matches (greedy by score; the same
    algorithm vectorised over references: MONAI's loop takes minutes at thousands of nuclei) and
    scored by MONAI's ``COCOMetric`` over the classes that have reference instances. ``cases``
    and ``max_dets`` (``None``: all) as for :func:`coco_ap`.

    Returns:
        ``{"box_AP10", "box_mAP", "per_class": {class: {"box_AP10", "box_mAP"}}}`` (the AP key
        named after ``iou_threshold``), NaN without reference instances.
    """
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.data.box_utils import box_iou

    images, max_dets = [instance_record(case, index) for index, case in enumerate(cases)], _check_max_dets(max_dets)
    classes = sorted({int(c) for image in images for c in image.ref_classes})
    ap_key = f"box_AP{round(100 * float(iou_threshold))}"
    if not classes:
        return {ap_key: math.nan, "box_mAP": math.nan, "per_class": {}}
    limit = max_dets or max([len(i.scores) for i in images] + [1])
    metric = COCOMetric(classes=[str(c) for c in classes], iou_list=(float(iou_threshold),),
                        iou_range=tuple(iou_range), max_detection=(limit,), per_class=True, verbose=False)
    results = []  # matching_batch's output: per image {class index: matches}
    for image in images:
        results.append({})
        for c, d, g in _by_class(image, max_dets):
            if c in classes:  # predictions of a class without references are not scored
                iou = box_iou(image.pred_boxes[d], image.ref_boxes[g]) if len(d) and len(g) else np.zeros((len(d), 0))
                matched = _greedy(np.asarray(iou), metric.iou_thresholds).astype(float)
                results[-1][classes.index(c)] = {"dtMatches": matched, "dtScores": image.scores[d],
                                                 "dtIgnore": np.zeros_like(matched), "gtIgnore": np.zeros(len(g), bool)}
    values, _ = metric(results)
    low, high, step = iou_range
    keys = {ap_key: f"AP_IoU_{float(iou_threshold):.2f}_MaxDet_{limit}",
            "box_mAP": f"mAP_IoU_{low:.2f}_{high:.2f}_{step:.2f}_MaxDet_{limit}"}
    return {**{name: float(values[key]) for name, key in keys.items()},
            "per_class": {c: {name: float(values[f"{c}_{key}"]) for name, key in keys.items()} for c in classes}}
