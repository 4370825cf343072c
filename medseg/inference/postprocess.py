"""Postprocessing: network probabilities to the dataset's label values, and cleaning label maps."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from ..io.labels import LabelSpec
from ..io.sample import Sample
from ..preprocessing.base import invert_labels

__all__ = ["keep_largest_component", "keep_largest_region_component", "to_label_values"]


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


def keep_largest_region_component(masks: np.ndarray, regions: Iterable[int] | None = None) -> np.ndarray:
    """Keep, in each region mask of ``(R, *spatial)`` booleans (or those at positions
    ``regions``), only its largest component."""
    out = np.array(masks, dtype=bool)
    structure = np.ones((3,) * (out.ndim - 1), dtype=bool)
    for position in range(len(out)) if regions is None else regions:
        region = out[position]
        components, count = ndimage.label(region, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            region &= components == int(sizes.argmax())
    return out


def to_label_values(
    probabilities: np.ndarray,
    spec: LabelSpec,
    *,
    prepared: Sample | None = None,
    largest_component: bool | Sequence[int] = False,
) -> np.ndarray:
    """The dataset's label map from network probabilities; never holds the ignore value.

    Classes: the argmax over the class channels (the ignore label is no channel), written back
    with :meth:`LabelSpec.decode`. Regions: each sigmoid channel above 0.5, written with
    :meth:`LabelSpec.regions_to_values` (later regions overwrite earlier ones, nnU-Net's rule).

    Args:
        probabilities: ``(out_channels, *spatial)`` on the preprocessed grid of ``prepared``.
        spec: what the channels mean.
        prepared: the preprocessed sample whose history to undo (one channel at a time); ``None``
            keeps the grid of ``probabilities``.
        largest_component: keep each class's (region's) largest connected component; a sequence
            names the classes to clean by their keys in ``spec.scored`` (class values; for
            regions, their ``regions_class_order`` values) and leaves the others as they are.

    Returns:
        ``(*spatial)`` dataset values, on the original grid when ``prepared`` is given.

    Example:
        >>> spec = LabelSpec((0, 1, 4))
        >>> to_label_values(np.array([[0.9, 0.1], [0.05, 0.2], [0.05, 0.7]]), spec).tolist()
        [0, 4]
    """
    which = _cleaned(largest_component, spec)
    if spec.is_regions:
        masks = probabilities > 0.5 if prepared is None else invert_labels(probabilities, prepared, reduce="threshold")
        if which is None or which:
            masks = keep_largest_region_component(masks, which)
        return spec.regions_to_values(masks)
    indices = probabilities.argmax(0) if prepared is None else invert_labels(probabilities, prepared)
    if which is None or which:
        indices = keep_largest_component(indices, which)
    return spec.decode(indices)


def _cleaned(largest_component: bool | Sequence[int], spec: LabelSpec) -> list[int] | None:
    """The channels (class indices or region positions) to clean: ``None`` for all, ``[]`` for none."""
    if isinstance(largest_component, (bool, np.bool_)):
        return None if largest_component else []
    keys = list(spec.regions_class_order if spec.is_regions else spec.values)
    unknown = [int(k) for k in largest_component if int(k) not in spec.scored]
    if unknown:
        raise ValueError(f"largest_component={list(largest_component)}: {unknown} are not among the scored "
                         f"classes {sorted(spec.scored)}.")
    return sorted(keys.index(int(k)) for k in largest_component)
