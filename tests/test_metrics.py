"""Tests of medseg.evaluation.metrics: hand-worked values, empty masks, errors (MONAI agreement:
test_metrics_monai.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg.evaluation.metrics import (
    METRIC_NAMES,
    compute_metrics,
    confusion_counts,
    dice_per_label,
    metrics_to_rows,
    summarize,
)

METRICS_FILE = Path(__file__).resolve().parents[1] / "medseg" / "evaluation" / "metrics.py"


def assert_metrics(actual: dict[str, float], expected: dict[str, float]) -> None:
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, rel=1e-12, abs=1e-12, nan_ok=True), name


# --- hand-worked values -------------------------------------------------------------------------


def test_shifted_boxes_2d_by_hand():
    # reference: 2x4 box, prediction: the same box shifted by 2 along axis 1; every voxel of a
    # 2-thick box is a surface voxel. Columns of pred 4,5 lie on ref (d=0), column 6 at d=1,
    # column 7 at d=2, two voxels per column; the reverse direction is symmetric.
    ref = np.zeros((10, 10), dtype=np.int64)
    pred = np.zeros_like(ref)
    ref[2:4, 2:6] = 1
    pred[2:4, 4:8] = 1
    m = compute_metrics(pred, ref)
    assert list(m) == [1]
    assert list(m[1]) == list(METRIC_NAMES)
    assert_metrics(
        m[1],
        {
            "dice": 2 * 4 / 16,
            "iou": 4 / 12,
            "precision": 4 / 8,
            "recall": 4 / 8,
            "specificity": 88 / 92,  # 100 voxels, 12 in the union, 4 false positives
            "volume_difference": 0.0,
            "hd": 2.0,
            "hd95": 2.0,  # sorted [0,0,0,0,1,1,2,2], position 0.95*7 = 6.65 -> 2
            "assd": 2 * (4 * 0 + 2 * 1 + 2 * 2) / 16,  # both directions [0,0,0,0,1,1,2,2]
            "nsd": 12 / 16,  # 6 of 8 distances <= 1 in each direction
        },
    )
    # Half spacing along axis 1 halves every distance; now all are within tolerance 1.
    m = compute_metrics(pred, ref, spacing=(1.0, 0.5))[1]
    assert_metrics(m, {"hd": 1.0, "hd95": 1.0, "assd": 0.375, "nsd": 1.0, "dice": 0.5})


def test_line_with_outlier_hd95_interpolates_and_uses_spacing():
    # reference: a 1-voxel thick line of 10 voxels; prediction: the same line plus one voxel
    # 10 rows away. Directed pred->ref distances: ten 0s and one 10 voxels = 20 mm (spacing 2
    # along axis 0). 95th percentile of [0]*10 + [20]: position 0.95*10 = 9.5 -> 0 + 0.5*20 = 10.
    ref = np.zeros((12, 10), dtype=np.int64)
    ref[1, :] = 1
    pred = ref.copy()
    pred[11, 0] = 1
    m = compute_metrics(pred, ref, spacing=(2.0, 0.5), nsd_tolerance=1.0)[1]
    assert_metrics(
        m,
        {
            "dice": 20 / 21,
            "iou": 10 / 11,
            "precision": 10 / 11,
            "recall": 1.0,
            "specificity": 109 / 110,
            "volume_difference": 1 * 2.0 * 0.5,  # one extra voxel of 1 mm^2
            "hd": 20.0,
            "hd95": 10.0,
            "assd": 20 / 21,  # 21 distances (11 + 10), one of them 20
            "nsd": 20 / 21,
        },
    )


def test_separated_cubes_3d_by_hand():
    # 2x2x2 cubes three voxels apart along axis 2, spacing 3 mm there: pred slice z=4 is 2 voxels
    # (6 mm) from ref slice z=2, slice z=5 3 voxels (9 mm); four voxels per slice.
    ref = np.zeros((4, 4, 8), dtype=np.int16)
    pred = np.zeros_like(ref)
    ref[1:3, 1:3, 1:3] = 3
    pred[1:3, 1:3, 4:6] = 3
    m = compute_metrics(pred, ref, spacing=(1.0, 1.0, 3.0), nsd_tolerance=6.0)
    assert list(m) == [3]
    assert_metrics(
        m[3],
        {
            "dice": 0.0,
            "iou": 0.0,
            "precision": 0.0,
            "recall": 0.0,
            "specificity": (128 - 16) / (128 - 8),
            "volume_difference": 0.0,
            "hd": 9.0,
            "hd95": 9.0,
            "assd": 7.5,
            "nsd": 0.5,
        },
    )


def test_volume_difference_is_signed_physical_volume():
    ref = np.zeros((6, 6, 6), dtype=np.uint8)
    ref[1:5, 1:5, 1:5] = 1  # 64 voxels
    pred = np.zeros_like(ref)
    pred[1:3, 1:5, 1:5] = 1  # 32 voxels
    m = compute_metrics(pred, ref, spacing=(0.5, 2.0, 3.0))[1]
    assert m["volume_difference"] == pytest.approx(-32 * 3.0)
    assert compute_metrics(ref, pred, spacing=(0.5, 2.0, 3.0))[1]["volume_difference"] == 96.0


def test_multi_label_and_explicit_labels():
    ref = np.array([[0, 1, 1, 2], [0, 1, 2, 2]])
    pred = np.array([[0, 1, 2, 2], [5, 1, 2, 2]])
    m = compute_metrics(pred, ref)
    assert list(m) == [1, 2, 5]
    assert m[1]["dice"] == pytest.approx(2 * 2 / 5)
    assert m[2]["dice"] == pytest.approx(2 * 3 / 7)
    assert m[5]["dice"] == 0.0
    assert list(compute_metrics(pred, ref, labels=[2])) == [2]


def test_identical_masks_are_perfect():
    ref = np.zeros((9, 9, 5), dtype=np.int32)
    ref[2:7, 3:6, 1:4] = 1
    m = compute_metrics(ref, ref, spacing=(0.7, 1.3, 2.5))[1]
    assert_metrics(
        m,
        {"dice": 1, "iou": 1, "precision": 1, "recall": 1, "specificity": 1, "hd": 0, "hd95": 0},
    )
    assert_metrics(m, {"assd": 0.0, "nsd": 1.0, "volume_difference": 0.0})


def test_float_label_maps_with_whole_values_are_accepted():
    ref = np.zeros((5, 5))
    ref[1:3, 1:3] = 1.0
    assert compute_metrics(ref, ref)[1]["dice"] == 1.0


# --- empty masks --------------------------------------------------------------------------------


def test_both_empty_is_perfect_agreement():
    empty = np.zeros((6, 7), dtype=np.int64)
    assert compute_metrics(empty, empty) == {}
    m = compute_metrics(empty, empty, labels=[1])[1]
    assert_metrics(
        m,
        {
            "dice": 1.0,
            "iou": 1.0,
            "precision": 1.0,
            "recall": 1.0,
            "specificity": 1.0,
            "volume_difference": 0.0,
            "hd": 0.0,
            "hd95": 0.0,
            "assd": 0.0,
            "nsd": 1.0,
        },
    )


def test_empty_prediction():
    ref = np.zeros((6, 6, 6), dtype=np.int64)
    ref[1:3, 1:3, 1:3] = 1
    m = compute_metrics(np.zeros_like(ref), ref, spacing=2.0)[1]
    assert_metrics(m, {"dice": 0.0, "iou": 0.0, "recall": 0.0, "specificity": 1.0, "nsd": 0.0})
    assert math.isnan(m["precision"])
    assert m["volume_difference"] == -8 * 8.0
    assert m["hd"] == m["hd95"] == m["assd"] == math.inf


def test_empty_reference():
    pred = np.zeros((6, 6), dtype=np.int64)
    pred[0, 0] = 1
    m = compute_metrics(pred, np.zeros_like(pred))[1]
    assert_metrics(m, {"dice": 0.0, "iou": 0.0, "precision": 0.0, "nsd": 0.0})
    assert_metrics(m, {"specificity": 35 / 36, "volume_difference": 1.0})
    assert math.isnan(m["recall"])
    assert m["hd"] == m["hd95"] == m["assd"] == math.inf


def test_reference_filling_the_image_has_nan_specificity():
    ones = np.ones((4, 4), dtype=np.int64)
    m = compute_metrics(ones, ones)[1]
    assert math.isnan(m["specificity"])
    assert m["dice"] == 1.0 and m["hd"] == 0.0  # outside the array counts as background


# --- agreement with MONAI -----------------------------------------------------------------------


def random_label_map(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Smooth random blobs with labels 1 and 2, plus an ellipsoid of label 2."""
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=2.5)
    labels = np.digitize(noise, [np.quantile(noise, 0.65), np.quantile(noise, 0.88)])
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    centre = rng.uniform(-0.4, 0.4, size=len(shape))
    radii = rng.uniform(0.2, 0.4, size=len(shape))
    ellipsoid = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1
    labels[ellipsoid] = 2
    return labels.astype(np.int64)


# --- dice_per_label, rows and summaries ---------------------------------------------------------


def test_dice_per_label_matches_compute_metrics():
    rng = np.random.default_rng(3)
    ref = random_label_map((20, 18, 10), rng)
    pred = random_label_map((20, 18, 10), rng)
    fast = dice_per_label(pred, ref, [1, 2, 7])
    full = compute_metrics(pred, ref, labels=[1, 2, 7])
    assert list(fast) == [1, 2, 7]
    for label in fast:
        assert fast[label] == pytest.approx(full[label]["dice"], rel=1e-12)
    assert fast[7] == 1.0  # absent from both
    assert dice_per_label(pred, ref, []) == {}


def test_dice_per_label_sparse_and_negative_labels():
    pred = np.array([0, -3, -3, 100_000, 100_000])
    ref = np.array([0, -3, 1, 100_000, 0])
    assert dice_per_label(pred, ref, [-3, 100_000, 1]) == {
        -3: pytest.approx(2 / 3),
        100_000: pytest.approx(2 / 3),
        1: 0.0,
    }
    assert dice_per_label(pred[:3] > 0, ref[:3] > 0, [1]) == {1: 0.0}


def test_summarize_matches_numpy_and_counts_non_finite():
    values = [0.2, 0.9, 0.5, 0.75]
    rows = [{"fold": i % 2, "case": f"c{i}", "label": 1, "dice": v} for i, v in enumerate(values)]
    rows += [{"label": 1, "dice": math.nan, "hd": math.inf}, {"label": 1, "hd": 3.0}]
    rows += [{"label": 2, "hd": math.inf}]
    summary = summarize(rows)
    assert list(summary) == [1, 2]
    dice = summary[1]["dice"]
    assert dice["mean"] == pytest.approx(np.mean(values))
    assert dice["std"] == pytest.approx(np.std(values))
    assert dice["median"] == pytest.approx(np.median(values))
    assert (dice["n"], dice["n_nan"], dice["n_inf"]) == (4, 1, 0)
    hd = summary[1]["hd"]
    assert (hd["mean"], hd["std"], hd["median"], hd["n"], hd["n_inf"]) == (3.0, 0.0, 3.0, 1, 1)
    assert math.isnan(summary[2]["hd"]["mean"]) and summary[2]["hd"]["n_inf"] == 1


def test_metrics_to_rows_round_trip_through_summarize():
    ref = np.zeros((6, 6), dtype=np.int64)
    ref[1:4, 1:4] = 1
    rows = metrics_to_rows(compute_metrics(ref, ref), case="a", fold=2)
    assert rows[0]["case"] == "a" and rows[0]["fold"] == 2 and rows[0]["label"] == 1
    assert summarize(rows)[1]["dice"]["mean"] == 1.0


# --- errors and the torch-free guarantee --------------------------------------------------------


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        compute_metrics(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="same number of voxels"):
        dice_per_label(np.zeros(4, int), np.zeros(5, int), [1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spacing": (1.0, 1.0, 1.0)}, "spacing must be"),
        ({"spacing": (1.0, -2.0)}, "spacing must be"),
        ({"nsd_tolerance": -1.0}, "nsd_tolerance"),
        ({"nsd_tolerance": math.inf}, "nsd_tolerance"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    a = np.zeros((4, 4), int)
    with pytest.raises(ValueError, match=match):
        compute_metrics(a, a, **kwargs)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="2D or 3D"):
        compute_metrics(np.zeros((2, 3, 4, 5), int), np.zeros((2, 3, 4, 5), int))
    with pytest.raises(TypeError, match="integer label map"):
        compute_metrics(np.full((3, 3), 0.5), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="'label'"):
        summarize([{"dice": 1.0}])


def test_metrics_module_does_not_need_torch():
    code = (
        "import importlib.util, sys, types, numpy as np\n"
        "sys.modules['torch'] = None\n"  # any `import torch` now fails
        # the evaluation folder as a bare package: its modules load without medseg/__init__.py
        f"pkg = types.ModuleType('ev'); pkg.__path__ = [{str(METRICS_FILE.parent)!r}]; sys.modules['ev'] = pkg\n"
        f"spec = importlib.util.spec_from_file_location('ev.metrics', {str(METRICS_FILE)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['ev.metrics'] = m; spec.loader.exec_module(m)\n"
        "a = np.zeros((5, 5, 5), int); a[1:3, 1:3, 1:3] = 1\n"
        "assert m.compute_metrics(a, a, spacing=(1, 2, 3))[1]['hd95'] == 0.0\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_unusual_label_values_and_bool_masks_give_the_same_metrics():
    rng = np.random.default_rng(5)
    ref = random_label_map((18, 16, 9), rng)
    pred = random_label_map((18, 16, 9), rng)
    expected = compute_metrics(pred, ref, spacing=(0.7, 1.3, 2.5))
    mapping = np.array([0, -4, 70_000])  # negative and large labels take the per-label scan
    odd = compute_metrics(mapping[pred], mapping[ref], spacing=(0.7, 1.3, 2.5))
    assert list(odd) == [-4, 70_000]
    assert odd[-4] == expected[1] and odd[70_000] == expected[2]
    binary = compute_metrics(pred == 1, ref == 1, spacing=(0.7, 1.3, 2.5))
    assert binary == {1: expected[1]}


# --- ignored voxels and regions -----------------------------------------------------------------


def test_ignored_voxels_are_left_out_of_every_metric_by_hand():
    # row 0: reference 1 1 0 5 5 (5 = ignore), prediction 1 0 0 1 1; row 1 background in both
    ref = np.array([[1, 1, 0, 5, 5], [0, 0, 0, 0, 0]])
    pred = np.array([[1, 0, 0, 1, 1], [0, 0, 0, 0, 0]])
    counted = compute_metrics(pred, ref, labels=[1])[1]  # without ignore: the 2 predicted 5s are FP
    assert counted["dice"] == pytest.approx(2 / 5) and counted["specificity"] == pytest.approx(6 / 8)
    left_out = compute_metrics(pred, ref, labels=[1], ignore=5)[1]  # 8 voxels scored: TP 1, FN 1, TN 6
    assert_metrics(left_out, {"dice": 2 / 3, "iou": 1 / 2, "precision": 1.0, "recall": 1 / 2,
                              "specificity": 1.0, "volume_difference": -1.0, "hd": 1.0, "assd": 1 / 3,
                              "nsd": 1.0})  # distances 0 (pred->ref), 0 and 1 (ref->pred)
    assert dice_per_label(pred, ref, [1], ignore=5) == {1: pytest.approx(2 / 3)}
    assert confusion_counts(pred, ref, [1], ignore=5)[1] == {"TP": 1, "FP": 0, "FN": 1, "TN": 6,
                                                             "n_pred": 1, "n_ref": 2}
    assert list(compute_metrics(pred, ref, ignore=5)) == [1]  # the ignore value is never a label
    with pytest.raises(ValueError, match="ignore value 5"):
        compute_metrics(pred, ref, labels=[1, 5], ignore=5)


def test_regions_are_scored_as_one_mask_by_hand():
    # reference 1 2 3 0, prediction 2 2 0 3 (BraTS-like regions: whole (1, 2, 3), core (2, 3))
    ref = np.array([[1, 2, 3, 0], [0, 0, 0, 0]])
    pred = np.array([[2, 2, 0, 3], [0, 0, 0, 0]])
    targets = [(1, 2, 3), (2, 3), 3]
    full = compute_metrics(pred, ref, labels=targets)
    assert list(full) == targets
    assert full[(1, 2, 3)]["dice"] == pytest.approx(4 / 6) and full[(2, 3)]["dice"] == pytest.approx(2 / 5)
    assert full[3]["dice"] == 0.0 and full[(1, 2, 3)]["hd"] == 1.0
    assert dice_per_label(pred, ref, targets) == {(1, 2, 3): pytest.approx(4 / 6), (2, 3): pytest.approx(2 / 5),
                                                  3: 0.0}
    assert confusion_counts(pred, ref, [(1, 2, 3)])[(1, 2, 3)] == {"TP": 2, "FP": 1, "FN": 1, "TN": 4,
                                                                  "n_pred": 3, "n_ref": 3}
    binary = compute_metrics(np.isin(pred, (2, 3)), np.isin(ref, (2, 3)), labels=[1])[1]
    assert full[(2, 3)] == binary  # the same as scoring the region's binary masks
