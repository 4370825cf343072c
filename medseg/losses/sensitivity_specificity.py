"""Sensitivity-specificity loss (Brosch et al. 2015)."""

from __future__ import annotations

import torch

from medseg.losses.base import as_labels, check_number, spatial_axes, valid_mask
from medseg.losses.dice import _RegionLoss, global_sums, probabilities_and_one_hot

__all__ = ["SensitivitySpecificityLoss"]


class SensitivitySpecificityLoss(_RegionLoss):
    """A mix of squared errors on the object (sensitivity) and around it (specificity).

    Per sample and class,
    ``r * sum((g - p)^2 g) / (sum(g) + smooth) + (1 - r) * sum((g - p)^2 (1 - g)) / (sum(1 - g) + smooth)``,
    averaged over classes and samples; ignored voxels are in neither term (Brosch et al. 2015, "Deep convolutional encoder networks
    for multiple sclerosis lesion segmentation"; they use ``r = 0.05`` for small lesions).

    Args:
        r: weight of the sensitivity term, in ``[0, 1]``.
        include_background: keep class 0 in the average.
        smooth: added to both denominators.
        batch: sum over the whole batch before dividing.

    Example:
        >>> loss = SensitivitySpecificityLoss(r=0.05)
        >>> loss(torch.randn(2, 3, 8, 8, 8), torch.randint(0, 3, (2, 8, 8, 8))).ndim
        0
    """

    def __init__(
        self,
        r: float = 0.05,
        include_background: bool = True,
        smooth: float = 1e-5,
        batch: bool = False,
    ) -> None:
        super().__init__(include_background, smooth, batch)
        self.r = check_number(r, "r")
        if self.r > 1.0:
            raise ValueError(f"r must lie in [0, 1], got {r!r}.")

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor
    ) -> torch.Tensor:
        """Args: logits ``(B, C, *spatial)``, target ``(B, [1,] *spatial)``. Returns a scalar."""
        probs, truth = probabilities_and_one_hot(logits, target, self.include_background)
        axes = spatial_axes(probs, self.batch)
        valid = valid_mask(as_labels(logits, target)).unsqueeze(1).float()
        squared = (truth - probs) ** 2
        on_object, volume, squared_sum, valid_sum = global_sums(
            ((squared * truth).sum(axes), truth.sum(axes), squared.sum(axes), valid.expand_as(truth).sum(axes)),
            self.batch and self.sync)
        off_object = squared_sum - on_object
        background = valid_sum - volume
        sensitivity = on_object / (volume + self.smooth)
        specificity = off_object / (background + self.smooth)
        return (self.r * sensitivity + (1.0 - self.r) * specificity).mean()

    def extra_repr(self) -> str:
        return f"r={self.r}, " + super().extra_repr()

