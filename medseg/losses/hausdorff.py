"""Hausdorff-distance loss from distance transforms (Karimi & Salcudean 2019)."""

from __future__ import annotations

import numpy as np
import torch

from medseg.losses.base import Loss, as_labels, check_flag, check_number, one_hot, valid_mask
from medseg.losses.distance import (
    batch_maps,
    check_spacing,
    class_maps,
    extra_or_none,
    unsigned_distance,
)

__all__ = ["HausdorffDTLoss"]


class HausdorffDTLoss(Loss):
    """The mean of ``(p - g)^2 (d_g^alpha + d_p^alpha)`` over voxels, classes and samples.

    Karimi & Salcudean (2019), "Reducing the Hausdorff distance in medical image segmentation
    with convolutional neural networks". ``d_g`` is the distance field of the target's class
    mask and ``d_p`` that of ``p > 0.5``: inside a mask the distance to the background, outside
    the distance to the mask, 0 for an empty or full mask (as MONAI's ``HausdorffDTLoss``, which
    this equals at unit spacing). ``d_p`` depends on the prediction, so it is computed in
    ``forward`` on the CPU, without gradient; ``d_g`` comes precomputed. Ignored voxels are left
    out: the mean runs over the other voxels, and both fields know only them.

    Args:
        alpha: exponent of the distances (> 0).
        include_background: keep class 0.

    Extras:
        target_distance: ``(B, C, *spatial)`` ``d_g`` of all ``C`` classes from
            :meth:`precompute` (computed from the target when absent).
        spacing: ``(B, ndim)`` voxel spacing of each sample, used for ``d_p`` (and ``d_g`` when
            computed here); unit spacing when absent.

    Example:
        >>> HausdorffDTLoss()(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).ndim
        0
    """

    def __init__(self, alpha: float = 2.0, include_background: bool = False) -> None:
        super().__init__()
        self.alpha = check_number(alpha, "alpha", strict=True)
        self.include_background = check_flag(include_background, "include_background")

    def precompute(
        self, target: np.ndarray, num_classes: int, spacing: tuple[float, ...] | None = None
    ) -> dict[str, np.ndarray]:
        """``{"target_distance": (C, *spatial), "spacing": (ndim,)}`` of one sample.

        See :meth:`Loss.precompute`; the spacing travels along because ``forward`` needs it for
        the prediction's distance field.
        """
        target = np.asarray(target)
        spacing = check_spacing(spacing, target.ndim)
        maps = class_maps(unsigned_distance, target, range(num_classes), spacing)
        sizes = np.ones(target.ndim) if spacing is None else np.asarray(spacing)
        return {"target_distance": maps, "spacing": sizes.astype(np.float32)}

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor
    ) -> torch.Tensor:
        """Args: logits ``(B, C, *spatial)``, target ``(B, [1,] *spatial)``. Returns a scalar."""
        labels = as_labels(logits, target)
        start = 0 if self.include_background else 1
        valid = valid_mask(labels)
        probs = torch.softmax(logits.float(), dim=1)[:, start:] * valid.unsqueeze(1)
        truth = one_hot(labels, logits.shape[1])[:, start:]
        spacing = extras.get("spacing")
        target_distance = extra_or_none(extras, "target_distance", logits)
        if target_distance is None:
            target_distance = batch_maps(unsigned_distance, truth > 0.5, spacing, valid)
        else:
            target_distance = target_distance[:, start:]
        pred_distance = batch_maps(unsigned_distance, probs.detach() > 0.5, spacing, valid)
        distance = target_distance**self.alpha + pred_distance**self.alpha
        total = ((probs - truth) ** 2 * distance).sum()
        return total / (valid.sum() * probs.shape[1]).clamp_min(1)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, include_background={self.include_background}"
