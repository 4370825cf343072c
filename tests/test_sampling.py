"""Patch sampling: exact foreground share, padding crops, augmented batches, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.io import Geometry, MSDDataset
from medseg.preprocessing import Pad, ZScore
from medseg.preprocessing.cache import PreprocessedCases
from medseg.sampling import AUGMENTATIONS, Augmentation, PatchSampler, PatchStream, crop
from tests.conftest import SAMPLES


def test_crop_pads_outside_the_array_with_zeros():
    array = np.arange(1, 13).reshape(1, 3, 4)
    out = crop(array, (-1, 2), (3, 3))
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [3, 4, 0], [7, 8, 0]])


def test_foreground_share_is_exact_and_patches_hold_foreground():
    rng = np.random.default_rng(0)
    label = np.zeros((60, 60, 60), np.int8)
    label[50:53, 5:8, 40:42] = 2
    foreground = {2: np.argwhere(label == 2)}
    sampler = PatchSampler(patch_size=(16, 16, 16), foreground_ratio=1 / 3)
    hits = 0
    for _ in range(300):
        start, centred = sampler.draw_start(label.shape, foreground, rng)
        hits += centred
        if centred:
            assert crop(label, start, (16, 16, 16)).max() == 2
            assert all(0 <= s <= 60 - 16 for s in start)
    assert hits == 100


def test_sampler_rejects_bad_ratio():
    with pytest.raises(ValueError, match=r"foreground_ratio=1.5"):
        PatchSampler(patch_size=(8, 8), foreground_ratio=1.5)


def test_augmentation_draws_replay_exactly():
    aug = AUGMENTATIONS["3d"]
    image = np.random.default_rng(0).random((1, 20, 20)).astype(np.float32)
    label = (image[0] > 0.5).astype(np.int64)
    params = aug.draw(np.random.default_rng(5), 2)
    a = aug.apply(image, label, params, (20, 20))
    b = aug.apply(image, label, params, (20, 20))
    np.testing.assert_array_equal(a[0], b[0])
    flip_only = Augmentation(p_affine=0, p_flip=1.0, p_noise=0, p_intensity=0, p_gamma=0)
    out, lab = flip_only.apply(image, label, flip_only.draw(np.random.default_rng(0), 2), (20, 20))
    np.testing.assert_array_equal(out[0], image[0, ::-1, ::-1])
    np.testing.assert_array_equal(lab, label[::-1, ::-1])


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    data = MSDDataset(SAMPLES / "hippocampus")
    return PreprocessedCases(data, [ZScore(), Pad(min_shape=(40, 56, 40))],
                             cache_dir=tmp_path_factory.mktemp("cache")).build(data.case_ids[:4])


@pytest.mark.parametrize(("patch", "shape"), [((32, 48, 32), (3, 1, 32, 48, 32)), ((40, 56), (3, 1, 40, 56))])
def test_stream_batches_in_3d_and_2d_slices_from_3d(cases, patch, shape):
    stream = PatchStream(cases, cases.dataset.case_ids[:4], PatchSampler(patch_size=patch, slice_axis=2),
                         batch_size=3, augmentation=AUGMENTATIONS["3d"], num_classes=3)
    batch = next(iter(stream))
    assert tuple(batch["image"].shape) == shape
    assert tuple(batch["label"].shape) == shape[:1] + shape[2:]
    assert set(batch["label"].unique().tolist()) <= {0, 1, 2}


def test_cached_cases_equal_fresh_preprocessing_and_same_seed_same_patches(cases):
    case = cases.dataset.case_ids[0]
    fresh = Pad(min_shape=(40, 56, 40))(ZScore()(cases.dataset.load(case)))
    np.testing.assert_array_equal(np.asarray(cases.image(case)), fresh.image)
    np.testing.assert_array_equal(np.asarray(cases.label(case)), fresh.label)
    assert isinstance(cases.geometry(case), Geometry)
    draws = []
    for _ in range(2):
        stream = PatchStream(cases, cases.dataset.case_ids[:4], PatchSampler(patch_size=(24, 24, 24)),
                             batch_size=2, augmentation=AUGMENTATIONS["3d"], num_classes=3, seed=3)
        draws.append(next(iter(stream)))
    np.testing.assert_array_equal(draws[0]["image"].numpy(), draws[1]["image"].numpy())
