"""Overlap (region) losses: Dice, generalised Dice, Jaccard and Tversky.

With ``p`` the softmax probabilities and ``g`` the one-hot target, each loss sums
``p * g``, ``p`` and ``g`` over the spatial axes of one sample and class (and over the batch
when ``batch=True``), scores each class, and averages over classes and samples. Ignored voxels
(target :data:`~medseg.losses.base.IGNORE_INDEX`) are left out of every sum. With ``batch=True``
and ``sync=True`` in a distributed run the sums cover the global batch of every process (nnU-Net's
DDP batch Dice).
"""

from __future__ import annotations

import torch

from medseg.errors import look_up_option
from medseg.losses.base import (
    Loss,
    as_labels,
    check_flag,
    check_number,
    one_hot,
    spatial_axes,
    valid_mask,
)

__all__ = [
    "DiceLoss",
    "GeneralizedDiceLoss",
    "JaccardLoss",
    "TverskyLoss",
    "probabilities_and_one_hot",
]


def probabilities_and_one_hot(
    logits: torch.Tensor, target: torch.Tensor, include_background: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax ``p`` and one-hot ``g``, both float32 ``(B, C', *spatial)``.

    ``C' = C`` or ``C - 1`` when the background channel 0 is left out. Both are 0 at ignored
    voxels, so they add nothing to any sum (nor to the gradient).
    """
    labels = as_labels(logits, target)
    probs = torch.softmax(logits.float(), dim=1) * valid_mask(labels).unsqueeze(1)
    truth = one_hot(labels, logits.shape[1])
    if not include_background:
        probs, truth = probs[:, 1:], truth[:, 1:]
    return probs, truth


def global_sums(sums: tuple[torch.Tensor, ...], enabled: bool) -> tuple[torch.Tensor, ...]:
    """``sums`` added over every process of a distributed run when ``enabled`` (one collective,
    autograd-aware), else as they are: what a batch loss's ``sync`` does."""
    if not enabled:
        return sums
    from medseg.training.distributed import all_reduce_sum

    return tuple(all_reduce_sum(torch.stack(sums)).unbind(0))


class _RegionLoss(Loss):
    """Shared constructor and sums of the overlap losses."""

    sync = False
    """With ``batch``: add the sums of every process of a distributed run (autograd-aware), so
    the loss is that of the global batch. The trainer turns it on under ``torchrun``; a run of
    one process is unchanged. Not a constructor argument: a saved recipe stays the same."""

    def __init__(
        self, include_background: bool = True, smooth: float = 1e-5, batch: bool = False
    ) -> None:
        super().__init__()
        self.include_background = check_flag(include_background, "include_background")
        self.smooth = check_number(smooth, "smooth")
        self.batch = check_flag(batch, "batch")

    def _sums(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``sum(pg), sum(p), sum(g)``, each ``(B, C')``, or ``(C',)`` when ``batch``."""
        probs, truth = probabilities_and_one_hot(logits, target, self.include_background)
        axes = spatial_axes(probs, self.batch)
        return global_sums(((probs * truth).sum(axes), probs.sum(axes), truth.sum(axes)), self.batch and self.sync)

    def extra_repr(self) -> str:
        return f"include_background={self.include_background}, smooth={self.smooth}, batch={self.batch}"


class DiceLoss(_RegionLoss):
    """Soft Dice loss ``1 - (2 sum(pg) + smooth) / (sum(p) + sum(g) + smooth)`` (Milletari 2016).

    Args:
        include_background: keep class 0 in the average.
        smooth: added to numerator and denominator (an absent class predicted absent scores 0).
        batch: sum over the whole batch before dividing (one score per class).

    Example:
        >>> loss = DiceLoss()
        >>> loss(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))).shape
        torch.Size([])
    """

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor
    ) -> torch.Tensor:
        """Args: logits ``(B, C, *spatial)``, target ``(B, [1,] *spatial)``. Returns a scalar."""
        inter, sum_p, sum_g = self._sums(logits, target)
        return (1.0 - (2.0 * inter + self.smooth) / (sum_p + sum_g + self.smooth)).mean()


class JaccardLoss(_RegionLoss):
    """Soft Jaccard (IoU) loss ``1 - (sum(pg) + smooth) / (sum(p) + sum(g) - sum(pg) + smooth)``.

    Args:
        include_background: keep class 0 in the average.
        smooth: added to numerator and denominator.
        batch: sum over the whole batch before dividing.

    Example:
        >>> JaccardLoss()(torch.randn(1, 2, 8, 8, 8), torch.randint(0, 2, (1, 8, 8, 8))).ndim
        0
    """

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor
    ) -> torch.Tensor:
        """Args: logits ``(B, C, *spatial)``, target ``(B, [1,] *spatial)``. Returns a scalar."""
        inter, sum_p, sum_g = self._sums(logits, target)
        return (1.0 - (inter + self.smooth) / (sum_p + sum_g - inter + self.smooth)).mean()


class TverskyLoss(_RegionLoss):
    """Tversky loss (Salehi et al. 2017), a Dice that weighs false positives and negatives apart.

    ``1 - (TP + smooth) / (TP + alpha FP + beta FN + smooth)`` with ``TP = sum(pg)``,
    ``FP = sum(p (1 - g))``, ``FN = sum((1 - p) g)``; ``alpha = beta = 0.5`` is Dice.

    Args:
        alpha: weight of the false positives (>= 0).
        beta: weight of the false negatives (>= 0); ``beta > alpha`` favours recall.
        include_background: keep class 0 in the average.
        smooth: added to numerator and denominator.
        batch: sum over the whole batch before dividing.

    Example:
        >>> TverskyLoss(alpha=0.3, beta=0.7)(torch.randn(2, 3, 8, 8), torch.zeros(2, 8, 8)).ndim
        0
    """

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        include_background: bool = True,
        smooth: float = 1e-5,
        batch: bool = False,
    ) -> None:
        super().__init__(include_background, smooth, batch)
        self.alpha = check_number(alpha, "alpha")
        self.beta = check_number(beta, "beta")

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor
    ) -> torch.Tensor:
        """Args: logits ``(B, C, *spatial)``, target ``(B, [1,] *spatial)``. Returns a scalar."""
        tp, sum_p, sum_g = self._sums(logits, target)
        false_pos, false_neg = sum_p - tp, sum_g - tp
        denominator = tp + self.alpha * false_pos + self.beta * false_neg + self.smooth
        return (1.0 - (tp + self.smooth) / denominator).mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, " + super().extra_repr()


class GeneralizedDiceLoss(_RegionLoss):
    """Generalised Dice loss (Sudre et al. 2017): one Dice over classes weighted by volume.

    ``1 - (2 sum_c w_c sum(pg) + smooth) / (sum_c w_c (sum(p) + sum(g)) + smooth)`` per sample,
    with ``w_c = 1 / sum(g_c)^2`` (``weight_type="square"``), ``1 / sum(g_c)`` (``"simple"``) or 1
    (``"uniform"``). A class absent from the target would get an infinite weight; like MONAI it
    gets the largest finite weight of the sample instead (of the batch when ``batch``), so
    predicting an absent class is still penalised. Unlike MONAI the weights are then scaled to
    sum to 1, which leaves the ratio unchanged but keeps ``smooth`` negligible on large patches
    (MONAI's unscaled ``1 / sum(g)^2`` falls below ``smooth`` from ~1e5 voxels on).

    Args:
        include_background: keep class 0.
        smooth: added to numerator and denominator.
        batch: sum over the whole batch (one score for the batch).
        weight_type: ``"square"``, ``"simple"`` or ``"uniform"``.

    Example:
        >>> GeneralizedDiceLoss()(torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))).ndim
        0
    """

    def __init__(
        self,
        include_background: bool = True,
        smooth: float = 1e-5,
        batch: bool = False,
        weight_type: str = "square",
    ) -> None:
        super().__init__(include_background, smooth, batch)
        self.weight_type = look_up_option(
            weight_type, ("square", "simple", "uniform"), argument="weight_type"
        )

    def class_weights(self, sum_g: torch.Tensor) -> torch.Tensor:
        """Normalised class weights from the class volumes ``(..., C')``."""
        if self.weight_type == "uniform":
            weights = torch.ones_like(sum_g)
        else:
            weights = 1.0 / (sum_g * sum_g if self.weight_type == "square" else sum_g)
        absent = torch.isinf(weights)
        weights = weights.masked_fill(absent, 0.0)
        weights = weights + absent * weights.amax(dim=-1, keepdim=True)
        return weights / weights.sum(dim=-1, keepdim=True).clamp_min(
            torch.finfo(weights.dtype).tiny
        )

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor
    ) -> torch.Tensor:
        """Args: logits ``(B, C, *spatial)``, target ``(B, [1,] *spatial)``. Returns a scalar."""
        inter, sum_p, sum_g = self._sums(logits, target)
        weights = self.class_weights(sum_g)
        numerator = 2.0 * (weights * inter).sum(-1) + self.smooth
        denominator = (weights * (sum_p + sum_g)).sum(-1) + self.smooth
        return (1.0 - numerator / denominator).mean()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight_type={self.weight_type!r}"
