"""Border-core instances (medseg.instances.bordercore): labels by hand, widths in mm, round trips."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medseg.instances.bordercore import bordercore_spec, from_bordercore, to_bordercore
from medseg.instances.encoding import decode, encode
from medseg.io.labels import IGNORE_INDEX, LabelSpec

TWO_SQUARES = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 1, 1, 1, 1, 2, 2, 2, 2, 0],
    [0, 1, 1, 1, 1, 2, 2, 2, 2, 0],
    [0, 1, 1, 1, 1, 2, 2, 2, 2, 0],
    [0, 1, 1, 1, 1, 2, 2, 2, 2, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
])


# -- helpers ------------------------------------------------------------------------------------
def _touching_blobs(shape, spacing, centres, radius_mm):
    """Instance map: each voxel within ``radius_mm`` of a centre goes to the nearest centre, so
    blobs closer than two radii touch along a flat face (ids 1..N)."""
    grid = np.stack(np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij"), -1)
    distances = np.stack([np.linalg.norm(grid - np.asarray(c, float), axis=-1) for c in centres])
    out = np.argmin(distances, axis=0) + 1
    out[distances.min(axis=0) > radius_mm] = 0
    return out


def _matched_ious(reference, result):
    """IoU of each reference instance with the result instance overlapping it most."""
    out = []
    for value in np.unique(reference[reference > 0]):
        mask = reference == value
        best = np.bincount(result[mask][result[mask] > 0]).argmax() if (result[mask] > 0).any() else 0
        other = result == best
        out.append((mask & other).sum() / (mask | other).sum() if best else 0.0)
    return np.asarray(out)


def _cores_touch(encoded, labels, num_classes):
    """Whether core voxels of two different instances are neighbours (full neighbourhood)."""
    cores = np.where((labels > 0) & (labels < num_classes), encoded, 0)
    for offset in itertools.product((-1, 0, 1), repeat=cores.ndim):
        if any(offset):
            a = tuple(slice(max(-o, 0), n - max(o, 0)) for o, n in zip(offset, cores.shape))
            b = tuple(slice(max(o, 0), n - max(-o, 0)) for o, n in zip(offset, cores.shape))
            if np.any((cores[a] > 0) & (cores[b] > 0) & (cores[a] != cores[b])):
                return True
    return False


def _reference_border(encoded, spacing, border_mm):
    """Border by brute force: per instance, a distance transform on the whole map, plus the
    voxels touching another instance."""
    border = np.zeros(encoded.shape, bool)
    full = np.ones((3,) * encoded.ndim, bool)
    for value in np.unique(encoded[encoded > 0]):
        mask = encoded == value
        border |= mask & (ndimage.distance_transform_edt(mask, sampling=spacing) <= border_mm + 1e-9)
        border |= mask & ndimage.binary_dilation((encoded > 0) & ~mask, structure=full)
    return border


# -- to_bordercore ------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes, second, core2", [(2, 2, 1), (3, 4, 2)])
def test_two_touching_squares_by_hand(num_classes, second, core2):
    encoded = np.where(TWO_SQUARES == 2, second, TWO_SQUARES)   # K = 3: instance 2 has class 2
    b = num_classes
    expected = np.array([
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, b, b, b, b, b, b, b, b, 0],
        [0, b, 1, 1, b, b, core2, core2, b, 0],
        [0, b, 1, 1, b, b, core2, core2, b, 0],
        [0, b, b, b, b, b, b, b, b, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ])
    labels = to_bordercore(encoded, num_classes, (1.0, 1.0))
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(from_bordercore(labels, num_classes, (1.0, 1.0)), encoded)


def test_border_width_in_mm_on_an_anisotropic_grid():
    encoded = np.zeros((14, 14, 14), np.int32)
    encoded[2:12, 2:12, 2:12] = 1                                 # a 10-voxel cube, 10 x 10 x 30 mm
    # 2.5 mm: voxels 1 and 2 mm from the outside along axes 0 and 1; 3 mm > 2.5 along axis 2
    labels = to_bordercore(encoded, 2, (1.0, 1.0, 3.0), border_mm=2.5)
    core = np.zeros_like(encoded)
    core[4:10, 4:10, 2:12] = 1
    np.testing.assert_array_equal(labels == 1, core == 1)
    assert ((labels == 1).sum(), (labels == 2).sum()) == (6 * 6 * 10, 1000 - 360)
    # default (largest spacing, 3 mm): three voxels along axes 0 and 1, one along axis 2
    labels = to_bordercore(encoded, 2, (1.0, 1.0, 3.0))
    assert ((labels == 1).sum(), (labels == 2).sum()) == (4 * 4 * 8, 1000 - 128)
    assert labels[5:9, 5:9, 3:11].min() == 1


@pytest.mark.parametrize("spacing, border_mm", [((1.0, 1.0, 1.0), None), ((1.0, 1.0, 3.0), None),
                                                ((1.0, 1.0, 3.0), 2.5), ((1.0, 1.0, 1.0), 3.0)])
def test_border_matches_a_distance_transform_per_instance(spacing, border_mm):
    # 3.0 mm on a 1 mm grid takes the per-instance-box path, the others the neighbour shifts
    rng = np.random.default_rng(0)
    instances = _touching_blobs((24, 24, 12), spacing, rng.uniform(0, 24, (8, 3)) * (1, 1, 0.5 * spacing[2]), 7.0)
    encoded = encode(instances, None, 2)
    encoded[0, :3, :3] = IGNORE_INDEX
    labels = to_bordercore(encoded, 2, spacing, border_mm)
    reference = _reference_border(encoded, spacing, border_mm or max(spacing))
    np.testing.assert_array_equal(labels == 2, reference)
    np.testing.assert_array_equal(labels == IGNORE_INDEX, encoded == IGNORE_INDEX)
    assert not _cores_touch(encoded, labels, 2)


def test_wide_border_with_sparse_ids_and_no_background():
    encoded = np.full((14, 12), 7, np.int64)
    encoded[:9, :8] = 10**9                                        # sparse ids, no background
    labels = to_bordercore(encoded, 2, (1.0, 1.0), border_mm=5.0)   # the per-instance-box path
    np.testing.assert_array_equal(labels == 2, _reference_border(encoded, (1.0, 1.0), 5.0))
    assert labels[0, 0] == 1 and labels[13, 11] == 1


def test_cores_never_touch_even_with_a_border_thinner_than_a_voxel():
    encoded = np.zeros((6, 6, 6), np.int32)
    encoded[1:5, 1:5, 1:3], encoded[1:5, 1:5, 3:5] = 1, 2        # touching along axis 2 (3 mm voxels)
    labels = to_bordercore(encoded, 2, (1.0, 1.0, 3.0), border_mm=1.0)
    # 1 mm < 3 mm: along axis 2 only the two layers in contact are border
    np.testing.assert_array_equal(labels[2:4, 2:4], np.broadcast_to([0, 1, 2, 2, 1, 0], (2, 2, 6)))
    assert (labels == 1).sum() == 8
    assert not _cores_touch(encoded, labels, 2)


# -- from_bordercore ----------------------------------------------------------------------------
def test_border_goes_to_the_nearest_core_in_mm():
    labels = np.array([[1, 0], [2, 0], [2, 1]])
    # (2, 0) is 2 voxels from the first core along axis 0 and 1 voxel from the second along axis 1
    np.testing.assert_array_equal(from_bordercore(labels, 2, (1.0, 3.0)), [[1, 0], [1, 0], [1, 2]])
    np.testing.assert_array_equal(from_bordercore(labels, 2, (3.0, 1.0)), [[1, 0], [1, 0], [2, 2]])


def test_unreached_border_stays_background_and_small_cores_drop():
    np.testing.assert_array_equal(from_bordercore(np.array([[1, 2, 0, 2, 2]]), 2, (1.0, 1.0)), [[1, 1, 0, 0, 0]])
    labels = np.array([[1, 2, 2, 1, 1, 1]])
    np.testing.assert_array_equal(from_bordercore(labels, 2, (1.0, 1.0)), [[1, 1, 2, 2, 2, 2]])
    # the one-voxel core joins the border, which grows from the three-voxel core
    np.testing.assert_array_equal(from_bordercore(labels, 2, (1.0, 1.0), min_voxels=2), [[1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(from_bordercore(labels, 2, (1.0, 1.0), min_voxels=4), 0)


def test_border_never_goes_to_a_core_across_background():
    # (0, 3) and (0, 4) lie nearer to the lower core, but only the upper one reaches them
    labels = np.array([[1, 2, 2, 2, 2], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(from_bordercore(labels, 2, (1.0, 1.0)),
                                  [[1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 2]])


def test_face_connectivity_keeps_cores_apart_across_a_diagonal_border():
    labels = np.array([[1, 1, 1, 2], [1, 1, 2, 1], [1, 2, 1, 1], [2, 1, 1, 1]])
    assert len(np.unique(from_bordercore(labels, 2, (1.0, 1.0)))) == 2              # two instances
    assert np.unique(from_bordercore(labels, 2, (1.0, 1.0), connectivity="full")).tolist() == [1]


# -- round trips --------------------------------------------------------------------------------
def _round_trip(encoded, num_classes, spacing):
    labels = to_bordercore(encoded, num_classes, spacing)
    assert not _cores_touch(encoded, labels, num_classes)
    return labels, from_bordercore(labels, num_classes, spacing)


def test_round_trip_touching_squares_at_the_image_border():
    instances = np.zeros((30, 30), np.int64)
    for n, (i, j) in enumerate(itertools.product(range(4), range(4))):
        instances[i * 7:(i + 1) * 7, j * 7:(j + 1) * 7] = n + 1       # a grid of touching squares
    instances[28:, :] = 17                                          # a strip along the image edge
    encoded = encode(instances, None, 2)
    _, back = _round_trip(encoded, 2, (1.0, 1.0))
    np.testing.assert_array_equal(back, encoded)


def test_round_trip_touching_discs_two_classes():
    rng = np.random.default_rng(3)
    centres = [(10, 10), (10, 24), (22, 14), (30, 30), (4, 36), (34, 6)]
    instances = _touching_blobs((40, 40), (1.0, 1.0), centres, 7.5)
    classes = {n: int(c) for n, c in zip(range(1, 7), rng.integers(1, 3, 6))}
    encoded = encode(instances, classes, 3)
    labels, back = _round_trip(encoded, 3, (1.0, 1.0))
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    ref_map, ref_classes = decode(encoded, 3)
    out_map, out_classes = decode(back, 3)
    ious = _matched_ious(ref_map, out_map)
    assert out_map.max() == 6 and ious.min() >= 0.98
    for n in range(1, 7):                                            # same class per instance
        best = np.bincount(out_map[ref_map == n]).argmax()
        assert out_classes[best] == ref_classes[n]


def test_round_trip_touching_spheres_anisotropic():
    spacing = (1.0, 1.0, 3.0)
    centres = [(10, 10, 12), (10, 25, 14), (24, 16, 20), (25, 30, 30)]
    instances = _touching_blobs((36, 40, 14), spacing, centres, 9.0)
    encoded = encode(instances, None, 2)
    _, back = _round_trip(encoded, 2, spacing)
    ious = _matched_ious(encoded, back)
    assert back.max() == 4 and ious.min() >= 0.98


def test_round_trip_real_nuclei_mask():
    """The DSB 2018 mask in data_samples/nuclei (125 nuclei, many touching): every nucleus but one
    (a 25-pixel sliver two pixels wide, all border) comes back, 119 of them exactly."""
    path = Path(__file__).parents[1] / "data_samples" / "nuclei" / "2d" / "labels" / "dsb2018.png"
    if not path.exists():
        pytest.skip(f"{path} is not in this checkout")
    encoded = encode(np.asarray(Image.open(path)).astype(np.int64), None, 2)
    labels, back = _round_trip(encoded, 2, (1.0, 1.0))
    ious = _matched_ious(encoded, back)
    assert len(ious) == 125 and (ious >= 0.5).sum() == 124 and (ious == 1).sum() >= 115
    assert back.max() == 125 and (labels == 2).sum() == (labels[encoded > 0] == 2).sum()


def test_empty_image_and_ignore():
    empty = np.zeros((5, 6, 7), np.int32)
    empty[0] = IGNORE_INDEX
    labels = to_bordercore(empty, 3, (1.0, 1.0, 2.0))
    np.testing.assert_array_equal(labels, empty)
    np.testing.assert_array_equal(from_bordercore(labels, 3, (1.0, 1.0, 2.0)), empty)
    encoded = np.where(TWO_SQUARES > 0, TWO_SQUARES, IGNORE_INDEX * (np.arange(10) == 9))
    back = from_bordercore(to_bordercore(encoded, 2, (1.0, 1.0)), 2, (1.0, 1.0))
    np.testing.assert_array_equal(back, encoded)


# -- spec and errors ----------------------------------------------------------------------------
def test_bordercore_spec():
    spec = bordercore_spec(LabelSpec((0, 1, 4), ("background", "nucleus", "cell"), ignore=9))
    assert spec.values == (0, 1, 2, 3) and spec.ignore == IGNORE_INDEX
    assert spec.names == ("background", "core nucleus", "core cell", "border")
    assert bordercore_spec(LabelSpec((0, 1))).ignore is None
    with pytest.raises(ValueError, match="regions"):
        bordercore_spec(LabelSpec((0, 1, 2), regions=((1, 2), (2,)), regions_class_order=(1, 2)))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="spacing"):
        to_bordercore(TWO_SQUARES, 2, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="border_mm"):
        to_bordercore(TWO_SQUARES, 2, (1.0, 1.0), border_mm=0)
    with pytest.raises(ValueError, match="integer"):
        to_bordercore(TWO_SQUARES.astype(float), 2, (1.0, 1.0))
    with pytest.raises(ValueError, match="num_classes"):
        to_bordercore(TWO_SQUARES, 1, (1.0, 1.0))
    with pytest.raises(ValueError, match=r"labels holds values \[5\]"):
        from_bordercore(np.array([[0, 5]]), 3, (1.0, 1.0))
    with pytest.raises(ValueError, match="connectivity"):
        from_bordercore(np.array([[0, 1]]), 2, (1.0, 1.0), connectivity="diagonal")
    with pytest.raises(ValueError, match="min_voxels"):
        from_bordercore(np.array([[0, 1]]), 2, (1.0, 1.0), min_voxels=-1)
