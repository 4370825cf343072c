"""Average precision of instance predictions with scores, over a dataset of images given as
instance maps, in 2D and 3D.

- :func:`coco_ap`: COCO mask AP (pycocotools' ``COCOeval(iouType="segm")`` algorithm, crowd-free,
  area range "all": greedy matching by descending score per image and class, 101-point
  interpolated precision, ``maxDets``), IoUs from :func:`~medseg.evaluation.instance_metrics.instance_ious`.
- :func:`detection_ap`: the box AP nnDetection and MONAI report (AP at IoU 0.1, mAP over IoU
  0.1:0.1:0.5), with MONAI's ``box_iou`` and ``COCOMetric``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from .instance_metrics import (
    Classes,
    Scores,
    check_threshold,
    classes_of,
    clean_maps,
    instance_ious,
)

__all__ = ["COCO_THRESHOLDS", "InstanceCase", "InstanceRecord", "coco_ap", "detection_ap", "instance_record"]

InstanceCase = tuple[np.ndarray, Scores, Classes, np.ndarray, Classes]
"""``(pred_map, pred_scores, pred_classes, ref_map, ref_classes)`` of one image."""

COCO_THRESHOLDS = np.linspace(0.5, 0.95, 10)
"""pycocotools' IoU thresholds 0.50:0.05:0.95 (the same floats, so ties break the same way)."""
_RECALLS = np.linspace(0.0, 1.0, 101)



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
    pred, ref = clean_maps(pred_map, ref_map)
    pred_ids, ref_ids, iou = instance_ious(pred, ref)
    if scores is not None and (missing := [int(i) for i in pred_ids if int(i) not in scores]):
        raise ValueError(f"cases[{index}]: pred_scores has no score for instance id(s) {missing[:10]}; give every "
                         f"id a score, or None for all 1.")
    values = np.ones(len(pred_ids)) if scores is None else np.array([float(scores[int(i)]) for i in pred_ids])
    return InstanceRecord(values, classes_of(pred_ids, pred_classes, f"cases[{index}] pred_classes"),
                          classes_of(ref_ids, ref_classes, f"cases[{index}] ref_classes"), iou,
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
    thresholds, max_dets = np.array([check_threshold(t) for t in iou_thresholds]), _check_max_dets(max_dets)
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
