"""Intensity normalisation: z-score per channel, CT windowing with dataset statistics, and RGB
photographs scaled with ImageNet's channel statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..io.sample import Sample
from .base import Fingerprint, Step

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "CTNormalize", "RGBNormalize", "ZScore"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per channel (R, G, B) mean of ImageNet's training images on a 0-1 scale (torchvision's numbers)."""
IMAGENET_STD = (0.229, 0.224, 0.225)


class ZScore(Step):
    """Per channel and per case: subtract the mean, divide by the standard deviation.

    Args:
        nonzero: compute the statistics over non-zero voxels only and leave zeros at zero
            (for skull-stripped MRI, where the background is exactly zero).

    Example:
        >>> ZScore()
        ZScore(nonzero=False)
    """

    name = "zscore"

    def __init__(self, *, nonzero: bool = False) -> None:
        self.nonzero = bool(nonzero)

    def __call__(self, sample: Sample) -> Sample:
        image = np.empty_like(sample.image, dtype=np.float32)
        for c, channel in enumerate(sample.image):
            mask = channel != 0 if self.nonzero else np.ones(channel.shape, bool)
            values = channel[mask] if mask.any() else channel.ravel()
            mean, std = float(values.mean()), float(values.std())
            image[c] = (channel - mean) / max(std, 1e-8)
            if self.nonzero:
                image[c][~mask] = 0.0
        return sample.replace(image=image)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "nonzero": self.nonzero}


class CTNormalize(Step):
    """nnU-Net's CT scheme: clip to the dataset's foreground 0.5-99.5 percentiles, then z-score
    with the foreground mean and standard deviation (the same numbers for every case).

    Args:
        clip: per channel ``(low, high)``; ``None`` until fitted.
        mean: per channel foreground mean.
        std: per channel foreground standard deviation.
    """

    name = "ct"

    def __init__(
        self,
        *,
        clip: Sequence[Sequence[float]] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.clip = None if clip is None else [tuple(map(float, c)) for c in clip]
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]

    def fit(self, fingerprint: Fingerprint) -> CTNormalize:
        if self.clip is not None:
            return self
        if not fingerprint.intensity:
            raise ValueError("CTNormalize needs foreground intensity statistics; plan with modality CT.")
        stats = fingerprint.intensity
        return CTNormalize(
            clip=[(s["p00_5"], s["p99_5"]) for s in stats],
            mean=[s["mean"] for s in stats],
            std=[s["std"] for s in stats],
        )

    def __call__(self, sample: Sample) -> Sample:
        if self.clip is None or self.mean is None or self.std is None:
            raise RuntimeError("CTNormalize must be fitted on a dataset (or given clip/mean/std).")
        image = np.empty_like(sample.image, dtype=np.float32)
        for c, channel in enumerate(sample.image):
            low, high = self.clip[c]
            image[c] = (np.clip(channel, low, high) - self.mean[c]) / max(self.std[c], 1e-8)
        return sample.replace(image=image)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "clip": self.clip, "mean": self.mean, "std": self.std}


class RGBNormalize(Step):
    """8-bit RGB photographs: ``(x / 255 - mean) / std`` per channel with ImageNet's statistics
    (what pretrained encoders and the VOC/Cityscapes literature use), or per image.

    Args:
        statistics: ``"imagenet"`` (the same numbers for every image) or ``"image"`` (each
            image's own per-channel mean and standard deviation, as :class:`ZScore`).
        mean: per channel mean on the 0-1 scale (default ImageNet's).
        std: per channel standard deviation on the 0-1 scale (default ImageNet's).

    Example:
        >>> RGBNormalize().mean
        [0.485, 0.456, 0.406]
    """

    name = "rgb"

    def __init__(self, *, statistics: str = "imagenet", mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        if statistics not in ("imagenet", "image"):
            raise ValueError(f"statistics={statistics!r}: choose 'imagenet' or 'image'.")
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean {list(mean)} and std {list(std)}: one value per channel, std > 0.")
        self.statistics = statistics
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def __call__(self, sample: Sample) -> Sample:
        if self.statistics == "image":
            return ZScore()(sample)
        if sample.image.shape[0] != len(self.mean):
            raise ValueError(f"case {sample.id!r}: {sample.image.shape[0]} channel(s), RGBNormalize has statistics "
                             f"for {len(self.mean)}; use statistics='image' or give mean= and std=.")
        shape = (-1,) + (1,) * (sample.image.ndim - 1)
        mean, std = np.asarray(self.mean, np.float32).reshape(shape), np.asarray(self.std, np.float32).reshape(shape)
        return sample.replace(image=((sample.image / np.float32(255.0) - mean) / std).astype(np.float32))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "statistics": self.statistics, "mean": self.mean, "std": self.std}
