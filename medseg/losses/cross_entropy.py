"""Voxel-wise losses: cross-entropy and its focal, top-k and distance-penalised variants.

Every mean runs over the voxels that are not ignored (target :data:`~medseg.losses.base.IGNORE_INDEX`);
a batch with no such voxel gives 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medseg.losses.base import IGNORE_INDEX, Loss, as_labels, check_number, valid_mask
from medseg.losses.distance import boundary_penalty, check_spacing, extra_or_none, spacings_of

__all__ = ["CrossEntropyLoss", "DistancePenalizedCELoss", "FocalLoss", "TopKLoss"]


def _class_weights(values: Sequence[float] | None, argument: str) -> torch.Tensor | None:
    """A float32 vector of non-negative class weights, or None."""
    if values is None:
        return None
    try:
        weights = torch.as_tensor(
            np.asarray(values, dtype=np.float64), dtype=torch.float32
        ).reshape(-1)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{argument} must be a sequence of numbers, one per class, got {values!r}."
        ) from error
    if weights.numel() < 2 or not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(
            f"{argument} must hold >= 2 finite non-negative numbers (one per class), got {values!r}."
        )
    return weights


def _voxel_ce(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-voxel cross-entropy ``(B, *spatial)``, 0 (and no gradient) at ignored voxels."""
    return F.cross_entropy(logits.float(), labels, weight=weight, reduction="none", ignore_index=IGNORE_INDEX)


def _mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(values) / sum(weights)``, 0 when the weights are all 0 (an all-ignored batch)."""
    return values.sum() / weights.sum().clamp_min(torch.finfo(torch.float32).tiny)


def _check_length(weights: torch.Tensor | None, logits: torch.Tensor, argument: str) -> None:
    if weights is not None and weights.numel() != logits.shape[1]:
        raise ValueError(
            f"{argument} has {weights.numel()} entries but the logits have {logits.shape[1]} classes."
        )


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy, averaged over voxels (torch's weighted mean with ``weight``).

    Args:
        weight: optional class weights ``(C,)``; the mean is then ``sum(w_y CE) / sum(w_y)``.

    Example:
        >>> CrossEntropyLoss(weight=[0.2, 1.0, 1.0])(torch.randn(2, 3, 8, 8), torch.zeros(2, 8, 8)).ndim
        0
    """

    def __init__(self, weight: Sequence[float] | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", _class_weights(weight, "weight"))

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor
    ) -> torch.Tensor:
        """Args: logits ``(B, C, *spatial)``, target ``(B, [1,] *spatial)``. Returns a scalar."""
        labels = as_labels(logits, target)
        _check_length(self.weight, logits, "weight")
        weight = None if self.weight is None else self.weight.to(logits.device)
        valid = valid_mask(labels)
        voxel_weight = valid.float() if weight is None else weight[labels.clamp_min(0)] * valid
        return _mean(_voxel_ce(logits, labels, weight), voxel_weight)

    def extra_repr(self) -> str:
        return "" if self.weight is None else f"weight={self.weight.tolist()}"


class FocalLoss(Loss):
    """Focal loss (Lin et al. 2017): the mean over voxels of ``-alpha_y (1 - p_y)^gamma log p_y``.

    ``p_y`` is the softmax probability of the true class. A scalar ``alpha`` weighs the
    foreground classes by ``alpha`` and the background (class 0) by ``1 - alpha``, as in the
    paper's binary form; a sequence gives one weight per class. Note: MONAI's ``FocalLoss``
    averages over classes too, so its value is this one divided by ``C``.

    Args:
        gamma: focusing exponent (>= 0; 0 is cross-entropy).
        alpha: None, a number in ``[0, 1]``, or one weight per class.

    Example:
        >>> FocalLoss(gamma=2.0)(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).ndim
        0
    """

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None) -> None:
        super().__init__()
        self.gamma = check_number(gamma, "gamma")
        if alpha is None or isinstance(alpha, Sequence | np.ndarray | torch.Tensor):
            self.scalar_alpha = None
            self.register_buffer("alpha", _class_weights(alpha, "alpha"))
        else:
            self.scalar_alpha = check_number(alpha, "alpha")
            if self.scalar_alpha > 1.0:
                raise ValueError(f"a scalar alpha must lie in [0, 1], got {alpha!r}.")
            self.register_buffer("alpha", None)

    def _alpha(self, logits: torch.Tensor) -> torch.Tensor | None:
        if self.scalar_alpha is None:
            _check_length(self.alpha, logits, "alpha")
            return self.alpha
        alpha = torch.full((logits.shape[1],), self.scalar_alpha, device=logits.device)
        alpha[0] = 1.0 - self.scalar_alpha
        return alpha

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor
    ) -> torch.Tensor:
        """Args: logits ``(B, C, *spatial)``, target ``(B, [1,] *spatial)``. Returns a scalar."""
        labels = as_labels(logits, target)
        valid, known = valid_mask(labels), labels.clamp_min(0)
        log_p = torch.log_softmax(logits.float(), dim=1).gather(1, known.unsqueeze(1)).squeeze(1)
        loss = -((1.0 - log_p.exp()) ** self.gamma) * log_p * valid
        alpha = self._alpha(logits)
        if alpha is not None:
            loss = loss * alpha.to(loss.device)[known]
        return _mean(loss, valid.float())

    def extra_repr(self) -> str:
        alpha = self.scalar_alpha if self.alpha is None else self.alpha.tolist()
        return f"gamma={self.gamma}, alpha={alpha}"


class TopKLoss(Loss):
    """Cross-entropy of the ``k`` percent hardest voxels of the batch (Wu et al. 2016), of the
    voxels that are not ignored.

    Args:
        k: the percentage of voxels kept, in ``(0, 100]``; at least one voxel is kept.

    Example:
        >>> TopKLoss(k=10.0)(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).ndim
        0
    """

    def __init__(self, k: float = 10.0) -> None:
        super().__init__()
        self.k = check_number(k, "k", strict=True)
        if self.k > 100.0:
            raise ValueError(f"k is a percentage in (0, 100], got {k!r}.")

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor
    ) -> torch.Tensor:
        """Args: logits ``(B, C, *spatial)``, target ``(B, [1,] *spatial)``. Returns a scalar."""
        labels = as_labels(logits, target)
        voxel_ce = _voxel_ce(logits, labels)[valid_mask(labels)]  # the voxels not ignored
        if voxel_ce.numel() == 0:
            return logits.float().sum() * 0.0
        count = max(1, int(voxel_ce.numel() * self.k / 100.0))
        return voxel_ce.topk(count, sorted=False).values.mean()

    def extra_repr(self) -> str:
        return f"k={self.k}"


class DistancePenalizedCELoss(Loss):
    """Cross-entropy weighted up near the target's borders (Caliva et al. 2019).

    The mean over voxels of ``(1 + phi) * CE`` where ``phi`` is the inverted, normalised
    distance to the nearest border of the label map (1 on borders, 0 deepest inside a region;
    see :func:`~medseg.losses.distance.boundary_penalty`).

    Extras:
        penalty_weight: ``(B, *spatial)`` the ``1 + phi`` maps from :meth:`precompute`
            (computed from the target when absent); ``spacing`` ``(B, ndim)`` is used then.

    Example:
        >>> DistancePenalizedCELoss()(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).ndim
        0
    """

    def precompute(
        self, target: np.ndarray, num_classes: int, spacing: tuple[float, ...] | None = None
    ) -> dict[str, np.ndarray]:
        """``{"penalty_weight": (*spatial)}`` for one sample's labels (see :meth:`Loss.precompute`)."""
        target = np.asarray(target)
        return {"penalty_weight": boundary_penalty(target, check_spacing(spacing, target.ndim))}

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor
    ) -> torch.Tensor:
        """Args: logits ``(B, C, *spatial)``, target ``(B, [1,] *spatial)``. Returns a scalar."""
        labels = as_labels(logits, target)
        weight = extra_or_none(extras, "penalty_weight", labels)
        if weight is None:
            array = labels.cpu().numpy()
            spacings = spacings_of(extras.get("spacing"), array.shape[0], array.ndim - 1)
            maps = [
                boundary_penalty(sample, spacing)
                for sample, spacing in zip(array, spacings, strict=True)
            ]
            weight = torch.from_numpy(np.stack(maps)).to(logits.device)
        return _mean(weight * _voxel_ce(logits, labels), valid_mask(labels).float())
