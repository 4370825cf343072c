"""Postprocessing of label maps."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

__all__ = ["keep_largest_component"]


def keep_largest_component(labels: np.ndarray, classes: Iterable[int] | None = None) -> np.ndarray:
    """Keep, for each class, only its largest connected component (full connectivity);
    the removed voxels become background.

    Args:
        labels: an integer label map ``(*spatial)``.
        classes: the classes to clean (default: every non-zero class present).

    Example:
        >>> keep_largest_component(np.array([1, 1, 0, 1]))
        array([1, 1, 0, 0])
    """
    out = labels.copy()
    classes = [c for c in np.unique(labels) if c != 0] if classes is None else list(classes)
    structure = np.ones((3,) * labels.ndim, dtype=bool)
    for cls in classes:
        components, count = ndimage.label(labels == cls, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            out[(components != int(sizes.argmax())) & (labels == cls)] = 0
    return out
