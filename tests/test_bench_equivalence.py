"""What the benches take for granted, checked untimed on tiny inputs: medseg's sliding window gives
MONAI's output for plans tests/test_inference.py does not cover, and the patch stream reading the
cache yields exactly the patches cut from freshly preprocessed arrays."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference as monai_sliding_window

from medseg.inference import sliding_window_inference
from medseg.io import MSDDataset
from medseg.preprocessing import Pad, ZScore, preprocess
from medseg.preprocessing.cache import PreprocessedCases
from medseg.sampling import AUGMENTATIONS, PatchSampler, PatchStream, crop
from tests.conftest import SAMPLES

# (input shape, roi, overlap, mode, sigma_scale)
PLANS = {
    "anisotropic roi": ((1, 2, 23, 41, 17), (8, 20, 12), 0.5, "gaussian", (0.1, 0.125, 0.2)),
    "overlap per axis": ((2, 1, 30, 26, 21), (12, 10, 16), (0.25, 0.5, 0.75), "gaussian", 0.125),
    "per-axis overlap, roi past the image": ((1, 1, 30, 10, 25), (16, 16, 8), (0.6, 0.0, 0.4), "constant", 0.125),
}


@pytest.mark.parametrize("plan", PLANS.values(), ids=PLANS.keys())
@pytest.mark.parametrize("sw_batch_size", [1, 7])
def test_sliding_window_equals_monai(plan, sw_batch_size):
    shape, roi, overlap, mode, sigma = plan
    torch.manual_seed(0)
    net = torch.nn.Conv3d(shape[1], 3, 3, padding=1)
    x = torch.randn(shape)
    kwargs = {"overlap": overlap, "mode": mode, "sigma_scale": sigma}
    with torch.no_grad():
        ours = sliding_window_inference(x, roi, sw_batch_size, net, **kwargs)
        theirs = monai_sliding_window(x, roi, sw_batch_size, net, **kwargs)
        one_at_a_time = sliding_window_inference(x, roi, 1, net, **kwargs)
    assert ours.shape == (shape[0], 3, *shape[2:])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, one_at_a_time, atol=1e-5, rtol=0)


def test_stream_from_the_cache_yields_crops_of_fresh_preprocessing(tmp_path):
    data = MSDDataset(SAMPLES / "hippocampus")
    ids = data.case_ids[:3]
    steps = [ZScore(), Pad(min_shape=(40, 56, 40))]
    cases = PreprocessedCases(data, steps, cache_dir=tmp_path).build(ids)
    patch, batch_size, seed = (24, 24, 24), 3, 5
    none = AUGMENTATIONS["none"]
    stream = PatchStream(cases, ids, PatchSampler(patch_size=patch, foreground_ratio=1 / 3),
                         batch_size=batch_size, augmentation=none, num_classes=3, seed=seed)
    batches = list(itertools.islice(iter(stream), 4))

    fresh = {c: preprocess(data.load(c), steps) for c in ids}
    sampler = PatchSampler(patch_size=patch, foreground_ratio=1 / 3)
    centred = 0
    for index, batch in enumerate(batches):
        rng = np.random.default_rng([seed, index])  # each batch has its own generator
        for k in range(batch_size):
            sample = fresh[ids[rng.integers(len(ids))]]
            none.draw(rng, 3)  # the stream draws augmentation parameters before the origin
            foreground = {int(c): np.argwhere(sample.label == c) for c in np.unique(sample.label) if c > 0}
            start, on_foreground = sampler.draw_start(sample.image.shape[1:], foreground, rng, patch)
            centred += on_foreground
            np.testing.assert_array_equal(batch["image"][k].numpy(), crop(sample.image, start, patch))
            np.testing.assert_array_equal(batch["label"][k].numpy(), crop(sample.label, start, patch))
    assert centred == 4  # a third of 12 patches
