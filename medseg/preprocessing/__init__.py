"""Preprocessing steps ``Sample -> Sample`` that invert their grid changes for predictions."""

from __future__ import annotations

from typing import Any

from ..errors import look_up_option
from .base import Fingerprint, Step, invert, invert_labels, preprocess
from .crop import CropForeground, Pad
from .normalize import CTNormalize, RGBNormalize, ZScore
from .resample import Resample, resize

__all__ = [
    "CTNormalize",
    "CropForeground",
    "Fingerprint",
    "Pad",
    "RGBNormalize",
    "Resample",
    "STEPS",
    "Step",
    "ZScore",
    "create_step",
    "invert",
    "invert_labels",
    "preprocess",
    "resize",
]

STEPS: dict[str, type[Step]] = {
    cls.name: cls for cls in (Resample, CropForeground, Pad, ZScore, CTNormalize, RGBNormalize)
}


def create_step(name: str, **kwargs: Any) -> Step:
    """Build a step from its registry name and settings (``step.config()`` round-trips)."""
    return STEPS[look_up_option(name, STEPS, argument="preprocessing step")](**kwargs)
