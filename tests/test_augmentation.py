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


# nnU-Net's blur, contrast and low-resolution augmentations (off in every preset)

ONLY_OFF = dict(p_affine=0.0, p_flip=0.0, p_noise=0.0, p_intensity=0.0, p_gamma=0.0)


def test_presets_without_the_nnunet_intensity_draws_draw_what_they_drew_before() -> None:
    # recorded with medseg 25aafdc, before blur, contrast and low resolution existed: a resumed
    # run's patch stream must not change
    from medseg.sampling import AUGMENTATIONS

    rng = np.random.default_rng(7)
    draws = [AUGMENTATIONS["2d"].draw(rng, 2) for _ in range(3)]
    draws += [AUGMENTATIONS["3d"].draw(rng, 3, (1, 1, 4)) for _ in range(3)]
    assert draws[:3] == [{"flip": []}, {"flip": [0]}, {"flip": [0, 1]}]
    assert draws[3]["flip"] == [2] and draws[3]["noise_seed"] == 2083627519
    assert draws[3]["rotate"] == pytest.approx([0.0, 0.0, 0.11785119800735194], abs=1e-15)
    assert draws[4]["gamma"] == pytest.approx(1.3640381838413964, abs=1e-15)
    assert draws[5] == {"flip": [0, 1]}
    assert rng.random() == pytest.approx(0.09149560506304566, abs=1e-15)


def test_contrast_stretches_about_the_mean_within_the_former_range() -> None:
    image = np.array([[[0.0, 1.0], [2.0, 5.0]], [[1.0, 1.0], [3.0, 3.0]]], np.float32)
    out, _ = Augmentation(**ONLY_OFF).apply(image, np.zeros((2, 2), np.int8), {"flip": [], "contrast": 1.25}, (2, 2))
    # channel 0: mean 2 -> -0.5, 0.75, 2, 5.75, clipped to [0, 5]; channel 1: mean 2 -> 0.75, 3.25 clipped to [1, 3]
    np.testing.assert_allclose(out, [[[0.0, 0.75], [2.0, 5.0]], [[1.0, 1.0], [3.0, 3.0]]], atol=1e-6)


def test_blur_is_scipys_gaussian_on_the_chosen_channels_and_none_along_a_thick_axis() -> None:
    from scipy import ndimage

    aug = Augmentation(**ONLY_OFF, p_blur=1.0)
    image = np.random.default_rng(0).normal(size=(3, 12, 10, 6)).astype(np.float32)
    label = np.zeros((12, 10, 6), np.int8)
    params = aug.draw(np.random.default_rng(1), 3, (0.6, 0.6, 3.6))
    assert 0.5 <= params["blur"] <= 1.0 and params["in_plane_of"] == 2
    out, _ = aug.apply(image, label, params, (12, 10, 6))
    changed = [c for c in range(3) if not np.array_equal(out[c], image[c])]
    assert changed  # at least one channel
    for c in range(3):
        expected = ndimage.gaussian_filter(image[c], (params["blur"], params["blur"], 0.0), mode="nearest") if c in changed else image[c]
        np.testing.assert_allclose(out[c], expected, atol=1e-6)
        # no blur across slices: each slice is the 2D blur of itself
        if c in changed:
            np.testing.assert_allclose(out[c][..., 3], ndimage.gaussian_filter(image[c][..., 3], params["blur"], mode="nearest"), atol=1e-6)


def test_low_resolution_is_nearest_down_and_linear_up() -> None:
    from scipy import ndimage

    aug = Augmentation(**ONLY_OFF, p_lowres=1.0)
    image = np.random.default_rng(0).normal(size=(1, 16, 12)).astype(np.float32)
    params = {"flip": [], "lowres": 0.5, "lowres_channels": 0}
    out, _ = aug.apply(image, np.zeros((16, 12), np.int8), params, (16, 12))
    # halving picks the second pixel of every 2x2 block (nearest-exact: source centre 2i + 1);
    # scipy's linear zoom on the pixel grid (grid_mode) undoes it as torch's bilinear does
    small = image[0, 1::2, 1::2]
    expected = ndimage.zoom(small, 2, order=1, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    assert not np.allclose(out[0], image[0])


def test_a_settings_mapping_turns_on_nnunets_intensity_augmentations() -> None:
    from medseg.sampling import create_augmentation

    aug = create_augmentation({"preset": "2d", "p_blur": 0.2, "p_contrast": 0.15, "p_lowres": 0.25, "lowres_zoom": [0.5, 1]})
    assert (aug.rotation, aug.p_blur, aug.p_contrast, aug.p_lowres, aug.lowres_zoom) == (180.0, 0.2, 0.15, 0.25, (0.5, 1.0))
    rng = np.random.default_rng(0)
    draws = [aug.draw(rng, 2) for _ in range(2000)]
    for key, p in (("blur", 0.2), ("contrast", 0.15), ("lowres", 0.25)):
        share = np.mean([key in d for d in draws])
        assert abs(share - p) < 0.03, (key, share)
