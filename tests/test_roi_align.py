"""RoIAlign against a brute-force computation of the bilinear samples it averages."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from medseg.architectures.detection.roi_align import roi_align


def _interpolate(values: np.ndarray, point: list[float]) -> float:
    """torchvision's ``bilinear_interpolate``, written out for any number of axes."""
    shape = values.shape
    if any(p < -1.0 or p > size for p, size in zip(point, shape)):
        return 0.0
    lows, highs, fractions = [], [], []
    for p, size in zip(point, shape):
        p = max(p, 0.0)
        low = int(math.floor(p))
        if low >= size - 1:
            low = high = size - 1
            p = float(low)
        else:
            high = low + 1
        lows.append(low)
        highs.append(high)
        fractions.append(p - low)
    total = 0.0
    for corner in itertools.product((0, 1), repeat=len(shape)):
        weight, index = 1.0, []
        for axis, bit in enumerate(corner):
            weight *= fractions[axis] if bit else 1.0 - fractions[axis]
            index.append(highs[axis] if bit else lows[axis])
        total += weight * float(values[tuple(index)])
    return total


def _brute_force(features: np.ndarray, rois: np.ndarray, out: tuple[int, ...], scale: float, ratio: int) -> np.ndarray:
    dims = len(out)
    result = np.zeros((len(rois), features.shape[1], *out))
    for r, row in enumerate(rois):
        image = features[int(row[0])]
        start = [row[1 + d] * scale - 0.5 for d in range(dims)]
        bins = [(row[1 + dims + d] * scale - 0.5 - start[d]) / out[d] for d in range(dims)]
        for c in range(features.shape[1]):
            for cell in itertools.product(*(range(o) for o in out)):
                total = 0.0
                for sub in itertools.product(range(ratio), repeat=dims):
                    point = [start[d] + bins[d] * (cell[d] + (sub[d] + 0.5) / ratio) for d in range(dims)]
                    total += _interpolate(image[c], point)
                result[(r, c, *cell)] = total / ratio**dims
    return result


def _random_rois(rng: np.random.Generator, batch: int, shape: tuple[int, ...], count: int) -> np.ndarray:
    """Boxes inside, partly outside, far outside the map and tiny (< 1 voxel) ones."""
    dims = len(shape)
    rows = []
    for i in range(count):
        low = rng.uniform(-2, np.array(shape) * 0.9) if i % 6 else rng.uniform(-9, -4, dims)
        extent = rng.uniform(0.05, 1.0, dims) if i % 4 == 3 else rng.uniform(0.5, np.array(shape))
        rows.append([rng.integers(batch), *low, *(low + extent)])
    return np.asarray(rows)


@pytest.mark.parametrize(
    ("shape", "out", "scale", "ratio"),
    [((9, 7), (3, 4), 0.5, 2), ((6, 5), (2, 2), 1.0, 3), ((5, 6, 4), (2, 3, 2), 0.5, 2), ((4, 3, 5), (2, 2, 2), 1.0, 1)],
)
def test_matches_brute_force(shape, out, scale, ratio):
    rng = np.random.default_rng(len(shape) * 10 + ratio)
    features = rng.normal(size=(2, 3, *shape))
    rois = _random_rois(rng, 2, tuple(s / scale for s in shape), 12)
    expected = _brute_force(features, rois, out, scale, ratio)
    got = roi_align(torch.tensor(features, dtype=torch.float32), torch.tensor(rois, dtype=torch.float32), out, scale, ratio)
    assert got.shape == (12, 3, *out)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    inside = (np.abs(expected).reshape(len(rois), -1).sum(1) > 0).sum()
    assert 4 <= inside < len(rois)  # most boxes see the map, some do not


def test_hand_values_and_outside_box():
    features = torch.arange(16.0).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0.0, 0, 0, 4, 4], [0.0, 10, 10, 12, 12], [0.0, 1, 1, 2, 2]])
    got = roi_align(features, rois, 2, 1.0)
    # bins sample rows/cols {0, 1} and {2, 3}: means of 2x2 blocks
    assert torch.allclose(got[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    assert got[1].abs().sum() == 0  # entirely outside [-1, size]
    # voxel (1, 1) spans [1, 2)^2: every sample lies within 0.5 of its centre, bilinear -> 5 +- 2.5
    assert torch.allclose(got[2, 0], torch.tensor([[5.0 - 1.25, 5.0 - 0.75], [5.0 + 0.75, 5.0 + 1.25]]))


@pytest.mark.parametrize("dims", [2, 3])
def test_constant_map_gives_constant(dims):
    features = torch.full((2, 2, *(8,) * dims), 3.25)
    rois = torch.tensor([[1.0, *(0.2,) * dims, *(7.9,) * dims], [0.0, *(2.0,) * dims, *(2.1,) * dims]])
    got = roi_align(features, rois, 5, 1.0, 2)
    assert torch.allclose(got, torch.full_like(got, 3.25), atol=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
def test_gradcheck(dims):
    torch.manual_seed(0)
    features = torch.randn(2, 2, *(4,) * dims, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[1.0, *(0.3,) * dims, *(5.2,) * dims], [0.0, *(-1.0,) * dims, *(2.5,) * dims]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, 2, 0.7, 2), (features,))


def test_empty_rois_and_errors():
    features = torch.zeros(1, 3, 6, 6)
    assert roi_align(features, torch.zeros(0, 5), (2, 3), 1.0).shape == (0, 3, 2, 3)
    with pytest.raises(ValueError, match="rois must be"):
        roi_align(features, torch.zeros(1, 7), 2, 1.0)
    with pytest.raises(ValueError, match="batch indices"):
        roi_align(features, torch.tensor([[1.0, 0, 0, 2, 2]]), 2, 1.0)
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(features, torch.tensor([[0.0, 0, 0, 2, 2]]), 2, 1.0, 0)
    with pytest.raises(ValueError, match="output_size"):
        roi_align(features, torch.tensor([[0.0, 0, 0, 2, 2]]), (2, 2, 2), 1.0)
