"""IoU-balanced classification and localisation losses for detection heads (Wu, Li and Wang,
"IoU-balanced loss functions for single-stage object detection", Pattern Recognition Letters 2022,
arXiv:1908.05641).

Unlike the segmentation losses, these take per-box inputs ``(pred, target, ious)``:

- **classification**: each positive's loss is weighted by ``w_i = IoU_i ** eta * Z`` with
  ``Z = sum_pos CE_i / sum_pos IoU_i ** eta * CE_i``, so the positives' total loss is unchanged
  and only its distribution moves towards the well-localised boxes; negatives are unweighted; the
  weights carry no gradient. ``IoU_i`` is the IoU of positive ``i``'s *regressed* box with its
  ground truth (the authors' code).
- **localisation**: smooth L1 of each positive's box regression, summed over coordinates, weighted
  by ``IoU_i ** lam`` (no gradient), and averaged over the positives. The paper's ``w_loc`` is a
  constant chosen by hand to keep the localisation loss's scale (the authors' code has no per-batch
  renormalisation), so none is done here: scale the loss with its weight in the total instead.

They are registered in :data:`DETECTION_LOSSES` (``create_loss("iou_balanced_ce")``), not in
:data:`medseg.losses.LOSSES`, whose members all take ``(logits, label_map)``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from medseg.errors import look_up_option
from medseg.losses.base import IGNORE_INDEX, Loss, check_number

__all__ = [
    "DETECTION_LOSSES",
    "IoUBalancedClassificationLoss",
    "IoUBalancedLocalisationLoss",
    "iou_balanced_classification_loss",
    "iou_balanced_localisation_loss",
]

FORMS = ("softmax", "sigmoid")


def iou_balanced_classification_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    ious: torch.Tensor,
    eta: float = 1.5,
    form: Literal["softmax", "sigmoid"] = "softmax",
    gamma: float = 0.0,
    alpha: float | None = None,
) -> torch.Tensor:
    """The IoU-balanced classification loss of a set of boxes (anchors, proposals).

    ``form="softmax"`` (two-stage heads, SSD): ``pred`` is ``(N, K)`` logits over K classes with 0
    the background; the per-box cross-entropy is weighted (positives only) and averaged over the
    boxes that are not ignored; with ``eta=0`` it is ``F.cross_entropy``. ``form="sigmoid"`` (the
    paper's RetinaNet): ``pred`` is ``(N, K - 1)`` logits, one per foreground class (target ``c``
    is column ``c - 1``, background all zeros); the per-entry binary cross-entropy, focal with
    ``gamma > 0`` (RetinaNet: ``gamma=2, alpha=0.25``), is weighted on the positive entries (the
    gt class of each positive box) and summed, then divided by the number of positive boxes (at
    least 1), as RetinaNet normalises.

    Args:
        pred: ``(N, K)`` (softmax) or ``(N, K - 1)`` (sigmoid) logits.
        target: ``(N,)`` class indices, 0 background, ``-1`` ignored.
        ious: ``(N,)`` IoU of each box's regressed box with its ground truth (read for positives
            only; detached).
        eta: the weights' exponent (``>= 0``; 0 gives the plain loss).
        form: ``"softmax"`` or ``"sigmoid"``.
        gamma: focal exponent of the sigmoid form.
        alpha: focal balance of the sigmoid form (positive entries ``alpha``, negative ``1 - alpha``).

    Returns:
        The scalar loss (0 with a gradient path when there are no boxes).
    """
    eta = check_number(eta, "eta")
    form = look_up_option(form, FORMS, argument="form")
    _check_shapes(pred, target, ious, form)
    valid = target != IGNORE_INDEX
    pred, target, ious = pred[valid], target[valid].long(), ious[valid].detach().to(pred.dtype)
    positive = target > 0
    if form == "softmax":
        raw = F.cross_entropy(pred, target, reduction="none")
        weights = _balanced_weights(raw, positive, ious, eta)
        return (raw * weights).sum() / max(target.numel(), 1)
    hot = torch.zeros_like(pred)
    rows = positive.nonzero().squeeze(1)
    hot[rows, target[rows] - 1] = 1.0
    raw = _sigmoid_loss(pred, hot, gamma, alpha)
    weights = _balanced_weights(raw, hot.bool(), ious[:, None].expand_as(hot), eta)
    return (raw * weights).sum() / max(int(positive.sum()), 1)


def iou_balanced_localisation_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    ious: torch.Tensor,
    lam: float = 1.5,
    beta: float = 1 / 9,
) -> torch.Tensor:
    """The IoU-balanced localisation loss of the positive boxes.

    ``sum_i IoU_i ** lam * sum_m smoothL1_beta(pred_im - target_im) / N``: smooth L1 (quadratic
    below ``beta``) of the box regression, summed over the ``M`` coordinates, weighted by the
    detached ``IoU_i ** lam`` and averaged over the ``N`` boxes (no renormalisation; see the
    module's docstring).

    Args:
        pred: ``(N, M)`` predicted regression (e.g. encoded box deltas) of the positives.
        target: ``(N, M)`` their regression targets.
        ious: ``(N,)`` IoU per box (the authors pass the regressed box's IoU with its ground
            truth); detached.
        lam: the exponent (``>= 0``; 0 gives plain smooth L1).
        beta: smooth L1's transition point (``> 0``; ``1/9`` as Faster R-CNN, 0.11 in RetinaNet).

    Returns:
        The scalar loss (0 with a gradient path when ``N = 0``).
    """
    lam = check_number(lam, "lam")
    beta = check_number(beta, "beta", strict=True)
    if pred.shape != target.shape or pred.ndim != 2 or ious.shape != pred.shape[:1]:
        raise ValueError(
            f"pred and target must be (N, M) and ious (N,), got {tuple(pred.shape)}, "
            f"{tuple(target.shape)} and {tuple(ious.shape)}."
        )
    raw = F.smooth_l1_loss(pred, target, beta=beta, reduction="none").sum(dim=1)
    weights = ious.detach().to(raw.dtype).clamp_min(0) ** lam
    return (raw * weights).sum() / max(pred.shape[0], 1)


def _balanced_weights(raw: torch.Tensor, positive: torch.Tensor, ious: torch.Tensor, eta: float) -> torch.Tensor:
    """Detached weights: 1 off ``positive``, ``IoU ** eta * Z`` on it, ``Z`` keeping the sum there."""
    with torch.no_grad():
        balanced = ious.clamp_min(0) ** eta
        weighted = (raw * balanced)[positive].sum()
        scale = raw[positive].sum() / weighted.clamp_min(torch.finfo(raw.dtype).tiny)
        return torch.where(positive, balanced * scale, torch.ones_like(raw))


def _sigmoid_loss(pred: torch.Tensor, hot: torch.Tensor, gamma: float, alpha: float | None) -> torch.Tensor:
    """Per-entry binary cross-entropy, focal (Lin et al.) when ``gamma > 0`` or ``alpha`` is set."""
    raw = F.binary_cross_entropy_with_logits(pred, hot, reduction="none")
    if gamma > 0:
        probability = torch.sigmoid(pred)
        raw = raw * (hot * (1 - probability) + (1 - hot) * probability) ** gamma
    if alpha is not None:
        raw = raw * (hot * alpha + (1 - hot) * (1 - alpha))
    return raw


def _check_shapes(pred: torch.Tensor, target: torch.Tensor, ious: torch.Tensor, form: str) -> None:
    if pred.ndim != 2 or target.shape != pred.shape[:1] or ious.shape != pred.shape[:1]:
        raise ValueError(
            f"pred must be (N, classes) with target and ious (N,), got {tuple(pred.shape)}, "
            f"{tuple(target.shape)} and {tuple(ious.shape)}."
        )
    classes = pred.shape[1] + (form == "sigmoid")
    if target.numel() and target.device.type == "cpu" and (target.max() >= classes or target.min() < IGNORE_INDEX):
        raise ValueError(
            f"target values must lie in [0, {classes - 1}] (or {IGNORE_INDEX}) for {form} logits of "
            f"{pred.shape[1]} columns, got [{int(target.min())}, {int(target.max())}]."
        )


class IoUBalancedClassificationLoss(Loss):
    """Module form of :func:`iou_balanced_classification_loss`: ``forward(pred, target, ious)``.

    Example:
        >>> loss = IoUBalancedClassificationLoss(eta=1.5)
        >>> loss(torch.zeros(3, 2), torch.tensor([0, 1, 1]), torch.tensor([0.0, 0.5, 1.0])).item()
        0.6931...
    """

    def __init__(
        self,
        eta: float = 1.5,
        form: Literal["softmax", "sigmoid"] = "softmax",
        gamma: float = 0.0,
        alpha: float | None = None,
    ) -> None:
        super().__init__()
        self.eta = check_number(eta, "eta")
        self.form = look_up_option(form, FORMS, argument="form")
        self.gamma = check_number(gamma, "gamma")
        self.alpha = None if alpha is None else check_number(alpha, "alpha")

    def forward(self, pred: torch.Tensor, target: torch.Tensor, ious: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """The loss of ``(N, classes)`` logits, ``(N,)`` labels and ``(N,)`` IoUs."""
        return iou_balanced_classification_loss(pred, target, ious, self.eta, self.form, self.gamma, self.alpha)


class IoUBalancedLocalisationLoss(Loss):
    """Module form of :func:`iou_balanced_localisation_loss`: ``forward(pred, target, ious)``.

    Example:
        >>> loss = IoUBalancedLocalisationLoss(lam=1.0, beta=1.0)
        >>> loss(torch.zeros(1, 4), torch.full((1, 4), 2.0), torch.tensor([0.5])).item()
        3.0
    """

    def __init__(self, lam: float = 1.5, beta: float = 1 / 9) -> None:
        super().__init__()
        self.lam = check_number(lam, "lam")
        self.beta = check_number(beta, "beta", strict=True)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, ious: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """The loss of ``(N, M)`` regressions, their ``(N, M)`` targets and ``(N,)`` IoUs."""
        return iou_balanced_localisation_loss(pred, target, ious, self.lam, self.beta)


DETECTION_LOSSES: dict[str, type[Loss]] = {
    "iou_balanced_ce": IoUBalancedClassificationLoss,
    "iou_balanced_smooth_l1": IoUBalancedLocalisationLoss,
}
"""Per-box detection losses for :func:`medseg.losses.create_loss`, taking ``(pred, target, ious)``."""
