"""Cropping to the non-zero region and padding to a minimum size, both invertible."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..io.sample import Geometry, Sample
from .base import Step

__all__ = ["CropForeground", "Pad"]


def _shifted(geometry: Geometry, offset: Sequence[int], shape: Sequence[int]) -> Geometry:
    """The grid of a sub-block starting at voxel ``offset`` (may be negative for padding)."""
    n = geometry.ndim
    shift = np.eye(4)
    shift[:n, 3] = offset
    return Geometry(geometry.affine @ shift, tuple(shape))


def _pad_back(array: np.ndarray, record: Any, fill: Sequence[float]) -> np.ndarray:
    """``(C, *box)`` -> ``(C, *shape)``, channel ``c`` set to ``fill[c]`` outside the box."""
    shape, box = record
    out = np.empty((array.shape[0], *shape), dtype=array.dtype)
    out[...] = np.asarray(fill, dtype=array.dtype).reshape(-1, *(1,) * len(shape))
    out[(slice(None), *(slice(a, b) for a, b in box))] = array
    return out


class CropForeground(Step):
    """Crop to the bounding box of the voxels that are non-zero in any channel (nnU-Net).

    Predictions are padded back with background outside the box.
    """

    name = "crop_foreground"
    moves_voxels_only = True  # type: ignore[assignment]

    def __call__(self, sample: Sample) -> Sample:
        mask = np.any(sample.image != 0, axis=0)
        if not mask.any() or mask.all():
            return sample.replace(history=(*sample.history, (self, None)))
        box = []
        for axis in range(mask.ndim):
            other = tuple(a for a in range(mask.ndim) if a != axis)
            nonzero = np.flatnonzero(mask.any(axis=other))
            box.append((int(nonzero[0]), int(nonzero[-1]) + 1))
        index = tuple(slice(a, b) for a, b in box)
        shape = tuple(b - a for a, b in box)
        return sample.replace(
            image=sample.image[(slice(None), *index)],
            label=None if sample.label is None else sample.label[index],
            geometry=_shifted(sample.geometry, [a for a, _ in box], shape),
            history=(*sample.history, (self, (sample.spatial_shape, tuple(box)))),
        )

    def invert(self, probabilities: np.ndarray, record: Any) -> np.ndarray:
        if record is None:
            return probabilities
        return _pad_back(probabilities, record, [1.0] + [0.0] * (len(probabilities) - 1))  # background

    def invert_channel(self, channel: np.ndarray, record: Any, *, fill: float = 0.0) -> np.ndarray:
        return channel if record is None else _pad_back(channel, record, [fill] * len(channel))

    def invert_map(self, labels: np.ndarray, record: Any, *, fill: Any) -> np.ndarray:
        return self.invert_channel(labels, record, fill=fill)

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


class Pad(Step):
    """Pad (centred, with zeros) so that every axis is at least ``min_shape``.

    Args:
        min_shape: the smallest spatial shape wanted, typically the patch size.
        label_fill: the label of the padded voxels: 0 (background), or
            :data:`~medseg.io.labels.IGNORE_INDEX` so that padding is not trained on as a class
            (photographs padded up to the patch).
    """

    name = "pad"
    moves_voxels_only = True  # type: ignore[assignment]

    def __init__(self, *, min_shape: Sequence[int], label_fill: int = 0) -> None:
        self.min_shape = tuple(int(s) for s in min_shape)
        self.label_fill = int(label_fill)
        if any(s < 1 for s in self.min_shape):
            raise ValueError(f"Pad(min_shape={self.min_shape}): sizes must be positive.")

    def __call__(self, sample: Sample) -> Sample:
        shape = sample.spatial_shape
        if len(self.min_shape) != len(shape):
            raise ValueError(f"Pad min_shape {self.min_shape} has {len(self.min_shape)} axes; case {sample.id!r} has {len(shape)}.")
        before = [max(0, m - s) // 2 for m, s in zip(self.min_shape, shape)]
        after = [max(0, m - s) - b for m, s, b in zip(self.min_shape, shape, before)]
        if not any(before) and not any(after):
            return sample.replace(history=(*sample.history, (self, None)))
        pads = list(zip(before, after))
        new_shape = tuple(s + b + a for s, b, a in zip(shape, before, after))
        return sample.replace(
            image=np.pad(sample.image, [(0, 0), *pads]),
            label=None if sample.label is None else np.pad(self._signed(sample.label), pads,
                                                           constant_values=self.label_fill),
            geometry=_shifted(sample.geometry, [-b for b in before], new_shape),
            history=(*sample.history, (self, (shape, tuple(before)))),
        )

    def _signed(self, label: np.ndarray) -> np.ndarray:
        """``label``, in a signed type when the fill is negative (IGNORE_INDEX in a uint8 map)."""
        return label.astype(np.int16) if self.label_fill < 0 and label.dtype.kind == "u" else label

    def invert(self, probabilities: np.ndarray, record: Any) -> np.ndarray:
        if record is None:
            return probabilities
        shape, before = record
        return probabilities[(slice(None), *(slice(b, b + s) for b, s in zip(before, shape)))]

    def config(self) -> dict[str, Any]:
        config = {"name": self.name, "min_shape": list(self.min_shape)}
        return config if self.label_fill == 0 else {**config, "label_fill": self.label_fill}  # keys of 0 unchanged
