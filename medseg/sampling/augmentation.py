"""Data augmentation presets built on MONAI transforms.

Random parameters are drawn by :meth:`Augmentation.draw` apart from :meth:`Augmentation.apply`,
so a draw can be replayed (and tested) exactly. On strongly anisotropic 3D patches (thick slices,
spacing ratio over ``ANISOTROPY``) rotation and scaling stay in-plane, as nnU-Net's "dummy 2D"
augmentation: turning a 3.6 mm axis into a 0.6 mm one would shear the anatomy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Affine
from monai.transforms.utils import create_rotate, create_scale
from scipy import ndimage

from ..errors import look_up_option
from ..instances.encoding import label_dtype
from ..preprocessing.resample import ANISOTROPY

__all__ = ["AUGMENTATIONS", "Augmentation", "create_augmentation"]


@dataclass(frozen=True)
class Augmentation:
    """nnU-Net-like augmentation of a patch (probabilities per patch).

    Args:
        p_affine: chance of a random rotation and scaling.
        rotation: largest rotation in degrees (about each axis in 3D; about the thick axis only,
            and scaling in-plane only, on anisotropic data).
        scale: range of the scale factor.
        p_flip: chance of mirroring, per axis.
        p_noise: chance of additive Gaussian noise (std drawn up to ``noise_std``).
        noise_std: largest noise standard deviation (images are z-scored).
        p_intensity: chance of a multiplicative brightness change in ``brightness``.
        brightness: range of the brightness factor.
        p_gamma: chance of a gamma change in ``gamma`` (on intensities rescaled to [0, 1]).
        gamma: range of gamma.
        flip_axes: the patch axes that may be mirrored (0-based); ``None``: every axis. Every
            axis still draws its chance, so the other draws do not depend on it.
        p_blur: chance of a Gaussian blur, sigma in ``blur_sigma`` voxels (in-plane only on
            anisotropic data), per channel with chance 1/2 (nnU-Net's rule).
        p_contrast: chance of a contrast change: ``(x - mean) * factor + mean``, ``factor`` in
            ``contrast``, clipped to the channel's former range.
        p_lowres: chance of simulated low resolution: each channel (chance 1/2) downsampled by a
            factor in ``lowres_zoom`` (nearest) and upsampled back (linear); in-plane only on
            anisotropic data.

    The last three are nnU-Net's and start off (their chance is 0), so a preset that leaves them
    off draws what it drew before they existed; ``{"preset": "2d", "p_blur": 0.2, "p_contrast":
    0.15, "p_lowres": 0.25}`` turns them on at nnU-Net's rates.
    """

    p_affine: float = 0.2
    rotation: float = 30.0
    scale: tuple[float, float] = (0.75, 1.25)
    p_flip: float = 0.5
    p_noise: float = 0.1
    noise_std: float = 0.1
    p_intensity: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_gamma: float = 0.15
    gamma: tuple[float, float] = (0.7, 1.5)
    flip_axes: tuple[int, ...] | None = None
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_contrast: float = 0.0
    contrast: tuple[float, float] = (0.75, 1.25)
    p_lowres: float = 0.0
    lowres_zoom: tuple[float, float] = (0.5, 1.0)

    @property
    def margin(self) -> float:
        """How much larger than the patch the source block of any affine draw can be."""
        return 1.0 if self.p_affine == 0 else math.sqrt(2) * max(self.scale)

    def draw(
        self, rng: np.random.Generator, spatial_dims: int, spacing: Sequence[float] | None = None
    ) -> dict[str, Any]:
        """Draw the random parameters for one patch.

        Args:
            rng: the random generator.
            spatial_dims: 2 or 3, the patch's dimensionality.
            spacing: the patch's voxel spacing; a 3D patch whose coarsest spacing is over
                ``ANISOTROPY`` times its finest is rotated about that axis only and scaled in-plane.
        """
        params: dict[str, Any] = {"flip": [a for a in range(spatial_dims) if rng.random() < self.p_flip
                                           and (self.flip_axes is None or a in self.flip_axes)]}
        if rng.random() < self.p_affine:
            thick = _thick_axis(spacing) if spatial_dims == 3 else None
            if thick is None:
                angles = 1 if spatial_dims == 2 else 3
                params["rotate"] = [float(math.radians(rng.uniform(-self.rotation, self.rotation))) for _ in range(angles)]
            else:
                params["rotate"] = [0.0] * 3
                params["rotate"][thick] = float(math.radians(rng.uniform(-self.rotation, self.rotation)))
            scale = float(rng.uniform(*self.scale))
            params["scale"] = [1.0 if a == thick else scale for a in range(spatial_dims)]
        if rng.random() < self.p_noise:
            params["noise_std"] = float(rng.uniform(0, self.noise_std))
            params["noise_seed"] = int(rng.integers(2**31))
        if rng.random() < self.p_intensity:
            params["brightness"] = float(rng.uniform(*self.brightness))
        if rng.random() < self.p_gamma:
            params["gamma"] = float(rng.uniform(*self.gamma))
        # drawn only where switched on, so the draws of a preset without them stay as they were
        if self.p_blur and rng.random() < self.p_blur:
            params["blur"] = float(rng.uniform(*self.blur_sigma))
            params["blur_channels"] = int(rng.integers(2**31))
        if self.p_contrast and rng.random() < self.p_contrast:
            params["contrast"] = float(rng.uniform(*self.contrast))
        if self.p_lowres and rng.random() < self.p_lowres:
            params["lowres"] = float(rng.uniform(*self.lowres_zoom))
            params["lowres_channels"] = int(rng.integers(2**31))
        if ("blur" in params or "lowres" in params) and spatial_dims == 3:
            params["in_plane_of"] = _thick_axis(spacing)
        return params

    def apply(
        self, image: np.ndarray, label: np.ndarray, params: dict[str, Any], size: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment ``image (C, *src)`` and ``label (*src)``, returning ``size``-shaped patches.

        Without an affine draw the source must already have ``size``.
        """
        if "rotate" in params:
            affine = Affine(rotate_params=params["rotate"], scale_params=_scales(params, len(size)),
                            spatial_size=size, padding_mode="zeros", image_only=True)
            image = np.asarray(affine(torch.from_numpy(np.ascontiguousarray(image)), mode="bilinear"))
            label = np.asarray(affine(torch.from_numpy(label[None].astype(np.float32)), mode="nearest"))[0]
        image = image.astype(np.float32, copy=False)  # crops are fresh arrays; flips return views
        label = np.asarray(label)
        for axis in params["flip"]:
            image, label = np.flip(image, axis + 1), np.flip(label, axis)
        if "noise_std" in params:
            image = image + np.random.default_rng(params["noise_seed"]).normal(0, params["noise_std"], image.shape).astype(np.float32)
        if "blur" in params:
            image = _per_channel(image, params["blur_channels"], lambda c: _blur(c, params["blur"], params.get("in_plane_of")))
        if "brightness" in params:
            image = image * params["brightness"]
        if "contrast" in params:
            image = _contrast(image, params["contrast"])
        if "lowres" in params:
            image = _per_channel(image, params["lowres_channels"], lambda c: _low_resolution(c, params["lowres"], params.get("in_plane_of")))
        if "gamma" in params:
            low, high = image.min(), image.max()
            span = max(float(high - low), 1e-8)
            image = ((image - low) / span) ** params["gamma"] * span + low
        # labels stay 8-bit on their way through the workers; the trainer widens them on device
        dtype = label_dtype(label)  # int32 for encoded instance labels past 32767
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label, dtype=dtype)

    def source_size(self, params: dict[str, Any], size: Sequence[int]) -> tuple[int, ...]:
        """The block of the case that :meth:`apply` samples for a ``size`` patch: the bounding box
        of the rotated, scaled patch (voxel centres), so a block inside the case pads nothing.

        Example:
            >>> Augmentation().source_size({"rotate": [math.pi / 4], "scale": [1.0, 1.0]}, (11, 11))
            (16, 16)
        """
        if "rotate" not in params:
            return tuple(int(s) for s in size)
        dims = len(size)
        linear = (create_rotate(dims, params["rotate"]) @ create_scale(dims, _scales(params, dims)))[:dims, :dims]
        extent = np.abs(linear) @ ((np.asarray(size, dtype=np.float64) - 1) / 2)
        return tuple(int(math.ceil(2 * e - 1e-6)) + 1 for e in extent)

    def config(self) -> dict[str, Any]:
        return asdict(self)


def _per_channel(image: np.ndarray, seed: int, change: Any) -> np.ndarray:
    """``image`` with ``change`` applied to each channel with chance 1/2 (at least one channel)."""
    chosen = np.random.default_rng(seed).random(image.shape[0]) < 0.5
    if not chosen.any():
        chosen[np.random.default_rng(seed + 1).integers(image.shape[0])] = True
    out = image.copy()
    for c in np.flatnonzero(chosen):
        out[c] = change(image[c])
    return out


def _blur(channel: np.ndarray, sigma: float, thick: int | None) -> np.ndarray:
    """A Gaussian blur of ``sigma`` voxels, none along the thick axis of an anisotropic patch."""
    sigmas = [0.0 if a == thick else sigma for a in range(channel.ndim)]
    return ndimage.gaussian_filter(channel, sigmas, mode="nearest").astype(np.float32, copy=False)


def _contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Each channel stretched about its mean by ``factor``, kept within its former range."""
    axes = tuple(range(1, image.ndim))
    mean = image.mean(axis=axes, keepdims=True)
    low, high = image.min(axis=axes, keepdims=True), image.max(axis=axes, keepdims=True)
    return np.clip((image - mean) * factor + mean, low, high)


def _low_resolution(channel: np.ndarray, zoom: float, thick: int | None) -> np.ndarray:
    """``channel`` downsampled by ``zoom`` (nearest) and upsampled back (linear), as a scan
    taken at a coarser resolution looks; the thick axis of an anisotropic patch is kept."""
    shape = channel.shape
    small = tuple(s if a == thick else max(1, round(s * zoom)) for a, s in enumerate(shape))
    if small == shape:
        return channel
    x = torch.from_numpy(np.ascontiguousarray(channel))[None, None]
    x = F.interpolate(x, size=small, mode="nearest-exact")
    x = F.interpolate(x, size=shape, mode="bilinear" if channel.ndim == 2 else "trilinear", align_corners=False)
    return x[0, 0].numpy()


def _field_value(name: str, value: Any) -> Any:
    """A settings value as the :class:`Augmentation` field holds it (JSON lists become tuples)."""
    if name == "flip_axes":
        return None if value is None else tuple(int(a) for a in value)
    return tuple(float(x) for x in value) if isinstance(value, (list, tuple)) else float(value)


def _thick_axis(spacing: Sequence[float] | None) -> int | None:
    """The coarse axis of a strongly anisotropic 3D spacing (resample's rule), else ``None``."""
    if spacing is None or len(spacing) != 3:
        return None
    spacing = np.asarray(spacing, dtype=np.float64)
    return int(spacing.argmax()) if spacing.max() / spacing.min() > ANISOTROPY else None


def _scales(params: dict[str, Any], dims: int) -> list[float]:
    """Per-axis scale factors (draws before per-axis scaling held one factor)."""
    scale = params["scale"]
    return [float(scale)] * dims if isinstance(scale, (int, float)) else [float(s) for s in scale]


AUGMENTATIONS: dict[str, Augmentation] = {
    "3d": Augmentation(),
    "2d": Augmentation(rotation=180.0, p_affine=0.3),
    # photographs (VOC, Cityscapes...): random scaling 0.5-2x, a small tilt, no gamma or noise
    "natural": Augmentation(p_affine=0.5, rotation=10.0, scale=(0.5, 2.0), p_noise=0.0, p_gamma=0.0),
    "none": Augmentation(p_affine=0.0, p_flip=0.0, p_noise=0.0, p_intensity=0.0, p_gamma=0.0),
}


def create_augmentation(name: str | Mapping[str, Any]) -> Augmentation:
    """An augmentation preset by name: ``3d``, ``2d`` (full in-plane rotation), ``natural``
    (photographs: scaling 0.5-2x) or ``none``; or a mapping ``{"preset": name, **fields}`` that
    changes fields of a preset (default ``3d``), as a settings file gives it.

    Example:
        >>> create_augmentation({"preset": "3d", "p_flip": 0.0, "scale": [0.9, 1.1]}).scale
        (0.9, 1.1)
    """
    if isinstance(name, Mapping):
        changes = dict(name)
        preset = changes.pop("preset", "3d")
        fields = {f.name for f in dataclasses.fields(Augmentation)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ValueError(f"augmentation: unknown field(s) {unknown}; a preset's fields are {sorted(fields)}.")
        changes = {k: _field_value(k, v) for k, v in changes.items()}
        return dataclasses.replace(create_augmentation(preset), **changes)
    return AUGMENTATIONS[look_up_option(name, AUGMENTATIONS, argument="augmentation")]
