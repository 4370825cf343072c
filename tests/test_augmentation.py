"""Tests of the augmentation draws and the source block a rotated patch is sampled from."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.sampling import PatchSampler, PatchStream
from medseg.sampling.augmentation import Augmentation

AFFINE_ONLY = Augmentation(p_affine=1.0, p_flip=0.0, p_noise=0.0, p_intensity=0.0, p_gamma=0.0)


class _Constant:
    """Preprocessed cases of ones (image and label) of one shape, foreground everywhere."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def image(self, case: str) -> np.ndarray:
        return np.ones((1, *self.shape), np.float32)

    def label(self, case: str) -> np.ndarray:
        return np.ones(self.shape, np.int8)

    def foreground(self, case: str) -> dict[int, np.ndarray]:
        return {1: np.argwhere(np.ones(self.shape, bool))[::97]}


def test_source_size_is_the_rotated_bounding_box() -> None:
    # 45 degrees, 11 x 11: voxel centres reach 5 * sqrt(2) = 7.07 from the centre -> 2 * 7.07 + 1 -> 16
    assert AFFINE_ONLY.source_size({"rotate": [math.pi / 4], "scale": [1.0, 1.0]}, (11, 11)) == (16, 16)
    # 90 degrees swaps the axes exactly; no draw needs no margin
    assert AFFINE_ONLY.source_size({"rotate": [math.pi / 2], "scale": [1.0, 1.0]}, (10, 20)) == (20, 10)
    assert AFFINE_ONLY.source_size({"flip": []}, (10, 20)) == (10, 20)
    # scale 1.25 about the thick axis 2 only: 8 slices stay 8
    params = {"rotate": [0.0, 0.0, math.pi / 6], "scale": [1.25, 1.25, 1.0]}
    # axis 0: 2 * 1.25 * (9.5 cos30 + 11.5 sin30) = 34.94 -> 35 + 1; axis 1: 2 * 1.25 * (9.5 sin30
    # + 11.5 cos30) = 36.77 -> 37 + 1
    assert AFFINE_ONLY.source_size(params, (20, 24, 8)) == (36, 38, 8)


def test_a_90_degree_rotation_of_its_source_block_is_rot90() -> None:
    image = np.arange(200, dtype=np.float32).reshape(1, 20, 10)
    params = {"rotate": [math.pi / 2], "scale": [1.0, 1.0], "flip": []}
    out, label = AFFINE_ONLY.apply(image, image[0].astype(np.int64), params, (10, 20))
    np.testing.assert_allclose(out[0], np.rot90(image[0], -1), atol=1e-3)
    np.testing.assert_array_equal(label, np.rot90(image[0], -1).astype(np.int64))


@pytest.mark.parametrize(("size", "params"), [
    ((20, 24), {"rotate": [0.4], "scale": [1.2, 1.2]}),
    ((9, 20, 24), {"rotate": [0.3, -0.4, 0.5], "scale": [1.25] * 3}),
    ((8, 20, 24), {"rotate": [0.5236, 0.0, 0.0], "scale": [1.0, 1.25, 1.25]}),
])
def test_the_source_block_holds_every_sample_and_no_more(size, params) -> None:
    params = {**params, "flip": []}
    block = AFFINE_ONLY.source_size(params, size)
    out, label = AFFINE_ONLY.apply(np.ones((1, *block), np.float32), np.ones(block, np.int64), params, size)
    assert out.min() > 0.9999 and label.min() == 1
    for axis in range(len(size)):  # one voxel less on any axis and the patch reaches outside
        smaller = list(block)
        smaller[axis] -= 1
        out, _ = AFFINE_ONLY.apply(np.ones((1, *smaller), np.float32), np.ones(smaller, np.int64), params, size)
        assert out.min() < 0.99


@pytest.mark.parametrize("foreground_ratio", [0.0, 1.0])
def test_rotated_patches_inside_a_larger_case_have_no_padding(foreground_ratio: float) -> None:
    """Before: a ceil(16 * 1.77) = 29 block centred on the patch ran out of a 64^3 case near its
    faces, and its zeros were labelled background."""
    stream = PatchStream(_Constant((64, 64, 64)), ["a"], PatchSampler(patch_size=(16, 16, 16),
                         foreground_ratio=foreground_ratio), batch_size=1, augmentation=AFFINE_ONLY)
    rng = np.random.default_rng(0)
    for _ in range(40):
        patch = stream.patch("a", rng)
        assert patch["image"].shape == (1, 16, 16, 16)
        assert int((patch["image"] == 0).sum()) == 0 and patch["image"].min() > 0.9999
        assert patch["label"].min() == 1


def test_anisotropic_draws_rotate_about_the_thick_axis_only() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        params = AFFINE_ONLY.draw(rng, 3, spacing=(0.6, 0.6, 3.6))
        assert params["rotate"][:2] == [0.0, 0.0] and params["rotate"][2] != 0.0
        assert abs(params["rotate"][2]) <= math.radians(AFFINE_ONLY.rotation)
        assert params["scale"][2] == 1.0 and params["scale"][0] == params["scale"][1]
    thick_first = AFFINE_ONLY.draw(np.random.default_rng(1), 3, spacing=(3.6, 0.6, 0.6))
    assert thick_first["rotate"][1:] == [0.0, 0.0] and thick_first["scale"][0] == 1.0
    # ratio 3 is not anisotropic (resample's ANISOTROPY): three angles, one scale
    iso = AFFINE_ONLY.draw(np.random.default_rng(2), 3, spacing=(1.0, 1.0, 3.0))
    assert all(a != 0.0 for a in iso["rotate"]) and len(set(iso["scale"])) == 1


def test_an_anisotropic_draw_keeps_every_slice_on_itself() -> None:
    """Slice k (across the thick axis) holds the value k: after an in-plane rotation and
    scaling, output slice k still holds k everywhere (no slice is mixed with another)."""
    size = (24, 24, 6)
    params = {**AFFINE_ONLY.draw(np.random.default_rng(3), 3, spacing=(0.6, 0.6, 3.6)), "flip": []}
    block = AFFINE_ONLY.source_size(params, size)
    assert block[2] == 6
    image = np.broadcast_to(np.arange(6, dtype=np.float32), (1, *block)).copy()
    out, _ = AFFINE_ONLY.apply(image, np.zeros(block, np.int64), params, size)
    np.testing.assert_allclose(out[0], np.broadcast_to(np.arange(6, dtype=np.float32), size), atol=1e-4)


def test_a_stream_on_thick_slices_draws_in_plane() -> None:
    stream = PatchStream(_Constant((40, 40, 8)), ["a"], PatchSampler(patch_size=(16, 16, 4)), batch_size=1,
                         augmentation=AFFINE_ONLY, spacing=(0.6, 0.6, 3.6))
    rng = np.random.default_rng(0)
    for _ in range(10):
        patch = stream.patch("a", rng)
        assert patch["image"].shape == (1, 16, 16, 4) and patch["image"].min() > 0.9999


def test_a_settings_mapping_changes_fields_of_a_preset():
    from medseg.sampling import Augmentation, create_augmentation

    assert create_augmentation({"preset": "3d", "p_flip": 0, "scale": [0.9, 1.1]}) == Augmentation(p_flip=0.0, scale=(0.9, 1.1))
    assert create_augmentation({"p_gamma": 0.5}) == Augmentation(p_gamma=0.5)  # the 3d preset by default
    none = create_augmentation({"preset": "none", "p_flip": 0.5})
    assert none.p_flip == 0.5 and none.p_affine == 0.0 and none.p_noise == 0.0
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['p_flips'\]"):
        create_augmentation({"p_flips": 0.0})
