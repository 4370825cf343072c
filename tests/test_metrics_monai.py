"""medseg's surface and overlap metrics agree with MONAI's (HausdorffDistanceMetric,
SurfaceDistanceMetric, SurfaceDiceMetric, DiceMetric) on random label maps and one empty mask."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from medseg.evaluation.metrics import compute_metrics
from tests.test_metrics import random_label_map


def monai_metrics(pred, ref, spacing, tolerance):
    torch = pytest.importorskip("torch")
    from monai.metrics import (
        DiceMetric,
        HausdorffDistanceMetric,
        SurfaceDiceMetric,
        SurfaceDistanceMetric,
    )

    def one_hot(a):
        return torch.nn.functional.one_hot(torch.as_tensor(a), 3).movedim(-1, 0)[None].float()

    p, r = one_hot(pred), one_hot(ref)
    common = {"include_background": False, "reduction": "none"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = {
            "dice": DiceMetric(**common)(p, r),
            "hd": HausdorffDistanceMetric(**common)(p, r, spacing=spacing),
            "hd95": HausdorffDistanceMetric(percentile=95, **common)(p, r, spacing=spacing),
            "assd": SurfaceDistanceMetric(symmetric=True, **common)(p, r, spacing=spacing),
            "nsd": SurfaceDiceMetric([tolerance] * 2, **common)(p, r, spacing=spacing),
        }
    return {label: {k: float(v[0, label - 1]) for k, v in results.items()} for label in (1, 2)}


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [
        ((40, 34, 18), (0.7, 1.3, 2.5)),
        ((24, 30, 12), (2.5, 0.7, 1.3)),
        ((48, 40), (0.7, 1.3)),
        ((36, 36), None),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_monai(shape, spacing, seed):
    rng = np.random.default_rng(seed)
    ref = random_label_map(shape, rng)
    pred = random_label_map(shape, rng)
    pred[(ref == 2) & (rng.random(shape) < 0.6)] = 2  # partial overlap, scattered outliers
    tolerance = 1.5
    ours = compute_metrics(pred, ref, spacing=spacing, labels=[1, 2], nsd_tolerance=tolerance)
    theirs = monai_metrics(pred, ref, spacing, tolerance)
    for label in (1, 2):
        for name, value in theirs[label].items():
            assert ours[label][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (label, name)


@pytest.mark.parametrize("empty", ["prediction", "reference"])
def test_one_empty_mask_agrees_with_monai(empty):
    ref = np.zeros((12, 10, 8), dtype=np.int64)
    ref[2:8, 3:7, 2:6] = 1
    ref[8:11, 1:4, 1:3] = 2
    pred = ref.copy()
    if empty == "prediction":
        pred[pred == 1] = 0
    else:
        ref[ref == 1] = 0
    ours = compute_metrics(pred, ref, spacing=(0.7, 1.3, 2.5), labels=[1, 2])
    theirs = monai_metrics(pred, ref, (0.7, 1.3, 2.5), 1.0)
    for name in ("hd", "assd", "nsd"):
        assert ours[1][name] == theirs[1][name], name  # inf, inf, 0.0
    # MONAI's hd95 takes torch.quantile of infinities, which gives NaN; we keep inf like hd.
    assert ours[1]["hd95"] == math.inf and not math.isfinite(theirs[1]["hd95"])
    for name in ("hd", "hd95", "assd", "nsd"):
        assert ours[2][name] == pytest.approx(theirs[2][name]), name
    assert ours[1]["dice"] == 0.0
