"""Patch sampling and augmentation, fed by worker processes."""

from .augmentation import AUGMENTATIONS, Augmentation, create_augmentation
from .loader import PatchStream, make_loader
from .patch import PatchSampler, crop

__all__ = [
    "AUGMENTATIONS",
    "Augmentation",
    "PatchSampler",
    "PatchStream",
    "create_augmentation",
    "crop",
    "make_loader",
]
