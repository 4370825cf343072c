"""Random patches with foreground oversampling, and 2D slices out of 3D volumes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PatchSampler", "crop"]


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Copy the block ``array[..., start:start+size]`` over the trailing axes, zero outside.

    Args:
        array: ``(..., *spatial)`` (a memory map is read only where the block lies).
        start: first voxel per spatial axis (may be negative or run past the end).
        size: block size per spatial axis.
    """
    lead = array.ndim - len(size)
    out = np.zeros((*array.shape[:lead], *size), dtype=array.dtype)
    src, dst = [], []
    for s, n, full in zip(start, size, array.shape[lead:]):
        lo, hi = max(s, 0), min(s + n, full)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - s, lo - s + max(0, hi - lo)))
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


class PatchSampler:
    """Draws training patches; a share of them centred on a random foreground voxel.

    nnU-Net's scheme: ``foreground_ratio`` of the patches (a third by default) are centred on a
    voxel of a class drawn uniformly among the classes present in the case; the others lie
    uniformly at random inside the case. The share is exact over every run of patches.

    Args:
        patch_size: spatial patch size; ``None`` until the Pipeline fills it from its plan.
            For a 2D network on 3D data give 2 sizes and ``slice_axis``.
        foreground_ratio: share of foreground-centred patches, in [0, 1].
        slice_axis: the data axis 2D slices are taken across (3D data, 2D network).

    Example:
        >>> sampler = PatchSampler(patch_size=(48, 64, 48), foreground_ratio=0.33)
    """

    def __init__(
        self,
        *,
        patch_size: Sequence[int] | None = None,
        foreground_ratio: float = 0.33,
        slice_axis: int | None = None,
    ) -> None:
        if not 0.0 <= foreground_ratio <= 1.0:
            raise ValueError(f"PatchSampler(foreground_ratio={foreground_ratio}): must lie in [0, 1].")
        if patch_size is not None and any(int(p) < 1 for p in patch_size):
            raise ValueError(f"PatchSampler(patch_size={tuple(patch_size)}): sizes must be positive.")
        self.patch_size = None if patch_size is None else tuple(int(p) for p in patch_size)
        self.foreground_ratio = float(foreground_ratio)
        self.slice_axis = slice_axis
        self.drawn = 0  # the index of the next patch (a stream sets it per batch)

    def data_patch(self, data_dims: int) -> tuple[int, ...]:
        """The patch in data axes: a 2D patch on 3D data is one voxel thick across ``slice_axis``."""
        if self.patch_size is None:
            raise RuntimeError("PatchSampler.patch_size is not set; give it or let the Pipeline plan it.")
        if len(self.patch_size) == data_dims:
            return self.patch_size
        if len(self.patch_size) == 2 and data_dims == 3:
            axis = 2 if self.slice_axis is None else self.slice_axis
            size = list(self.patch_size)
            size.insert(axis, 1)
            return tuple(size)
        raise ValueError(f"patch_size {self.patch_size} does not fit {data_dims}D data.")

    def next_is_foreground(self) -> bool:
        """Whether the next patch, number ``drawn``, is foreground-centred; counts it.

        Patch ``k`` is when ``floor((k + 1) r) > floor(k r)``: an exact share over every run of
        patches, and a function of the index alone, so a stream may start at any patch.
        """
        k = self.drawn
        self.drawn += 1
        return int((k + 1) * self.foreground_ratio + 1e-9) > int(k * self.foreground_ratio + 1e-9)

    def draw_start(
        self,
        shape: Sequence[int],
        foreground: dict[int, np.ndarray],
        rng: np.random.Generator,
        size: Sequence[int] | None = None,
    ) -> tuple[tuple[int, ...], bool]:
        """Draw a patch origin in a case of spatial ``shape``; returns ``(start, centred_on_fg)``.

        Args:
            shape: the case's spatial shape.
            foreground: ``{class: (N, ndim) voxel coordinates}``.
            rng: the random generator.
            size: the block to place (default the data patch).
        """
        size = tuple(size or self.data_patch(len(shape)))
        want_fg = self.next_is_foreground()
        classes = [c for c, coords in foreground.items() if len(coords)]
        if want_fg and classes:
            coords = foreground[classes[rng.integers(len(classes))]]
            center = coords[rng.integers(len(coords))]
            start = [int(c) - s // 2 for c, s in zip(center, size)]
            # keep the block inside the case where it fits, as nnU-Net does
            start = [min(max(st, min(0, n - s)), max(0, n - s)) for st, n, s in zip(start, shape, size)]
            return tuple(start), True
        start = [int(rng.integers(min(0, n - s), max(0, n - s) + 1)) for n, s in zip(shape, size)]
        return tuple(start), False

    def config(self) -> dict[str, Any]:
        return {"patch_size": None if self.patch_size is None else list(self.patch_size),
                "foreground_ratio": self.foreground_ratio, "slice_axis": self.slice_axis}

    def __repr__(self) -> str:
        return f"PatchSampler(patch_size={self.patch_size}, foreground_ratio={self.foreground_ratio})"
