"""Preprocessing steps: values by hand, and preprocess -> invert returns the original grid."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.io import Geometry, Sample
from medseg.preprocessing import (
    CropForeground,
    CTNormalize,
    Fingerprint,
    Pad,
    Resample,
    ZScore,
    create_step,
    invert,
    invert_labels,
    preprocess,
)


def _onehot(label: np.ndarray, k: int) -> np.ndarray:
    return np.stack([label == c for c in range(k)]).astype(np.float32)


def _ellipsoid(shape, center, radii):
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1).astype(np.int8)


def test_resampled_geometry_places_voxel_centres_by_hand():
    geometry = Geometry(np.diag([2.0, 2.0, 2.0, 1.0]), (8, 8, 8))
    sample = Sample("a", np.zeros((1, 8, 8, 8), np.float32), geometry)
    out = Resample(spacing=(1.0, 1.0, 4.0))(sample)
    assert out.spatial_shape == (16, 16, 4)
    # the new voxel 0 centre lies a quarter of an old voxel before the old centre 0 (in x/y)
    np.testing.assert_allclose(out.geometry.affine[:3, 3], [-0.5, -0.5, 1.0])
    np.testing.assert_allclose(out.geometry.spacing, (1.0, 1.0, 4.0))


def test_resample_keeps_slices_along_the_thick_axis_and_inverts_to_the_original_shape():
    rng = np.random.default_rng(0)
    image = rng.random((1, 10, 12, 4)).astype(np.float32)
    sample = Sample("a", image, Geometry.from_spacing((10, 12, 4), (1.0, 1.0, 5.0)))
    out = Resample(spacing=(1.0, 1.0, 2.5))(sample)  # anisotropic: z by nearest neighbour
    assert out.spatial_shape == (10, 12, 8)
    np.testing.assert_allclose(out.image[0, :, :, 0], image[0, :, :, 0], atol=1e-5)
    np.testing.assert_allclose(out.image[0, :, :, 1], image[0, :, :, 0], atol=1e-5)
    back = invert(out.image, out)
    assert back.shape == image.shape


def test_zscore_and_ct_normalisation_by_hand():
    image = np.array([[[[0.0, 2.0], [4.0, 6.0]]]], dtype=np.float32)
    sample = Sample("a", image, Geometry.from_spacing((1, 2, 2)))
    out = ZScore()(sample).image
    np.testing.assert_allclose(out.ravel(), (np.array([0, 2, 4, 6]) - 3) / np.sqrt(5), rtol=1e-6)
    fingerprint = Fingerprint(spacings=((1, 1, 1),), shapes=((1, 2, 2),),
                              intensity=({"mean": 2.0, "std": 2.0, "p00_5": 1.0, "p99_5": 5.0},))
    ct = CTNormalize().fit(fingerprint)(sample).image
    np.testing.assert_allclose(ct.ravel(), [(1 - 2) / 2, 0.0, 1.0, (5 - 2) / 2])
    with pytest.raises(RuntimeError, match="must be fitted"):
        CTNormalize()(sample)


def test_crop_and_pad_invert_exactly():
    image = np.zeros((1, 10, 9, 8), np.float32)
    image[0, 2:6, 3:5, 1:7] = 1.0
    sample = Sample("a", image, Geometry.from_spacing((10, 9, 8)))
    cropped = CropForeground()(sample)
    assert cropped.spatial_shape == (4, 2, 6)
    np.testing.assert_allclose(cropped.geometry.affine[:3, 3], [2, 3, 1])
    padded = Pad(min_shape=(6, 5, 6))(cropped)
    assert padded.spatial_shape == (6, 5, 6)
    probabilities = _onehot(padded.image[0].astype(int), 2)
    back = invert(probabilities, padded)
    np.testing.assert_array_equal(back.argmax(0), image[0])
    assert back[0][image[0] == 0].min() == 1.0  # outside the crop: background


def test_full_chain_round_trip_on_an_oblique_anisotropic_grid(oblique_affine):
    shape = (40, 30, 12)
    label = _ellipsoid(shape, (20, 15, 6), (12, 9, 4))
    image = (label * 100 + np.random.default_rng(1).normal(50, 5, shape)).astype(np.float32)[None]
    sample = Sample("a", image, Geometry(oblique_affine, shape), label)
    steps = [CropForeground(), Resample(spacing=(1.0, 1.0, 1.5)), ZScore(), Pad(min_shape=(32, 48, 32))]
    out = preprocess(sample, steps)
    assert out.spatial_shape[1] == 48 and out.spatial_shape[2] >= 24
    # the preprocessed grid still maps its centre to the same world point, within a voxel
    world = lambda g, idx: g.affine @ np.append(idx, 1.0)  # noqa: E731
    centre_in = world(sample.geometry, np.array(shape) / 2 - 0.5)
    centre_out = world(out.geometry, np.array(out.spatial_shape) / 2 - 0.5)
    assert np.linalg.norm(centre_in - centre_out) < 3.0
    back = invert(_onehot(out.label, 2), out)
    assert back.shape == (2, *shape)
    recovered = back.argmax(0)
    dice = 2 * np.sum(recovered * label) / (recovered.sum() + label.sum())
    assert dice > 0.97


def test_step_configs_round_trip_and_errors():
    for step in (Resample(spacing=(1.0, 2.0)), Pad(min_shape=(4, 4)), ZScore(nonzero=True), CropForeground()):
        assert create_step(**step.config()).config() == step.config()
    with pytest.raises(ValueError, match=r"Unknown preprocessing step 'zscroe'.*Did you mean 'zscore'"):
        create_step("zscroe")
    with pytest.raises(ValueError, match="spacings must be positive"):
        Resample(spacing=(1.0, -1.0))
    fitted = Resample(spacing="median").fit(Fingerprint(spacings=((1, 1, 3), (1, 1, 5), (2, 2, 4)), shapes=()))
    assert fitted.spacing == (1.0, 1.0, 4.0)


def _chain_case(shape, spacing, target, pad, seed=0, crop_first=True):
    """A case with a zero border (cropped), resampled to ``target`` and padded to ``pad``."""
    rng = np.random.default_rng(seed)
    image = np.zeros((1, *shape), np.float32)
    inner = tuple(slice(2, s - 3) for s in shape)
    image[(0, *inner)] = rng.random(image[(0, *inner)].shape) + 0.5
    sample = Sample("a", image, Geometry.from_spacing(shape, spacing))
    crop, resample, zscore, padding = CropForeground(), Resample(spacing=target), ZScore(), Pad(min_shape=pad)
    keep = Resample(spacing=None)  # no change, but not voxel-moving: the crop after it is undone per channel
    return preprocess(sample, [crop, zscore, resample, padding] if crop_first else [keep, crop, resample, padding])


@pytest.mark.parametrize(
    ("shape", "spacing", "target", "pad", "lowres"),
    [
        ((23, 19), (0.8, 1.1), (1.3, 1.5), (20, 16), None),  # 2D
        ((21, 18, 17), (0.7, 0.9, 1.0), (1.2, 1.4, 1.6), (14, 14, 14), None),  # 3D
        ((20, 22, 9), (0.8, 0.8, 4.0), (1.5, 1.5, 3.0), (12, 12, 14), 2),  # thick slices: lowres axis
    ],
)
@pytest.mark.parametrize("k", [1, 3, 14])
@pytest.mark.parametrize("crop_first", [True, False])  # crop undone on the label map / on each channel
def test_invert_labels_equals_argmax_of_the_full_inversion(shape, spacing, target, pad, lowres, k, crop_first):
    prepared = _chain_case(shape, spacing, target, pad, crop_first=crop_first)
    names = ["crop_foreground", "resample", "pad"]
    assert [s.name for s, _ in prepared.history] == names if crop_first else ["resample", *names]
    assert prepared.history[-2][1].lowres_axis == lowres
    assert all(r is not None for _, r in prepared.history[-3:])  # crop, resample and pad changed the grid
    rng = np.random.default_rng(k)
    logits = rng.normal(0, 2, (k, *prepared.spatial_shape)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(0)
    probabilities[:, 0] = probabilities[:, 1] if k > 1 else probabilities[:, 0]  # exact ties: first class wins
    before = probabilities.copy()
    expected = invert(probabilities, prepared).argmax(0)
    labels = invert_labels(probabilities, prepared)
    assert labels.shape == shape and labels.dtype == np.int16
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(probabilities, before)  # the input is left alone
    if k > 1:
        assert len(np.unique(labels)) == k  # every class occurs, so the comparison means something


def test_invert_labels_thresholds_regions_with_nothing_outside_the_crop():
    prepared = _chain_case((21, 18, 17), (0.7, 0.9, 1.0), (1.2, 1.4, 1.6), (14, 14, 14))
    assert [s.moves_voxels_only for s, _ in prepared.history] == [True, False, True]
    assert ZScore().moves_voxels_only  # no inverse at all: undone on the masks too
    probabilities = np.random.default_rng(3).random((3, *prepared.spatial_shape)).astype(np.float32)
    masks = invert_labels(probabilities, prepared, reduce="threshold", threshold=0.4)
    assert masks.shape == (3, 21, 18, 17) and masks.dtype == bool
    full = invert(probabilities, prepared)
    inside = (slice(None), *(slice(2, s - 3) for s in (21, 18, 17)))
    np.testing.assert_array_equal(masks[inside], full[inside] > 0.4)
    outside = np.ones((21, 18, 17), bool)
    outside[inside[1:]] = False
    assert not masks[:, outside].any()  # regions are sigmoid outputs: none outside the body
    assert (full[0][outside] == 1.0).all()  # whereas the softmax inverse fills background there
    with pytest.raises(ValueError, match="Unknown reduce 'argmx'.*Did you mean 'argmax'"):
        invert_labels(probabilities, prepared, reduce="argmx")
    with pytest.raises(ValueError, match=r"must be \(K, \*spatial\)"):
        invert_labels(probabilities[0], prepared)


def test_pad_fills_the_label_with_the_ignore_index_and_inverts_as_before():
    from medseg.io.labels import IGNORE_INDEX

    label = np.array([[1, 0, 2], [0, 1, 1]], np.uint8)  # a uint8 map: the fill needs a signed type
    sample = Sample("a", np.ones((1, 2, 3), np.float32), Geometry.from_spacing((2, 3)), label)
    padded = Pad(min_shape=(4, 5), label_fill=IGNORE_INDEX)(sample)
    expected = np.full((4, 5), IGNORE_INDEX)
    expected[1:3, 1:4] = label
    np.testing.assert_array_equal(padded.label, expected)
    np.testing.assert_array_equal(Pad(min_shape=(4, 5))(sample).label, np.where(expected < 0, 0, expected))
    assert create_step(**Pad(min_shape=(4, 5), label_fill=IGNORE_INDEX).config()).label_fill == IGNORE_INDEX
    assert Pad(min_shape=(4, 5)).config() == {"name": "pad", "min_shape": [4, 5]}  # cache keys of 0 unchanged
    probabilities = _onehot(np.clip(padded.label, 0, None), 3)
    np.testing.assert_array_equal(invert(probabilities, padded).argmax(0), label)
    np.testing.assert_array_equal(invert(probabilities, padded), invert(probabilities, Pad(min_shape=(4, 5))(sample)))


@pytest.mark.parametrize("lowres_axis", [None, 2])
def test_resize_label_of_many_values_equals_argmax_of_all_one_hot_channels(lowres_axis):
    """An instance label (one value per object) takes the memory-light path; it must give what
    the argmax over every resized one-hot channel gives (nnU-Net's label resampling)."""
    from scipy import ndimage

    from medseg.preprocessing.resample import resize, resize_label

    label = ndimage.median_filter(np.random.default_rng(0).integers(0, 30, (20, 24, 10)), 3).astype(np.int32)
    values = np.unique(label)
    assert len(values) > 8  # the running-argmax path
    onehot = np.stack([label == v for v in values]).astype(np.float32)
    expected = values[np.argmax(resize(onehot, (31, 17, 14), order=1, lowres_axis=lowres_axis), axis=0)]
    got = resize_label(label, (31, 17, 14), lowres_axis)
    assert got.dtype == label.dtype and np.array_equal(got, expected)
