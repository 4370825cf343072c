"""Boundary loss (Kervadec et al. 2019)."""

from __future__ import annotations

import numpy as np
import torch

from medseg.losses.base import Loss, as_labels, check_flag, one_hot, valid_mask
from medseg.losses.distance import (
    batch_maps,
    check_spacing,
    class_maps,
    extra_or_none,
    signed_distance,
)

__all__ = ["BoundaryLoss"]


class BoundaryLoss(Loss):
    """The mean of ``p`` times the target's signed distance map, per class.

    Kervadec et al. (2019), "Boundary loss for highly unbalanced segmentation". Outside a class's
    object the map is the distance to it, inside it is minus (the distance to the background
    minus one voxel step), and it is 0 for a class absent from, or filling, the sample (see
    :func:`~medseg.losses.distance.signed_distance`). The loss is the mean of ``p * map`` over
    voxels, classes and samples; it can be negative and is used next to a region loss, for
    instance with Kervadec's schedule (``create_loss("dice+boundary")``). With unit spacing it
    equals MONAI's ``BoundaryLoss(softmax=True, to_onehot_y=True)``; with spacing, Kervadec's
    code subtracts 1 (mm) inside where this subtracts the smallest spacing. Ignored voxels are left
    out: the mean runs over the other voxels, and distances are measured to known voxels only.

    Args:
        include_background: keep class 0.

    Extras:
        signed_distance: ``(B, C, *spatial)`` maps of all ``C`` classes from :meth:`precompute`
            (computed from the target when absent, with ``spacing`` ``(B, ndim)`` if given).

    Example:
        >>> BoundaryLoss()(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).ndim
        0
    """

    def __init__(self, include_background: bool = False) -> None:
        super().__init__()
        self.include_background = check_flag(include_background, "include_background")

    def precompute(
        self, target: np.ndarray, num_classes: int, spacing: tuple[float, ...] | None = None
    ) -> dict[str, np.ndarray]:
        """``{"signed_distance": (C, *spatial)}`` of one sample (see :meth:`Loss.precompute`)."""
        target = np.asarray(target)
        spacing = check_spacing(spacing, target.ndim)
        return {"signed_distance": class_maps(signed_distance, target, range(num_classes), spacing)}

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor
    ) -> torch.Tensor:
        """Args: logits ``(B, C, *spatial)``, target ``(B, [1,] *spatial)``. Returns a scalar."""
        labels = as_labels(logits, target)
        start = 0 if self.include_background else 1
        valid = valid_mask(labels)
        probs = torch.softmax(logits.float(), dim=1)[:, start:] * valid.unsqueeze(1)
        distances = extra_or_none(extras, "signed_distance", logits)
        if distances is None:
            masks = one_hot(labels, logits.shape[1])[:, start:] > 0.5
            distances = batch_maps(signed_distance, masks, extras.get("spacing"), valid)
        else:
            distances = distances[:, start:]
        return (probs * distances).sum() / (valid.sum() * probs.shape[1]).clamp_min(1)

    def extra_repr(self) -> str:
        return f"include_background={self.include_background}"
