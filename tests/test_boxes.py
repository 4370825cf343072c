"""Boxes of instance maps, mask targets in boxes and masks pasted back into a map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.instances.boxes import boxes_from_instances, masks_in_boxes, paste_masks


def test_boxes_by_hand_2d():
    image = np.zeros((8, 10), dtype=np.int32)
    image[2:6, 3] = 7  # an L: rows 2..5 of column 3 ...
    image[5, 3:7] = 7  # ... and columns 3..6 of row 5
    image[0, 8:10] = 2  # touches the top and right borders
    image[7, 0] = -1  # ignored: no box
    ids, boxes = boxes_from_instances(image)
    assert ids.tolist() == [2, 7]
    assert boxes.dtype == np.float32
    assert boxes.tolist() == [[0, 8, 1, 10], [2, 3, 6, 7]]


def test_boxes_3d_and_empty():
    volume = np.zeros((5, 6, 7), dtype=np.int64)
    volume[1:3, 0:6, 4] = 3
    volume[4, 5, 6] = 1
    ids, boxes = boxes_from_instances(volume)
    assert ids.tolist() == [1, 3]
    assert boxes.tolist() == [[4, 5, 6, 5, 6, 7], [1, 0, 4, 3, 6, 5]]
    ids, boxes = boxes_from_instances(np.zeros((4, 4), dtype=np.uint8))
    assert ids.shape == (0,) and boxes.shape == (0, 4)
    with pytest.raises(ValueError, match="integer"):
        boxes_from_instances(np.full((3, 3), 0.5))


def test_paste_full_mask_paints_exactly_the_box():
    image, classes, scores = paste_masks(np.array([[2.0, 3, 6, 8]]), np.ones((1, 28, 28)), [1], [0.9], (10, 12))
    expected = np.zeros((10, 12), dtype=np.int32)
    expected[2:6, 3:8] = 1
    np.testing.assert_array_equal(image, expected)
    assert classes == {1: 1} and scores == {1: pytest.approx(0.9)}
    # a box partly outside and fractional: voxels whose centre lies inside [-2.3, 1.6) x [9.4, 14)
    image, _, _ = paste_masks(np.array([[-2.3, 9.4, 1.6, 14.0]]), np.ones((1, 5, 5)), [2], [0.5], (10, 12))
    expected = np.zeros((10, 12), dtype=np.int32)
    expected[0:2, 9:12] = 1
    np.testing.assert_array_equal(image, expected)


def test_paste_linear_interpolation_and_threshold():
    # a 2-cell mask [0, 1] along axis 1 on a 4-voxel box: cell centres at 1 and 3 voxels into the
    # box; voxel centres 0.5, 1.5, 2.5, 3.5 -> 0, 0.25, 0.75, 1 (held at the edges)
    mask = np.array([[[0.0, 1.0]]])
    image, _, _ = paste_masks(np.array([[0.0, 0, 1, 4]]), mask, [1], [1.0], (1, 4))
    assert image.tolist() == [[0, 0, 1, 1]]
    image, _, _ = paste_masks(np.array([[0.0, 0, 1, 4]]), mask, [1], [1.0], (1, 4), mask_threshold=0.2)
    assert image.tolist() == [[0, 1, 1, 1]]


def test_paste_overlap_resolved_by_score():
    boxes = np.array([[0.0, 0, 4, 4], [2.0, 2, 6, 6], [2.5, 2.5, 3.5, 3.5]])
    masks = np.ones((3, 7, 7))
    image, classes, scores = paste_masks(boxes, masks, [1, 2, 1], [0.3, 0.8, 0.1], (7, 7))
    # ids in descending score order: the 0.8 box is 1 and wins the overlap; the 0.1 box lies under it
    assert classes == {1: 2, 2: 1} and scores == {1: pytest.approx(0.8), 2: pytest.approx(0.3)}
    assert (image[2:6, 2:6] == 1).all()
    assert (image[0:4, 0:4][image[0:4, 0:4] != 1] == 2).all()
    assert (image == 2).sum() == 16 - 4
    empty, classes, _ = paste_masks(np.zeros((0, 4)), np.zeros((0, 5, 5)), [], [], (3, 3))
    assert not empty.any() and classes == {}


def test_masks_in_boxes_by_hand():
    image = np.zeros((6, 6), dtype=np.int32)
    image[1:3, 1:5] = 4
    # the instance's own box, 2 x 4 bins of one voxel: samples a quarter voxel from each bin's
    # centre; at the mask's edge one of them interpolates 1/4 of the outside 0 -> 7/8 per axis
    targets = masks_in_boxes(image, np.array([[1.0, 1, 3, 5]]), (2, 4))
    edge = [0.875 * 0.875, 0.875, 0.875, 0.875 * 0.875]
    np.testing.assert_allclose(targets, [[edge, edge]], atol=1e-6)
    # a box twice as wide on axis 1: bins on voxels 1..4 are inside, 5..8 outside
    wide = masks_in_boxes(image, np.array([[1.0, 1, 3, 9]]), (1, 2), ids=[4])
    np.testing.assert_allclose(wide[0], [[1.0, 0.0]], atol=1e-6)
    binary = masks_in_boxes(torch.tensor(image[None] == 4), torch.tensor([[1.0, 1, 3, 9]]), (1, 2))
    assert isinstance(binary, torch.Tensor) and torch.allclose(binary, torch.tensor(wide))


def _blobs(shape, centres, radii):
    grid = np.indices(shape).astype(float)
    image = np.zeros(shape, dtype=np.int32)
    for n, (centre, radius) in enumerate(zip(centres, radii), start=1):
        distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius))
        image[distance <= 1] = n
    return image


@pytest.mark.parametrize(
    ("shape", "centres", "radii", "size"),
    [
        ((64, 48), [(12, 10), (30, 30), (55, 40), (40, 8)], [(8, 6), (10, 14), (9, 9), (4, 12)], 28),
        ((32, 28, 24), [(8, 8, 8), (20, 18, 14), (28, 4, 20)], [(6, 5, 4), (8, 7, 6), (6, 6, 5)], 28),
    ],
)
def test_round_trip(shape, centres, radii, size):
    image = _blobs(shape, centres, radii)
    ids, boxes = boxes_from_instances(image)
    assert ids.tolist() == list(range(1, len(centres) + 1))  # every blob present, some at the border
    targets = masks_in_boxes(image, boxes, size)
    assert targets.shape == (len(ids), *(size,) * len(shape))
    scores = np.linspace(0.9, 0.5, len(ids))  # ids stay in order
    pasted, classes, _ = paste_masks(boxes, targets, np.ones(len(ids), int), scores, shape)
    assert sorted(classes) == ids.tolist()
    for n in ids:
        a, b = image == n, pasted == n
        assert (a & b).sum() / (a | b).sum() > 0.95, n
