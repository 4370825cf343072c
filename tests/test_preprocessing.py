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
