"""Sliding-window inference: identity returns the input, equality with MONAI, postprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference as monai_sliding_window

from medseg.inference import (
    InferenceConfig,
    keep_largest_component,
    predict_probabilities,
    sliding_window_inference,
)

PLANS = [
    ((1, 1, 37, 51, 29), (16, 24, 16), 0.5, "gaussian", 3),
    ((2, 2, 20, 30, 10), (32, 32, 16), 0.25, "constant", 2),
    ((1, 1, 64, 40, 33), (32, 32, 32), 0.3, "gaussian", 5),
    ((3, 1, 97, 83), (32, 48), 0.5, "gaussian", 4),
]


@pytest.mark.parametrize(("shape", "roi", "overlap", "mode", "batch"), PLANS)
def test_identity_model_returns_its_input(shape, roi, overlap, mode, batch):
    x = torch.randn(shape)
    out = sliding_window_inference(x, roi, batch, lambda w: w, overlap=overlap, mode=mode)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("shape", "roi", "overlap", "mode", "batch"), PLANS)
def test_equals_monai_for_the_same_plan(shape, roi, overlap, mode, batch):
    torch.manual_seed(0)
    conv = (torch.nn.Conv3d if len(roi) == 3 else torch.nn.Conv2d)(shape[1], 3, 3, padding=1)
    x = torch.randn(shape)
    with torch.no_grad():
        ours = sliding_window_inference(x, roi, batch, conv, overlap=overlap, mode=mode)
        theirs = monai_sliding_window(x, roi, batch, conv, overlap=overlap, mode=mode)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_argument_errors():
    with pytest.raises(ValueError, match="overlap must lie in"):
        sliding_window_inference(torch.zeros(1, 1, 8, 8), (4, 4), 1, lambda w: w, overlap=1.0)
    with pytest.raises(ValueError, match="roi_size=.* has 3 axes"):
        sliding_window_inference(torch.zeros(1, 1, 8, 8), (4, 4, 4), 1, lambda w: w)


def test_keep_largest_component_by_hand():
    labels = np.zeros((6, 6), np.int64)
    labels[0:2, 0:2] = 1  # 4 voxels
    labels[4:6, 3:6] = 1  # 6 voxels: kept
    labels[0, 5] = 2
    out = keep_largest_component(labels)
    assert out[0:2, 0:2].sum() == 0 and (out[4:6, 3:6] == 1).all() and out[0, 5] == 2


class _Scale(torch.nn.Module):
    """Logits (-x, x): softmax gives sigmoid(2x) for class 1."""

    def forward(self, x):
        return torch.cat([-x, x], dim=1)


def test_slice_by_slice_prediction_equals_a_loop_over_slices():
    image = np.random.default_rng(0).normal(size=(1, 20, 18, 5)).astype(np.float32)
    config = InferenceConfig(overlap=0.5, mode="gaussian", sw_batch_size=3)
    out = predict_probabilities(_Scale(), image, roi_size=(16, 16), config=config, slice_axis=2)
    assert out.shape == (2, 20, 18, 5)
    expected = 1 / (1 + np.exp(-2 * image[0]))
    np.testing.assert_allclose(out[1], expected, atol=1e-5)
    mirrored = predict_probabilities(_Scale(), image, roi_size=(16, 16), config=InferenceConfig(mirror=True), slice_axis=2)
    np.testing.assert_allclose(mirrored[1], expected, atol=1e-5)  # a flip-equivariant model


def test_an_ensemble_averages_its_members_probabilities():
    """nnU-Net's fold ensemble: the mean of each member's softmax, summed in one buffer."""
    torch.manual_seed(0)
    members = [torch.nn.Conv3d(1, 3, 3, padding=1) for _ in range(3)]
    image = np.random.default_rng(0).standard_normal((1, 30, 22, 18)).astype(np.float32)
    config = InferenceConfig(overlap=0.5, mode="gaussian", sw_batch_size=2)
    alone = [predict_probabilities(m, image, roi_size=(16, 16, 16), config=config) for m in members]
    together = predict_probabilities(members, image, roi_size=(16, 16, 16), config=config)
    np.testing.assert_allclose(together, np.mean(alone, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(together.sum(0), 1.0, rtol=1e-5)
