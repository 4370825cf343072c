"""RoIAlign in 2D and 3D on ``torch.nn.functional.grid_sample``, without torchvision.

The semantics are torchvision's ``roi_align(..., aligned=True)`` (He et al., Mask R-CNN, 2017),
extended to three spatial axes: a box ``[min..., max...]`` in input-voxel coordinates (voxel ``i``
spans ``[i, i + 1)``) is scaled by ``spatial_scale`` and shifted by ``-0.5``, so that feature
element ``j`` sits at coordinate ``j``; the box is cut into ``output_size`` bins per axis, and each
bin averages ``sampling_ratio ** D`` regularly spaced bilinear (trilinear) samples at the
bin-relative offsets ``(k + 0.5) / sampling_ratio``. A sample whose coordinate on any axis lies
outside ``[-1, size]`` contributes 0; the others are clamped to ``[0, size - 1]`` first, as
torchvision does. The average always divides by ``sampling_ratio ** D``.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["roi_align"]


def roi_align(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int | Sequence[int],
    spatial_scale: float,
    sampling_ratio: int = 2,
) -> torch.Tensor:
    """Pool a fixed-size feature crop for each box (RoIAlign, torchvision's ``aligned=True``).

    Differentiable with respect to ``features`` (not ``rois``, as in torchvision); vectorised
    over boxes and bins (Python loops run only over batch images and the ``sampling_ratio ** D``
    sample offsets, so memory stays at the size of the output).

    Args:
        features: ``(B, C, *S)`` feature maps, ``D = len(S)`` of 2 or 3.
        rois: ``(R, 1 + 2D)`` rows ``[batch_index, min_0, ..., max_0, ...]``, boxes in
            input-voxel continuous coordinates (MONAI's StandardMode).
        output_size: bins per spatial axis (one int for all axes, or ``D`` ints).
        spatial_scale: feature elements per input voxel, e.g. ``1/4`` for a stride-4 map.
        sampling_ratio: samples per bin and axis, ``>= 1``.

    Returns:
        ``(R, C, *output_size)`` pooled features, in ``features``' dtype.

    Raises:
        ValueError: wrong shapes, a batch index outside ``[0, B)``, or invalid sizes.

    Example:
        >>> features = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> roi_align(features, torch.tensor([[0.0, 0, 0, 4, 4]]), 2, 1.0).squeeze()
        tensor([[ 2.5000,  4.5000],
                [10.5000, 12.5000]])
    """
    dims = features.ndim - 2
    sizes = _check_arguments(features, rois, output_size, spatial_scale, sampling_ratio)
    channels = features.shape[1]
    out = features.new_zeros((rois.shape[0], channels, *sizes))
    if rois.shape[0] == 0:
        return out
    rois = rois.detach().to(device=features.device, dtype=torch.float64)
    batch = rois[:, 0].round().long()
    if not torch.equal(rois[:, 0], batch.to(rois.dtype)) or batch.min() < 0 or batch.max() >= features.shape[0]:
        raise ValueError(
            f"rois[:, 0] must hold integer batch indices in [0, {features.shape[0]}), got "
            f"{rois[:, 0].unique().tolist()[:10]}; rows are [batch_index, min..., max...]."
        )
    coordinates = _sample_coordinates(rois[:, 1:], sizes, spatial_scale, sampling_ratio, features.shape[2:])
    for index in batch.unique().tolist():
        chosen = (batch == index).nonzero().squeeze(1)
        total = None
        for offsets in itertools.product(range(sampling_ratio), repeat=dims):
            axes = [tuple(t[chosen] for t in coordinates[axis][offset]) for axis, offset in enumerate(offsets)]
            value = _sample(features[index : index + 1], axes)
            total = value if total is None else total + value
        out = out.index_copy(0, chosen, total / sampling_ratio**dims)
    return out


def _check_arguments(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int | Sequence[int],
    spatial_scale: float,
    sampling_ratio: int,
) -> tuple[int, ...]:
    """Validate the arguments; return the output size per spatial axis."""
    dims = features.ndim - 2
    if dims not in (2, 3):
        raise ValueError(f"features must be (B, C, *S) with 2 or 3 spatial axes, got shape {tuple(features.shape)}.")
    if rois.ndim != 2 or rois.shape[1] != 1 + 2 * dims:
        raise ValueError(
            f"rois must be (R, {1 + 2 * dims}) rows [batch_index, min..., max...] for {dims}D features, "
            f"got shape {tuple(rois.shape)}."
        )
    sizes = (output_size,) * dims if isinstance(output_size, numbers.Integral) else tuple(output_size)
    if len(sizes) != dims or not all(isinstance(s, numbers.Integral) and s >= 1 for s in sizes):
        raise ValueError(f"output_size must be an int >= 1 or {dims} of them, got {output_size!r}.")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, numbers.Integral) or sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be an int >= 1, got {sampling_ratio!r}.")
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, numbers.Real) or not spatial_scale > 0:
        raise ValueError(f"spatial_scale must be a number > 0 (e.g. 1/stride), got {spatial_scale!r}.")
    return tuple(int(s) for s in sizes)


def _sample_coordinates(
    boxes: torch.Tensor,
    sizes: tuple[int, ...],
    spatial_scale: float,
    sampling_ratio: int,
    shape: Sequence[int],
) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per axis and sample offset: the clamped feature coordinates ``(R, o)`` and their validity."""
    dims = len(sizes)
    result = []
    for axis in range(dims):
        start = boxes[:, axis] * spatial_scale - 0.5
        bin_size = (boxes[:, dims + axis] * spatial_scale - 0.5 - start) / sizes[axis]
        bins = torch.arange(sizes[axis], dtype=boxes.dtype, device=boxes.device)
        per_offset = []
        for k in range(sampling_ratio):
            position = start[:, None] + bin_size[:, None] * (bins + (k + 0.5) / sampling_ratio)
            valid = (position >= -1.0) & (position <= shape[axis])
            per_offset.append((position.clamp(0, shape[axis] - 1), valid))
        result.append(per_offset)
    return result


def _sample(image: torch.Tensor, axes: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Bilinear samples ``(R, C, *o)`` of ``image`` ``(1, C, *S)`` on the grid of ``axes``
    (clamped coordinates and validity ``(R, o_d)`` per axis), 0 where a sample is invalid."""
    dims = len(axes)
    count = axes[0][0].shape[0]
    grids, valid = [], None
    for axis, (position, ok) in enumerate(axes):
        view = [count] + [1] * dims
        view[1 + axis] = position.shape[1]
        size = image.shape[2 + axis]
        normalised = position * (2.0 / (size - 1)) - 1.0 if size > 1 else torch.zeros_like(position)
        grids.append(normalised.reshape(view))
        valid = ok.reshape(view) if valid is None else valid & ok.reshape(view)
    out_shape = [count, *(position.shape[1] for position, _ in axes)]
    grid = torch.stack([g.expand(out_shape) for g in reversed(grids)], dim=-1)  # grid_sample wants (x, y, z)
    grid = grid.reshape(1, count * out_shape[1], *out_shape[2:], dims).to(image.dtype)
    sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    sampled = sampled.reshape(image.shape[1], *out_shape).transpose(0, 1)
    return sampled * valid.unsqueeze(1).to(image.dtype)
