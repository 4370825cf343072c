"""Score a prediction in a dataset's own label values against a reference read by medseg.

A :class:`~medseg.io.Dataset` with a :class:`~medseg.io.labels.LabelSpec` reads a reference as
class indices (:data:`~medseg.io.labels.IGNORE_INDEX` where ignored); a Pipeline writes
predictions in the dataset's values. :func:`score_prediction` scores what the spec says is scored
(``spec.scored``): each foreground class, keyed by its value, or each region, keyed by its
``regions_class_order`` value, where a region of a map is the voxels whose values lie in the
region (nnU-Net's rule). Ignored voxels are scored by no metric (``compute_metrics``' ``ignore``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..io.labels import IGNORE_INDEX, LabelSpec
from .metrics import Target, compute_metrics, dice_per_label

__all__ = ["score_prediction"]


def score_prediction(
    prediction: np.ndarray,
    reference: np.ndarray,
    spec: LabelSpec,
    *,
    spacing: Sequence[float] | None = None,
    metrics: bool = False,
) -> dict[int, dict[str, float]]:
    """Per scored class or region: Dice (or every metric of ``compute_metrics``).

    Args:
        prediction: ``(*spatial)`` dataset values (what a Pipeline writes).
        reference: ``(*spatial)`` class indices with ``IGNORE_INDEX`` (what ``Dataset.load`` gives).
        spec: the dataset's classes.
        spacing: voxel spacing (for the surface metrics).
        metrics: every metric; ``False`` scores Dice only (one pass, fast).

    Returns:
        ``{value: {metric: score}}`` keyed as ``spec.scored``.

    Example:
        >>> spec = LabelSpec((0, 1, 4))
        >>> score_prediction(np.array([0, 4, 4, 1]), np.array([0, 2, -1, 1]), spec)
        {1: {'dice': 1.0}, 4: {'dice': 1.0}}
    """
    prediction = np.asarray(prediction)
    reference = np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape; "
                         "score a prediction on the grid its reference was read on.")
    values = np.where(reference == IGNORE_INDEX, IGNORE_INDEX, spec.decode(reference).astype(np.int32))
    targets: dict[int, Target] = {value: value for value in spec.scored_values}
    if spec.is_regions:  # a region of a map: the voxels whose values lie in it
        targets = {key: tuple(spec.values[i] for i in region)
                   for key, region in zip(spec.regions_class_order, spec.regions, strict=True)}
    if metrics:
        scores = compute_metrics(prediction, values, spacing=spacing, labels=list(targets.values()),
                                 ignore=IGNORE_INDEX)
        return {key: scores[target] for key, target in targets.items()}
    dice = dice_per_label(prediction, values, list(targets.values()), ignore=IGNORE_INDEX)
    return {key: {"dice": dice[target]} for key, target in targets.items()}
