"""Resampling to a target spacing, anisotropy-aware, and its inverse for predictions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..io.sample import Geometry, Sample
from .base import Fingerprint, Step

__all__ = ["Resample", "resize"]

ANISOTROPY = 3.0


def _lowres_axis(spacing: Sequence[float]) -> int | None:
    """The out-of-plane axis of a strongly anisotropic grid (nnU-Net's rule), else ``None``."""
    spacing = np.asarray(spacing)
    if spacing.size == 3 and spacing.max() / spacing.min() > ANISOTROPY:
        return int(spacing.argmax())
    return None


def resize(
    array: np.ndarray, shape: Sequence[int], order: int, lowres_axis: int | None = None
) -> np.ndarray:
    """Resize ``(C, *spatial)`` to ``(C, *shape)``, pixel-centre aligned (``align_corners=False``).

    Downsampling is low-pass filtered first (scikit-image's sigma rule). Along ``lowres_axis`` the
    resize is nearest-neighbour, so thick slices are not blurred into each other.
    """
    shape = tuple(int(s) for s in shape)
    if tuple(array.shape[1:]) == shape:
        return array
    factors = np.asarray(shape) / np.asarray(array.shape[1:])
    out = np.empty((array.shape[0], *shape), dtype=np.float32)
    for c, channel in enumerate(array.astype(np.float32, copy=False)):
        sigma = np.maximum(0.0, (1.0 / factors - 1.0) / 2.0)
        if order > 0 and np.any(sigma > 0):
            channel = ndimage.gaussian_filter(channel, sigma, mode="nearest")
        if lowres_axis is None:
            out[c] = ndimage.zoom(channel, factors, order=order, mode="nearest", grid_mode=True)
        else:
            inplane = factors.copy()
            inplane[lowres_axis] = 1.0
            channel = ndimage.zoom(channel, inplane, order=order, mode="nearest", grid_mode=True)
            along = np.ones_like(factors)
            along[lowres_axis] = factors[lowres_axis]
            out[c] = ndimage.zoom(channel, along, order=0, mode="nearest", grid_mode=True)
    return out


def resize_label(label: np.ndarray, shape: Sequence[int], lowres_axis: int | None) -> np.ndarray:
    """Resize an integer label map by linear interpolation of its one-hot channels (nnU-Net)."""
    if tuple(label.shape) == tuple(shape):
        return label
    classes = np.unique(label)
    if len(classes) <= 8:  # few classes: one resize of all channels
        onehot = np.stack([label == c for c in classes]).astype(np.float32)
        probabilities = resize(onehot, shape, order=1, lowres_axis=lowres_axis)
        return classes[np.argmax(probabilities, axis=0)].astype(label.dtype)
    # an instance label holds one value per object: keep a running argmax (two arrays in memory,
    # not one per value); the first value reaching the maximum wins, as np.argmax picks it
    best = np.full(tuple(shape), -np.inf, dtype=np.float32)
    out = np.zeros(tuple(shape), dtype=label.dtype)
    for value in classes:
        channel = resize((label == value)[None].astype(np.float32), shape, order=1, lowres_axis=lowres_axis)[0]
        better = channel > best
        best[better], out[better] = channel[better], value
    return out


def resampled_geometry(geometry: Geometry, shape: Sequence[int]) -> Geometry:
    """The grid covering the same field of view with ``shape`` voxels (pixel-centre aligned)."""
    n = geometry.ndim
    scale = np.asarray(geometry.shape, dtype=np.float64) / np.asarray(shape)
    step = np.eye(4)
    step[:n, :n] = np.diag(scale)
    step[:n, 3] = (scale - 1.0) / 2.0
    return Geometry(geometry.affine @ step, tuple(shape))


@dataclass(frozen=True)
class _Record:
    shape: tuple[int, ...]
    lowres_axis: int | None


class Resample(Step):
    """Resample image (cubic) and label (linear on one-hot) to a target spacing.

    Args:
        spacing: target spacing in mm per axis, ``"median"`` (the dataset's median, resolved by
            :meth:`fit`) or ``None`` (keep each case's own grid).
        keep_axis: an axis left at each case's own spacing (its target entry is ignored): the
            slice axis of a 2D network on 3D data, so every case keeps its slices and each is
            predicted from itself.

    Example:
        >>> Resample(spacing=(1.0, 1.0, 3.0))
        Resample(spacing=(1.0, 1.0, 3.0))
        >>> Resample(spacing=(0.8, 0.8, 3.0), keep_axis=2).target_shape((100, 100, 40), (0.4, 0.4, 1.5))
        (50, 50, 40)
    """

    name = "resample"

    def __init__(self, *, spacing: Sequence[float] | str | None = "median", keep_axis: int | None = None) -> None:
        if keep_axis is not None and (isinstance(keep_axis, bool) or not isinstance(keep_axis, int) or keep_axis < 0):
            raise ValueError(f"Resample(keep_axis={keep_axis!r}): give a data axis (0, 1 or 2) or None.")
        self.keep_axis = keep_axis
        if isinstance(spacing, str):
            if spacing != "median":
                raise ValueError(f'Resample(spacing={spacing!r}): use "median", a tuple of mm, or None.')
        elif spacing is not None:
            spacing = tuple(float(s) for s in spacing)
            if any(s <= 0 for s in spacing):
                raise ValueError(f"Resample(spacing={spacing}): spacings must be positive.")
        self.spacing = spacing

    def fit(self, fingerprint: Fingerprint) -> Resample:
        if self.spacing == "median":
            return Resample(spacing=fingerprint.median_spacing, keep_axis=self.keep_axis)
        return self

    def target_shape(self, shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, ...]:
        if self.spacing is None:
            return tuple(shape)
        if self.spacing == "median":
            raise RuntimeError('Resample(spacing="median") must be fitted on a dataset first.')
        if len(self.spacing) != len(shape):
            raise ValueError(f"Resample spacing {self.spacing} has {len(self.spacing)} axes; the case has {len(shape)}.")
        if self.keep_axis is not None and self.keep_axis >= len(shape):
            raise ValueError(f"Resample(keep_axis={self.keep_axis}): the case has only {len(shape)} axes.")
        return tuple(n if a == self.keep_axis else max(1, round(n * s / t))
                     for a, (n, s, t) in enumerate(zip(shape, spacing, self.spacing)))

    def __call__(self, sample: Sample) -> Sample:
        shape = self.target_shape(sample.spatial_shape, sample.geometry.spacing)
        lowres = _lowres_axis(sample.geometry.spacing)
        record = _Record(sample.spatial_shape, lowres)
        if shape == sample.spatial_shape:
            return sample.replace(history=(*sample.history, (self, record)))
        return sample.replace(
            image=resize(sample.image, shape, order=3, lowres_axis=lowres),
            label=None if sample.label is None else resize_label(sample.label, shape, lowres),
            geometry=resampled_geometry(sample.geometry, shape),
            history=(*sample.history, (self, record)),
        )

    def invert(self, probabilities: np.ndarray, record: _Record) -> np.ndarray:
        return resize(probabilities, record.shape, order=1, lowres_axis=record.lowres_axis)

    def config(self) -> dict[str, Any]:
        spacing = list(self.spacing) if isinstance(self.spacing, tuple) else self.spacing
        config = {"name": self.name, "spacing": spacing}
        if self.keep_axis is not None:  # absent otherwise, so caches keyed by the config stay valid
            config["keep_axis"] = self.keep_axis
        return config
