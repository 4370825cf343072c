"""Segmentation losses on raw logits ``(B, C, *spatial)`` and integer targets, and their registry.

Example:
    >>> import torch
    >>> from medseg.losses import create_loss
    >>> loss = create_loss("dice+ce")
    >>> loss(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))).ndim
    0
"""

from __future__ import annotations

from typing import Any

from medseg.errors import look_up_option
from medseg.losses.base import Loss
from medseg.losses.boundary import BoundaryLoss
from medseg.losses.compound import CompoundLoss, LinearSchedule, kervadec_schedule
from medseg.losses.cross_entropy import (
    CrossEntropyLoss,
    DistancePenalizedCELoss,
    FocalLoss,
    TopKLoss,
)
from medseg.losses.dice import DiceLoss, GeneralizedDiceLoss, JaccardLoss, TverskyLoss
from medseg.losses.hausdorff import HausdorffDTLoss
from medseg.losses.lovasz import LovaszSoftmaxLoss
from medseg.losses.sensitivity_specificity import SensitivitySpecificityLoss

__all__ = [
    "BoundaryLoss",
    "CompoundLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "DistancePenalizedCELoss",
    "FocalLoss",
    "GeneralizedDiceLoss",
    "HausdorffDTLoss",
    "JaccardLoss",
    "LOSSES",
    "LinearSchedule",
    "Loss",
    "LovaszSoftmaxLoss",
    "SensitivitySpecificityLoss",
    "TopKLoss",
    "TverskyLoss",
    "create_loss",
    "kervadec_schedule",
]

LOSSES: dict[str, type[Loss]] = {
    "boundary": BoundaryLoss,
    "ce": CrossEntropyLoss,
    "dice": DiceLoss,
    "dpce": DistancePenalizedCELoss,
    "focal": FocalLoss,
    "generalized_dice": GeneralizedDiceLoss,
    "hausdorff": HausdorffDTLoss,
    "jaccard": JaccardLoss,
    "lovasz": LovaszSoftmaxLoss,
    "sensitivity_specificity": SensitivitySpecificityLoss,
    "topk": TopKLoss,
    "tversky": TverskyLoss,
}
"""Loss names for :func:`create_loss`; join names with ``+`` for a compound loss."""


def create_loss(name: str, **kwargs: Any) -> Loss:
    """Build a loss from its registry name, or a compound from ``+``-joined names.

    A single name passes ``kwargs`` to the loss's constructor. For a compound such as
    ``"dice+ce"`` each part's arguments go in a dict keyed by its name, and ``weights`` (a
    number or schedule per part) overrides the default weights: 1 each, or, when the compound
    has a ``boundary`` part, Kervadec et al.'s schedule (region parts weighted by ``a``, the
    boundary part by ``1 - a``, ``a`` going from 1 down to 0.01 by 0.01 per epoch; the trainer
    calls ``loss.set_epoch(epoch)``).

    Args:
        name: a key of :data:`LOSSES`, or several joined by ``+`` (case-insensitive).
        **kwargs: constructor arguments (see above).

    Returns:
        The loss module.

    Raises:
        ValueError: an unknown name (the message lists the valid ones) or argument.

    Example:
        >>> loss = create_loss("dice+ce", ce={"weight": [0.1, 1.0, 1.0]}, weights=[1.0, 0.5])
        >>> create_loss("dice+boundary").current_weights()
        [1.0, 0.0]
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a loss name such as 'dice' or 'dice+ce', got {name!r}.")
    parts = [look_up_option(part.strip(), LOSSES, argument="loss name") for part in name.split("+")]
    if len(parts) == 1:
        return LOSSES[parts[0]](**kwargs)
    if len(set(parts)) != len(parts):
        raise ValueError(f"loss name {name!r} repeats a part; use weights to scale one instead.")
    weights = kwargs.pop("weights", None)
    unknown = sorted(set(kwargs) - set(parts))
    if unknown:
        raise ValueError(
            f"create_loss({name!r}) got arguments {unknown}; pass each part's arguments as a dict "
            f"named after the part ({', '.join(parts)}) or weights=[...]."
        )
    losses = [LOSSES[part](**dict(kwargs.get(part) or {})) for part in parts]
    if weights is None and "boundary" in parts:
        region, boundary = kervadec_schedule()
        weights = [boundary if part == "boundary" else region for part in parts]
    return CompoundLoss(losses, weights)
