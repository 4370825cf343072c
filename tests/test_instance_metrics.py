"""Instance metrics: by hand, by brute force, and against pycocotools (COCOeval segm and bbox)."""

from __future__ import annotations

import contextlib
import io
import itertools
import math

import numpy as np
import pytest

from medseg.evaluation.average_precision import coco_ap, detection_ap, instance_record
from medseg.evaluation.instance_metrics import instance_dice, instance_ious, matched_pairs, matching

# --- the 4x4 example, by hand ------------------------------------------------------------------
# ref: 1 = top-left 2x2 (4 voxels), 2 = bottom-right 2x2 (4 voxels)
REF = np.array([[1, 1, 0, 0],
                [1, 1, 0, 0],
                [0, 0, 2, 2],
                [0, 0, 2, 2]])
# pred: 5 = three voxels of ref 1; 7 and 8 = the left and right columns of ref 2 (2 voxels each)
PRED = np.array([[5, 5, 0, 0],
                 [5, 0, 0, 0],
                 [0, 0, 7, 8],
                 [0, 0, 7, 8]])
# IoU(5, 1) = 3 / 4 = 0.75; IoU(7, 2) = IoU(8, 2) = 2 / 4 = 0.5; every other pair 0.


def test_ious_by_hand():
    pred_ids, ref_ids, iou = instance_ious(PRED, REF)
    assert pred_ids.tolist() == [5, 7, 8] and ref_ids.tolist() == [1, 2]
    np.testing.assert_array_equal(iou, [[0.75, 0.0], [0.0, 0.5], [0.0, 0.5]])


def test_matching_by_hand():
    found = matching(PRED, REF, thresholds=(0.5, 0.6))
    # IoU >= 0.5: 5-1 (0.75) and one of 7/8 with 2 (0.5): TP 2, FP 1, FN 0.
    at = found[0.5]
    assert (at["tp"], at["fp"], at["fn"]) == (2, 1, 0)
    assert at["precision"] == pytest.approx(2 / 3) and at["recall"] == 1.0
    assert at["accuracy"] == pytest.approx(2 / 3)  # TP / (TP + FP + FN) = 2 / 3
    assert at["f1"] == pytest.approx(4 / 5)  # 2TP / (2TP + FP + FN) = 4 / 5
    # SQ = (0.75 + 0.5) / 2 = 0.625, RQ = 2 / (2 + 1/2 + 0) = 0.8, PQ = 0.5
    assert at["mean_matched_iou"] == pytest.approx(0.625)
    assert at["recognition_quality"] == pytest.approx(0.8)
    assert at["panoptic_quality"] == pytest.approx(0.5)
    # IoU >= 0.6: only 5-1: TP 1, FP 2, FN 1; accuracy 1/4; SQ 0.75, RQ 1 / 2.5 = 0.4, PQ 0.3
    at = found[0.6]
    assert (at["tp"], at["fp"], at["fn"]) == (1, 2, 1)
    assert at["accuracy"] == pytest.approx(0.25) and at["panoptic_quality"] == pytest.approx(0.3)


def test_instance_dice_by_hand():
    # ref 1: best Dice with 5 = 2*3 / (3 + 4) = 6/7; ref 2: with 7 (or 8) = 2*2 / (2 + 4) = 2/3
    assert instance_dice(PRED, REF) == pytest.approx((6 / 7 + 2 / 3) / 2)
    assert instance_dice(np.zeros_like(REF), REF) == 0.0
    assert math.isnan(instance_dice(PRED, np.zeros_like(REF)))


def test_ignored_voxels_leave_every_area():
    ref = REF.copy()
    ref[1, 1] = -1  # the voxel of ref 1 that pred 5 misses: now IoU(5, 1) = 3 / 3
    _, _, iou = instance_ious(PRED, ref)
    assert iou[0, 0] == 1.0
    mask = np.zeros(REF.shape, bool)
    mask[1, 1] = True
    np.testing.assert_array_equal(instance_ious(PRED, REF, ignore=mask)[2], iou)
    assert matching(PRED, ref)[0.5]["mean_matched_iou"] == pytest.approx(0.75)  # (1 + 0.5) / 2


def test_classes_only_match_their_own():
    found = matching(PRED, REF, (0.5,), pred_classes={5: 2, 7: 1, 8: 1}, ref_classes={1: 1, 2: 1})[0.5]
    assert (found["tp"], found["fp"], found["fn"]) == (1, 2, 1)  # 5 is class 2, ref 1 class 1
    with pytest.raises(ValueError, match=r"pred_classes has no class for instance id\(s\) \[8\]"):
        matching(PRED, REF, (0.5,), pred_classes={5: 1, 7: 1})


def test_empty_conventions():
    empty = np.zeros((4, 4), int)
    both = matching(empty, empty)[0.5]
    assert (both["tp"], both["fp"], both["fn"]) == (0, 0, 0)
    assert all(both[k] == 1.0 for k in ("precision", "recall", "accuracy", "f1", "panoptic_quality"))
    assert math.isnan(both["mean_matched_iou"])
    no_pred = matching(empty, REF)[0.5]
    assert math.isnan(no_pred["precision"]) and no_pred["recall"] == 0 and no_pred["accuracy"] == 0
    assert no_pred["panoptic_quality"] == 0
    no_ref = matching(PRED, empty)[0.5]
    assert math.isnan(no_ref["recall"]) and no_ref["precision"] == 0 and no_ref["f1"] == 0


def test_input_errors():
    with pytest.raises(ValueError, match="same shape"):
        instance_ious(PRED, REF[:3])
    with pytest.raises(ValueError, match="pred_map holds negative values"):
        instance_ious(-PRED, REF)
    with pytest.raises(ValueError, match="ref_map holds negative values"):
        instance_ious(PRED, REF - 3)
    with pytest.raises(TypeError, match="integer instance map"):
        instance_ious(PRED + 0.5, REF)
    with pytest.raises(ValueError, match=r"IoU threshold must lie in \(0, 1\], got 0.0"):
        matching(PRED, REF, (0.0,))
    with pytest.raises(ValueError, match=r"cases\[0\] must be"):
        coco_ap([(PRED, REF)])
    with pytest.raises(ValueError, match=r"no score for instance id\(s\) \[8\]"):
        coco_ap([(PRED, {5: 0.1, 7: 0.2}, None, REF, None)])


def test_ious_equal_per_pair_masks_3d():
    rng = np.random.default_rng(0)
    pred, ref = rng.integers(0, 6, (6, 7, 5)) * 3, rng.integers(0, 5, (6, 7, 5))
    pred_ids, ref_ids, iou = instance_ious(pred, ref)
    for (i, p), (j, r) in itertools.product(enumerate(pred_ids), enumerate(ref_ids)):
        a, b = pred == p, ref == r
        assert iou[i, j] == (a & b).sum() / (a | b).sum()


# --- Hungarian matching --------------------------------------------------------------------------


def _strip(intervals: dict[int, tuple[int, int]], width: int = 13) -> np.ndarray:
    """A (2, width) map painting each id on columns [start, stop)."""
    out = np.zeros((2, width), int)
    for ident, (start, stop) in intervals.items():
        out[:, start:stop] = ident
    return out


def test_hungarian_beats_greedy_at_low_threshold():
    ref = _strip({1: (0, 10), 2: (10, 13)})
    pred = _strip({1: (0, 4), 2: (4, 13)})
    # IoU(p1, r1) = 4/10 = 0.4; IoU(p2, r1) = 6/13 = 0.46; IoU(p2, r2) = 3/9 = 0.33; IoU(p1, r2) = 0
    _, _, iou = instance_ious(pred, ref)
    np.testing.assert_allclose(iou, [[0.4, 0.0], [6 / 13, 1 / 3]])
    # greedy by highest IoU takes p2-r1 (0.46) first, then neither p1 nor r2 has a partner >= 0.3
    free_pred, free_ref, greedy = {0, 1}, {0, 1}, 0
    for flat in np.argsort(-iou, axis=None):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] >= 0.3 and i in free_pred and j in free_ref:
            free_pred.discard(i), free_ref.discard(j)
            greedy += 1
    assert greedy == 1
    assert matching(pred, ref, (0.3,))[0.3]["tp"] == 2  # p1-r1 and p2-r2


def test_more_pairs_win_over_a_larger_iou_sum():
    ref = _strip({1: (0, 10), 2: (10, 20)}, 20)
    pred = _strip({1: (0, 2), 2: (2, 12)}, 20)
    # IoU(p2, r1) = 8/12 alone outweighs IoU(p1, r1) + IoU(p2, r2) = 2/10 + 2/18, yet two pairs match
    found = matching(pred, ref, (0.1,))[0.1]
    assert found["tp"] == 2
    assert found["mean_matched_iou"] == pytest.approx((0.2 + 2 / 18) / 2)


def _brute_force(iou: np.ndarray, threshold: float) -> tuple[int, float]:
    """The most pairs with IoU >= threshold over all one-to-one assignments, and their best IoU sum."""
    n_pred, n_ref = iou.shape
    best = (0, 0.0)
    for targets in itertools.product(range(-1, n_ref), repeat=n_pred):  # -1: unmatched
        used = [t for t in targets if t >= 0]
        if len(used) != len(set(used)) or any(iou[i, t] < threshold for i, t in enumerate(targets) if t >= 0):
            continue
        pairs = (len(used), sum(iou[i, t] for i, t in enumerate(targets) if t >= 0))
        best = max(best, pairs)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_matching_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    for _ in range(10):
        shape = (rng.integers(0, 6), rng.integers(0, 6))
        iou = rng.random(shape) * (rng.random(shape) < rng.random())  # sparse: several groups
        threshold = float(rng.choice([0.1, 0.3, 0.5]))
        rows, cols = matched_pairs(iou, threshold)
        count, total = _brute_force(iou, threshold)
        assert len(rows) == count and iou[rows, cols].sum() == pytest.approx(total)
    pred, ref = rng.integers(0, 5, (5, 6)), rng.integers(0, 5, (5, 6))  # from maps too
    _, _, iou = instance_ious(pred, ref)
    assert matching(pred, ref, (0.1,))[0.1]["tp"] == _brute_force(iou, 0.1)[0]


# --- COCO AP -------------------------------------------------------------------------------------


def _objects(rng, shape, count, offset=0):
    out = np.zeros(shape, np.int64)
    for ident in range(offset + 1, offset + count + 1):
        x, y = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
        w, h = rng.integers(2, 9, 2)
        window = out[x:x + w, y:y + h]
        window[rng.random(window.shape) < 0.85] = ident
    return out


def _random_case(rng, shape=(32, 40), classes=3):
    """References; predictions = references losing up to half their voxels (sometimes shifted by
    a voxel), a few re-classed, false positives (ids 21+) added; random scores."""
    ref = _objects(rng, shape, int(rng.integers(1, 8)))
    pred = np.where(rng.random(shape) < rng.random(shape) * 0.5, 0, ref)
    if rng.random() < 0.3:
        pred = np.roll(pred, int(rng.integers(-1, 2)), axis=int(rng.integers(0, 2)))
    extra = _objects(rng, shape, int(rng.integers(0, 4)), 20)
    pred[extra > 0] = extra[extra > 0]
    ref_classes = {int(i): int(rng.integers(1, classes + 1)) for i in np.unique(ref[ref > 0])}
    pred_ids = np.unique(pred[pred > 0])
    pred_classes = {int(i): ref_classes.get(int(i), 1) if rng.random() < 0.8 else int(rng.integers(1, classes + 1))
                    for i in pred_ids}
    scores = {int(i): float(rng.random()) for i in pred_ids}
    return pred, scores, pred_classes, ref, ref_classes


def _cases(seed):
    rng = np.random.default_rng(seed)
    cases = [_random_case(rng) for _ in range(4)]
    pred, scores, classes, ref, ref_classes = _random_case(rng)
    cases.append((np.zeros_like(pred), {}, {}, ref, ref_classes))  # an image without predictions
    pred, scores, classes, ref, ref_classes = _random_case(rng)
    cases.append((pred, scores, classes, np.zeros_like(ref), {}))  # an image without references
    return cases


def _pycocotools(cases, iou_type="segm", thresholds=None, max_dets=100):
    """pycocotools' precision array (T, R, K) at area "all" and ``max_dets``."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(mask):
        code = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {**code, "counts": code["counts"].decode()}

    images, annotations, results = [], [], []
    for image, (pred, scores, pred_classes, ref, ref_classes) in enumerate(cases, 1):
        images.append({"id": image, "height": ref.shape[0], "width": ref.shape[1]})
        for i in np.unique(ref[ref > 0]):
            code = rle(ref == i)
            annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": ref_classes[int(i)],
                                "segmentation": code, "area": float(mask_utils.area(code)),
                                "bbox": mask_utils.toBbox(code).tolist(), "iscrowd": 0})
        for i in np.unique(pred[pred > 0]):  # ascending ids, as coco_ap orders ties
            code = rle(pred == i)
            shape = {"segmentation": code} if iou_type == "segm" else {"bbox": mask_utils.toBbox(code).tolist()}
            results.append({"image_id": image, "category_id": pred_classes[int(i)], "score": scores[int(i)], **shape})
    truth = COCO()
    truth.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in (1, 2, 3)]}
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes(results), iou_type)
        if thresholds is not None:
            evaluator.params.iouThrs = np.asarray(thresholds)
        evaluator.params.maxDets = [1, 2, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["precision"][:, :, :, 0, 2]


def _mean(precision):
    return float(np.mean(precision[precision > -1]))


@pytest.mark.parametrize(("seed", "max_dets"), [(0, 100), (1, 100), (2, 3)])
def test_coco_ap_equals_pycocotools(seed, max_dets):
    cases = _cases(seed)
    ours = coco_ap(cases, max_dets=max_dets)
    truth = _pycocotools(cases, max_dets=max_dets)
    assert ours["AP"] > 0.05  # a meaningful comparison, not two zeros
    assert abs(ours["AP"] - _mean(truth)) < 1e-9
    assert abs(ours["AP50"] - _mean(truth[0])) < 1e-9
    assert abs(ours["AP75"] - _mean(truth[5])) < 1e-9
    for k, c in enumerate((1, 2, 3)):
        if c in ours["per_class"] and ours["per_class"][c]["n_ref"]:
            assert abs(ours["per_class"][c]["AP"] - _mean(truth[:, :, k])) < 1e-9


def test_coco_ap_3d_by_hand():
    ref = np.zeros((6, 6, 6), int)
    ref[1:4, 1:4, 1:4] = 1  # a 27-voxel cube
    pred = ref.copy()
    pred[1, 1:4, 1:3] = 0
    pred[1, 1, 3] = 0  # 20 of its voxels left: IoU 20/27 = 0.74
    pred[5, 5, 5] = 2  # a false positive scored higher
    result = coco_ap([(pred, {1: 0.9, 2: 0.95}, None, ref, None)])
    # at IoU <= 0.70 (5 of the 10 thresholds): FP then TP, precision [0, 1/2] -> interpolated 1/2
    # at every recall; at IoU >= 0.75 no match
    assert result["AP50"] == pytest.approx(0.5) and result["AP75"] == 0.0
    assert result["AP"] == pytest.approx(0.25)
    assert result["per_class"] == {1: {"AP": pytest.approx(0.25), "AP50": pytest.approx(0.5), "AP75": 0.0,
                                       "n_pred": 2, "n_ref": 1}}


def test_coco_ap_3d_equals_2d_slices():
    cases = _cases(3)
    slices, shift = [], 0
    volume = [np.zeros((len(cases), *cases[0][0].shape), np.int64) for _ in range(2)]
    scores, pred_classes, ref_classes = {}, {}, {}
    for z, (pred, score, classes, ref, ref_cls) in enumerate(cases):
        volume[0][z][pred > 0] = pred[pred > 0] + shift  # every slice's ids made unique
        volume[1][z][ref > 0] = ref[ref > 0] + shift
        scores.update({i + shift: s for i, s in score.items()})
        pred_classes.update({i + shift: c for i, c in classes.items()})
        ref_classes.update({i + shift: c for i, c in ref_cls.items()})
        slices.append((pred, score, classes, ref, ref_cls))
        shift += 100
    flat = coco_ap(slices, max_dets=1000)
    stacked = coco_ap([(volume[0], scores, pred_classes, volume[1], ref_classes)], max_dets=1000)
    assert flat["AP"] > 0.05
    for key in ("AP", "AP50", "AP75"):
        assert stacked[key] == pytest.approx(flat[key], abs=1e-12)
    one_slice = coco_ap([(p[..., None], s, c, r[..., None], rc) for p, s, c, r, rc in slices], max_dets=1000)
    assert one_slice == flat


def test_coco_ap_without_references_is_nan():
    result = coco_ap([(PRED, None, None, np.zeros_like(REF), None)])
    assert math.isnan(result["AP"]) and math.isnan(result["per_class"][1]["AP"])


# --- box AP (MONAI's COCOMetric) -----------------------------------------------------------------


def test_detection_ap_3d_by_hand():
    ref = np.zeros((8, 4, 4), int)
    ref[0:4] = 1  # box [0, 0, 0, 4, 4, 4]
    pred = np.zeros_like(ref)
    pred[2:6] = 1  # box [2, 0, 0, 6, 4, 4]: IoU 32 / 96 = 1/3
    record = instance_record((pred, None, None, ref, None))
    np.testing.assert_array_equal(record.ref_boxes, [[0, 0, 0, 4, 4, 4]])
    result = detection_ap([(pred, None, None, ref, None)])
    # matched at IoU 0.1, 0.2, 0.3; not at 0.4, 0.5 -> AP10 1, mAP 3/5
    assert result["box_AP10"] == pytest.approx(1.0) and result["box_mAP"] == pytest.approx(0.6)
    assert result["per_class"][1]["box_mAP"] == pytest.approx(0.6)


def _box_ious_near(cases, thresholds) -> bool:
    """Whether a box IoU lies within 1e-6 of a threshold (MONAI computes it in float32)."""
    for pred, _, _, ref, _ in cases:
        record = instance_record((pred, None, None, ref, None))
        a, b = record.pred_boxes.astype(float), record.ref_boxes.astype(float)
        if len(a) and len(b):
            low, high = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
            inter = np.clip(high - low, 0, None).prod(-1)
            union = (a[:, 2:] - a[:, :2]).prod(-1)[:, None] + (b[:, 2:] - b[:, :2]).prod(-1)[None] - inter
            if (np.abs((inter / union)[..., None] - thresholds) < 1e-6).any():
                return True
    return False


def test_detection_ap_equals_pycocotools_bbox():
    thresholds = np.linspace(0.1, 0.5, 5)
    seeds = [s for s in range(10, 40) if not _box_ious_near(_cases(s), thresholds)][:2]
    assert seeds
    for seed in seeds:
        cases = _cases(seed)
        ours = detection_ap(cases)
        truth = _pycocotools(cases, "bbox", thresholds)
        assert ours["box_mAP"] > 0.05
        assert abs(ours["box_mAP"] - _mean(truth)) < 1e-6  # MONAI counts in float32
        assert abs(ours["box_AP10"] - _mean(truth[0])) < 1e-6


def test_detection_ap_equals_monai_matching_batch():
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou

    for seed, max_dets in ((5, 100), (6, 3)):
        cases = _cases(seed)
        records = [instance_record(case) for case in cases]
        metric = COCOMetric(classes=["1", "2", "3"], iou_list=(0.1,), iou_range=(0.1, 0.5, 0.1),
                            max_detection=(max_dets,), verbose=False)
        monai = metric(matching_batch(box_iou, metric.iou_thresholds, [r.pred_boxes for r in records],
                                      [r.pred_classes - 1 for r in records], [r.scores for r in records],
                                      [r.ref_boxes for r in records], [r.ref_classes - 1 for r in records],
                                      max_detections=max_dets))[0]
        ours = detection_ap(records, max_dets=max_dets)
        assert ours["box_mAP"] == monai[f"mAP_IoU_0.10_0.50_0.10_MaxDet_{max_dets}"] > 0.05
        assert ours["box_AP10"] == monai[f"AP_IoU_0.10_MaxDet_{max_dets}"]
        assert ours["per_class"][2]["box_mAP"] == monai[f"2_mAP_IoU_0.10_0.50_0.10_MaxDet_{max_dets}"]
