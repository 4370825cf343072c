"""Spacing-aware distance maps of label masks (NumPy, SciPy), for the distance-based losses.

The maps are meant to be computed in data-loader workers, one sample at a time, through the
losses' ``precompute``; the batch helpers at the end give the same maps inside ``forward``
when a loss runs without them (the slow path).

Ignored voxels (``valid`` False) hold no known label: they are neither object nor background, a
distance is measured to known voxels only, and every map is 0 there. A map of a patch whose
ignored voxels form a slab at its edge thus equals the map of the patch with the slab cut off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from medseg.losses.base import IGNORE_INDEX

__all__ = [
    "batch_maps",
    "boundary_penalty",
    "check_spacing",
    "class_maps",
    "extra_or_none",
    "signed_distance",
    "spacings_of",
    "unsigned_distance",
]

MaskMap = Callable[..., np.ndarray]
"""A map of one binary mask ``(*spatial)`` given its spacing and optional ``valid`` voxels, e.g.
:func:`signed_distance`."""


def check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    """Return ``spacing`` as a tuple of ``ndim`` positive floats (or ``None``), else raise."""
    if spacing is None:
        return None
    values = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1))
    if len(values) != ndim or not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(
            f"spacing must hold {ndim} positive numbers (one per spatial axis), got {spacing!r}."
        )
    return values


def _known(mask: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(object, background, valid)`` boolean masks; ignored voxels are in neither."""
    mask = np.asarray(mask, dtype=bool)
    valid = np.ones(mask.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    mask = mask & valid
    return mask, valid & ~mask, valid


def signed_distance(
    mask: np.ndarray, spacing: tuple[float, ...] | None = None, valid: np.ndarray | None = None
) -> np.ndarray:
    """Kervadec's signed distance map of a binary mask ``(*spatial)``.

    Outside the object: the distance to it. Inside: minus (the distance to the background minus
    one voxel step), so the object's border voxels are 0. The step is 1 without spacing and the
    smallest spacing with it, which keeps every inside value <= 0 at any spacing. A mask that is
    empty or full (of the ``valid`` voxels) has no border and gets zeros; so do ignored voxels.
    """
    mask, background, valid = _known(mask, valid)
    if not mask.any() or not background.any():
        return np.zeros(mask.shape, dtype=np.float32)
    step = 1.0 if spacing is None else min(spacing)
    inside = distance_transform_edt(~background, sampling=spacing)
    outside = distance_transform_edt(~mask, sampling=spacing)
    return (np.where(mask, step - inside, outside) * valid).astype(np.float32)


def unsigned_distance(
    mask: np.ndarray, spacing: tuple[float, ...] | None = None, valid: np.ndarray | None = None
) -> np.ndarray:
    """Distance of each voxel to the other side of a binary mask's border ``(*spatial)``.

    Inside the object the distance to the background, outside the distance to the object (as in
    Karimi & Salcudean 2019 and MONAI's ``HausdorffDTLoss``); zeros for an empty or full mask
    (of the ``valid`` voxels) and at ignored voxels.
    """
    mask, background, valid = _known(mask, valid)
    if not mask.any() or not background.any():
        return np.zeros(mask.shape, dtype=np.float32)
    inside = distance_transform_edt(~background, sampling=spacing)
    outside = distance_transform_edt(~mask, sampling=spacing)
    return (np.where(mask, inside, outside) * valid).astype(np.float32)


def class_maps(
    map_fn: MaskMap,
    labels: np.ndarray,
    classes: Sequence[int],
    spacing: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Apply ``map_fn`` to the mask of each class of one sample's labels ``(*spatial)``
    (ignored voxels, label ``IGNORE_INDEX``, are known to no mask).

    Returns:
        float32 ``(len(classes), *spatial)``.
    """
    out = np.zeros((len(classes), *labels.shape), dtype=np.float32)
    valid = labels != IGNORE_INDEX
    for i, c in enumerate(classes):
        out[i] = map_fn(labels == c, spacing, valid)
    return out


def boundary_penalty(labels: np.ndarray, spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """Caliva et al. (2019)'s voxel weights ``1 + phi`` for one sample's labels ``(*spatial)``.

    ``phi`` is an inverted, normalised distance map: in each label's region, with ``d`` the
    distance to the nearest voxel of another label and ``M`` its largest value in the region,
    ``phi = (M - d) / (M - step)``: 1 on the region's border, 0 at its deepest voxel (1 for a
    region that is all border). ``step`` is 1, or the smallest spacing. One label only: all 1.
    Ignored voxels (``IGNORE_INDEX``) are no label: no border lies along them; they get 1.

    Returns:
        float32 ``(*spatial)`` with values in ``[1, 2]``.
    """
    weight = np.ones(labels.shape, dtype=np.float32)
    valid = labels != IGNORE_INDEX
    present = np.unique(labels[valid])
    if present.size < 2:
        return weight
    step = 1.0 if spacing is None else min(spacing)
    for c in present:
        region = labels == c
        depth = distance_transform_edt(region | ~valid, sampling=spacing)[region]
        deepest = depth.max()
        phi = (deepest - depth) / (deepest - step) if deepest > step else np.ones_like(depth)
        weight[region] += np.clip(phi, 0.0, 1.0).astype(np.float32)
    return weight


def spacings_of(
    spacing: torch.Tensor | Sequence[float] | None, batch: int, ndim: int
) -> list[tuple[float, ...] | None]:
    """Per-sample spacings from a ``spacing`` extra ``(B, ndim)``, one tuple ``(ndim,)``, or None."""
    if spacing is None:
        return [None] * batch
    values = torch.as_tensor(spacing, dtype=torch.float64).cpu().numpy()
    if values.ndim == 1:
        return [check_spacing(values, ndim)] * batch
    if values.shape[0] != batch:
        raise ValueError(
            f"spacing must be (B, {ndim}) = ({batch}, {ndim}), got {tuple(values.shape)}."
        )
    return [check_spacing(row, ndim) for row in values]


def batch_maps(
    map_fn: MaskMap,
    masks: torch.Tensor,
    spacing: torch.Tensor | Sequence[float] | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply ``map_fn`` to every ``(sample, channel)`` mask of ``(B, K, *spatial)``, on the CPU.

    Args:
        valid: ``(B, *spatial)`` the voxels that are not ignored (default: all).

    Returns:
        float32 ``(B, K, *spatial)`` on the masks' device, without gradient.
    """
    array = masks.detach().cpu().numpy().astype(bool)
    known = None if valid is None else valid.detach().cpu().numpy().astype(bool)
    spacings = spacings_of(spacing, array.shape[0], array.ndim - 2)
    out = np.zeros(array.shape, dtype=np.float32)
    for b, sample_spacing in enumerate(spacings):
        for k in range(array.shape[1]):
            out[b, k] = map_fn(array[b, k], sample_spacing, None if known is None else known[b])
    return torch.from_numpy(out).to(masks.device)


def extra_or_none(
    extras: dict[str, torch.Tensor], name: str, like: torch.Tensor
) -> torch.Tensor | None:
    """The extra ``name`` as float32 on ``like``'s device, checked to have its shape; None if absent."""
    value = extras.get(name)
    if value is None:
        return None
    value = torch.as_tensor(value)
    if value.shape != like.shape:
        raise ValueError(
            f"extra {name!r} must have shape {tuple(like.shape)}, got {tuple(value.shape)}."
        )
    return value.to(device=like.device, dtype=torch.float32)
