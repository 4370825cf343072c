"""Boxes of instances, mask targets cropped to boxes, and box masks pasted back into a map.

Conventions (the instance contract): arrays are in index order; voxel ``i`` spans ``[i, i + 1)``
on its axis; a box is ``[min_0, min_1, (min_2), max_0, max_1, (max_2)]`` (MONAI's StandardMode) in
that continuous space, so the box of a mask covering voxels ``a..b`` is ``[a, b + 1)``. A mask of
``m`` cells laid on a box divides it evenly: cell ``j`` covers ``[min + j w / m, min + (j + 1) w / m)``
with ``w`` the box's extent; a voxel belongs to a box when its centre ``i + 0.5`` lies inside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

__all__ = ["boxes_from_instances", "masks_in_boxes", "paste_masks"]


def boxes_from_instances(instance_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ids and boxes of the instances of a map (positive ids; 0 background, ``-1`` ignored).

    Args:
        instance_map: ``(*S)`` integer array, 2D or 3D (any positive ids).

    Returns:
        ``(ids (N,) int64 ascending, boxes (N, 2D) float32)``; a box is ``[a, b + 1)`` per axis for
        voxels ``a..b``.

    Example:
        >>> boxes_from_instances(np.array([[0, 5, 5], [0, 0, 5]]))
        (array([5]), array([[0., 1., 2., 3.]], dtype=float32))
    """
    values = _integer_map(instance_map, "instance_map")
    positive = values > 0
    ids = np.unique(values[positive]).astype(np.int64)
    relabelled = np.zeros(values.shape, dtype=np.int64)
    relabelled[positive] = np.searchsorted(ids, values[positive]) + 1
    slices = ndimage.find_objects(relabelled, max_label=len(ids))
    boxes = np.array(
        [[s.start for s in box] + [s.stop for s in box] for box in slices], dtype=np.float32
    ).reshape(len(ids), 2 * values.ndim)
    return ids, boxes


def paste_masks(
    boxes: np.ndarray,
    masks: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    shape: Sequence[int],
    mask_threshold: float = 0.5,
) -> tuple[np.ndarray, dict[int, int], dict[int, float]]:
    """Paint box masks into an instance map, the higher score winning overlaps.

    Each mask is resized (linear interpolation, edge values held up to the box's edges) onto the
    voxels whose centres lie in its box, thresholded (``>= mask_threshold``) and painted in
    ascending score order.

    Args:
        boxes: ``(N, 2D)`` boxes (StandardMode, continuous voxel coordinates).
        masks: ``(N, *m)`` probabilities of each box's mask over the box's extent.
        labels: ``(N,)`` class of each instance (1..K-1).
        scores: ``(N,)`` scores.
        shape: the map's spatial shape ``S``.
        mask_threshold: the probability from which a voxel belongs to the instance.

    Returns:
        ``(instance_map (*S) int32, {id: class}, {id: score})``: ids ``1..N'`` in descending score
        order; instances left with no voxel are dropped.
    """
    boxes, masks, labels, scores = (_numpy(a) for a in (boxes, masks, labels, scores))
    shape = tuple(int(s) for s in shape)
    dims = len(shape)
    if boxes.ndim != 2 or boxes.shape[1] != 2 * dims or masks.ndim != dims + 1 or \
            not len(boxes) == len(masks) == len(labels) == len(scores):
        raise ValueError(
            f"paste_masks needs boxes (N, {2 * dims}), masks (N, *m) with {dims} mask axes, labels (N,) "
            f"and scores (N,) for a {dims}D shape {shape}, got {boxes.shape}, {masks.shape}, "
            f"{np.shape(labels)} and {np.shape(scores)}."
        )
    order = np.argsort(-scores.astype(np.float64), kind="stable")  # rank 0: the highest score
    canvas = np.zeros(shape, dtype=np.int32)
    for rank in range(len(order) - 1, -1, -1):  # lowest score first, so higher scores paint over
        index = order[rank]
        region, values = _resample_into_box(masks[index].astype(np.float64), boxes[index], shape)
        if values is not None:
            canvas[region][values >= mask_threshold] = rank + 1
    kept = np.unique(canvas[canvas > 0])  # ranks + 1, ascending = descending score
    lookup = np.zeros(len(order) + 1, dtype=np.int32)
    lookup[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    instance_map = lookup[canvas]
    classes = {new: int(labels[order[old - 1]]) for new, old in enumerate(kept.tolist(), start=1)}
    kept_scores = {new: float(scores[order[old - 1]]) for new, old in enumerate(kept.tolist(), start=1)}
    return instance_map, classes, kept_scores


def masks_in_boxes(
    masks: np.ndarray | torch.Tensor,
    boxes: np.ndarray | torch.Tensor,
    size: int | Sequence[int],
    ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    sampling_ratio: int = 2,
) -> np.ndarray | torch.Tensor:
    """Mask targets: each box's instance mask cropped to the box and resampled to ``size`` (the
    Mask R-CNN mask target, RoIAlign with ``aligned=True`` on the binary mask).

    Args:
        masks: an instance map ``(*S)`` (with ``ids``) or binary masks ``(N, *S)``, one per box.
        boxes: ``(N, 2D)`` (proposal) boxes in continuous voxel coordinates.
        size: the target's size per axis (one int for all).
        ids: ``(N,)`` the instance id each box targets, for an instance map; ``None``: the map's
            positive ids in ascending order (then ``N`` must be their number, as from
            :func:`boxes_from_instances`).
        sampling_ratio: RoIAlign's samples per bin and axis.

    Returns:
        ``(N, *size)`` float32 fractions in ``[0, 1]`` (threshold at 0.5 for binary targets), a
        tensor on ``masks``' device when ``masks`` is a tensor, else a numpy array.
    """
    as_tensor = isinstance(masks, torch.Tensor)
    device = masks.device if as_tensor else torch.device("cpu")
    masks = torch.as_tensor(masks if as_tensor else np.asarray(masks), device=device)
    boxes = torch.as_tensor(_numpy(boxes) if not isinstance(boxes, torch.Tensor) else boxes, device=device).float()
    dims = boxes.shape[1] // 2 if boxes.ndim == 2 else 0
    if dims not in (2, 3) or masks.ndim not in (dims, dims + 1):
        raise ValueError(f"boxes must be (N, 4 or 6) and masks (*S) or (N, *S) of as many axes, got "
                         f"{tuple(boxes.shape)} and {tuple(masks.shape)}.")
    sizes = (int(size),) * dims if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    out = torch.zeros((len(boxes), *sizes), dtype=torch.float32, device=device)
    if masks.ndim == dims + 1:
        if len(masks) != len(boxes):
            raise ValueError(f"masks (N, *S) must hold one mask per box: {len(masks)} masks, {len(boxes)} boxes.")
        groups = [(masks[n] > 0, torch.tensor([n], device=device)) for n in range(len(boxes))]
    else:
        targets = _box_ids(masks, len(boxes), ids, device)
        groups = [(masks == value, (targets == value).nonzero().squeeze(1)) for value in targets.unique()]
    for mask, rows in groups:
        out[rows] = _align_crop(mask, boxes[rows], sizes, sampling_ratio)
    return out if as_tensor else out.numpy()


def _box_ids(instance_map: torch.Tensor, count: int, ids: object, device: torch.device) -> torch.Tensor:
    """The id each box targets: ``ids``, or the map's positive ids in ascending order."""
    if ids is None:
        present = instance_map[instance_map > 0].unique()
        if len(present) != count:
            raise ValueError(f"masks_in_boxes: the instance map has {len(present)} instances but there are "
                             f"{count} boxes; pass ids=(the instance id of each box).")
        return present
    ids = torch.as_tensor(_numpy(ids) if not isinstance(ids, torch.Tensor) else ids, device=device).reshape(-1)
    if len(ids) != count:
        raise ValueError(f"ids must hold one instance id per box ({count}), got {len(ids)}.")
    return ids.to(instance_map.dtype)


def _align_crop(mask: torch.Tensor, boxes: torch.Tensor, sizes: tuple[int, ...], sampling_ratio: int) -> torch.Tensor:
    """RoIAlign of the boolean ``mask`` in ``boxes``, computed on the smallest crop that holds
    every voxel the samples read (so the result equals RoIAlign on the whole mask)."""
    # imported here: the architectures package sits above this one
    from medseg.architectures.detection.roi_align import roi_align

    dims = mask.ndim
    low = [max(0, math.floor(float(boxes[:, d].min()) - 0.5)) for d in range(dims)]
    high = [min(mask.shape[d], math.ceil(float(boxes[:, dims + d].max()) - 0.5) + 1) for d in range(dims)]
    if any(h <= lo for lo, h in zip(low, high)):
        return torch.zeros((len(boxes), *sizes), dtype=torch.float32, device=mask.device)
    crop = mask[tuple(slice(lo, h) for lo, h in zip(low, high))].float()
    shift = torch.tensor(low + low, dtype=torch.float32, device=mask.device)
    rois = torch.cat([torch.zeros(len(boxes), 1, device=mask.device), boxes - shift], dim=1)
    return roi_align(crop[None, None], rois, sizes, 1.0, sampling_ratio)[:, 0]


def _resample_into_box(
    mask: np.ndarray, box: np.ndarray, shape: tuple[int, ...]
) -> tuple[tuple[slice, ...], np.ndarray | None]:
    """The voxels whose centres lie in ``box`` and ``mask`` linearly resampled onto them."""
    dims = len(shape)
    region, coordinates = [], []
    for d in range(dims):
        start, stop = float(box[d]), float(box[dims + d])
        first = max(0, math.ceil(start - 0.5))
        last = min(shape[d], math.ceil(stop - 0.5))
        region.append(slice(first, max(first, last)))
        if last <= first or not stop > start:
            return tuple(region), None
        centres = np.arange(first, last) + 0.5
        cells = mask.shape[d]
        coordinates.append(np.clip((centres - start) * cells / (stop - start) - 0.5, 0, cells - 1))
    grid = np.meshgrid(*coordinates, indexing="ij")
    values = ndimage.map_coordinates(mask, grid, order=1, mode="nearest")
    return tuple(region), values


def _integer_map(values: object, argument: str) -> np.ndarray:
    array = _numpy(values)
    if array.dtype.kind not in "iub":
        if array.dtype.kind != "f" or not np.array_equal(array, np.round(array)):
            raise ValueError(f"{argument} must hold integer instance ids, got dtype {array.dtype}.")
        array = array.astype(np.int64)
    if array.ndim not in (2, 3):
        raise ValueError(f"{argument} must be a 2D or 3D map, got shape {array.shape}.")
    return array


def _numpy(values: object) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
