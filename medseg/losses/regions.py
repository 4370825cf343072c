"""Region losses for sigmoid outputs: one channel per (possibly overlapping) region.

A region is a set of class indices (BraTS' whole tumour = edema + necrosis + enhancing); a
network trained on regions has one output channel per region and a sigmoid on each, and its
targets are the region masks of the class-index label map, made here on the labels' device.
nnU-Net trains such networks with ``DC_and_BCE_loss``: binary cross-entropy with logits plus a
soft Dice on the sigmoid, which is ``create_loss("region_dice+bce", ...)``. Ignored voxels
(:data:`~medseg.losses.base.IGNORE_INDEX`) are left out of both.

Example:
    >>> loss = RegionDiceLoss(regions=[(1, 2), (2,)]) + RegionBCELoss(regions=[(1, 2), (2,)])
    >>> loss(torch.randn(2, 2, 8, 8), torch.randint(0, 3, (2, 8, 8))).ndim
    0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.losses.base import IGNORE_INDEX, Loss, check_flag, check_number, spatial_axes
from medseg.losses.dice import global_sums

__all__ = ["RegionBCELoss", "RegionDiceLoss", "loss_activation"]


def _check_regions(regions: Sequence[Sequence[int]] | None) -> tuple[tuple[int, ...], ...] | None:
    if regions is None:
        return None
    try:
        checked = tuple(tuple(int(i) for i in region) for region in regions)
    except (TypeError, ValueError) as error:
        raise ValueError(f"regions must be sequences of class indices, got {regions!r}.") from error
    if not checked or any(not region or min(region) < 1 for region in checked):
        raise ValueError(f"regions must be non-empty sequences of class indices >= 1, got {regions!r}.")
    return checked


class _SigmoidLoss(Loss):
    """Shared target handling: class indices -> ``(B, R, *spatial)`` region masks."""

    activation = "sigmoid"

    def __init__(self, regions: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        self.regions = _check_regions(regions)

    def targets(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Region masks ``(B, R, *spatial)`` and the voxels not ignored ``(B, 1, *spatial)``, float32.

        Without ``regions`` channel ``r`` is the class ``r + 1`` (one-vs-rest sigmoids).
        """
        if logits.ndim < 3:
            raise ValueError(f"logits must be (B, R, *spatial), got shape {tuple(logits.shape)}.")
        regions = self.regions or tuple((r + 1,) for r in range(logits.shape[1]))
        if len(regions) != logits.shape[1]:
            raise ValueError(f"logits have {logits.shape[1]} channels but the loss has {len(regions)} "
                             f"regions {list(regions)}; the network needs one output per region.")
        if target.ndim == logits.ndim and target.shape[1] == 1:
            target = target[:, 0]
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"target shape {tuple(target.shape)} does not match logits "
                             f"{tuple(logits.shape)}; expected class indices (B, *spatial).")
        if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
            raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}.")
        labels = target.long()
        masks = torch.stack([torch.isin(labels, torch.tensor(r, device=labels.device)) for r in regions], 1)
        return masks.float(), (labels != IGNORE_INDEX).unsqueeze(1).float()

    def extra_repr(self) -> str:
        return f"regions={self.regions}"


class RegionBCELoss(_SigmoidLoss):
    """Binary cross-entropy with logits of each region, averaged over voxels and regions.

    Args:
        regions: class indices per output channel (default: channel ``r`` is class ``r + 1``).

    Example:
        >>> RegionBCELoss(regions=[(1, 2), (2,)])(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4)).item()
        0.6931...
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        """Args: logits ``(B, R, *spatial)``, target class indices ``(B, [1,] *spatial)``."""
        masks, valid = self.targets(logits, target)
        voxel = F.binary_cross_entropy_with_logits(logits.float(), masks, reduction="none") * valid
        return voxel.sum() / (valid.sum() * logits.shape[1]).clamp_min(1.0)


class RegionDiceLoss(_SigmoidLoss):
    """Soft Dice of each region's sigmoid, ``1 - mean((2 sum(pg) + smooth) / (sum(p) + sum(g) + smooth))``.

    Args:
        regions: class indices per output channel (default: channel ``r`` is class ``r + 1``).
        smooth: added to numerator and denominator.
        batch: sum over the whole batch before dividing (nnU-Net's ``batch_dice``).

    Example:
        >>> RegionDiceLoss()(torch.randn(2, 3, 8, 8), torch.randint(0, 4, (2, 8, 8))).ndim
        0
    """

    sync = False
    """With ``batch``: the sums cover the global batch of a distributed run (see DiceLoss)."""

    def __init__(self, regions: Sequence[Sequence[int]] | None = None, smooth: float = 1e-5,
                 batch: bool = False) -> None:
        super().__init__(regions)
        self.smooth = check_number(smooth, "smooth")
        self.batch = check_flag(batch, "batch")

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        """Args: logits ``(B, R, *spatial)``, target class indices ``(B, [1,] *spatial)``."""
        masks, valid = self.targets(logits, target)
        probs = torch.sigmoid(logits.float()) * valid
        axes = spatial_axes(probs, self.batch)
        inter, sum_p, sum_g = global_sums(((probs * masks).sum(axes), probs.sum(axes), masks.sum(axes)),
                                          self.batch and self.sync)
        return (1.0 - (2.0 * inter + self.smooth) / (sum_p + sum_g + self.smooth)).mean()

    def extra_repr(self) -> str:
        return f"regions={self.regions}, smooth={self.smooth}, batch={self.batch}"


def loss_activation(loss: nn.Module | type) -> str:
    """``"sigmoid"`` for a region loss, ``"softmax"`` for a class loss (and any other module).

    Raises:
        ValueError: a compound that mixes the two.
    """
    parts = getattr(loss, "losses", None)
    if parts is None:
        return getattr(loss, "activation", "softmax")
    kinds = {loss_activation(part) for part in parts}
    if len(kinds) > 1:
        raise ValueError("the loss mixes region (sigmoid) and class (softmax) parts; use one kind: "
                         "'region_dice+bce' for regions, e.g. 'dice+ce' for classes.")
    return kinds.pop()
