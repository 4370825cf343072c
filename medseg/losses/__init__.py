"""Segmentation losses on raw logits ``(B, C, *spatial)`` and integer targets, and their registry.

Example:
    >>> import torch
    >>> from medseg.losses import create_loss
    >>> loss = create_loss("dice+ce")
    >>> loss(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))).ndim
    0
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.errors import look_up_option
from medseg.losses.base import Loss
from medseg.losses.boundary import BoundaryLoss
from medseg.losses.compound import (
    CompoundLoss,
    LinearSchedule,
    kervadec_schedule,
    weight_config,
    weight_from_config,
)
from medseg.losses.cross_entropy import (
    CrossEntropyLoss,
    DistancePenalizedCELoss,
    FocalLoss,
    TopKLoss,
)
from medseg.losses.dice import DiceLoss, GeneralizedDiceLoss, JaccardLoss, TverskyLoss
from medseg.losses.hausdorff import HausdorffDTLoss
from medseg.losses.iou_balanced import (
    DETECTION_LOSSES,
    IoUBalancedClassificationLoss,
    IoUBalancedLocalisationLoss,
)
from medseg.losses.lovasz import LovaszSoftmaxLoss
from medseg.losses.regions import RegionBCELoss, RegionDiceLoss, loss_activation
from medseg.losses.sensitivity_specificity import SensitivitySpecificityLoss

__all__ = [
    "BoundaryLoss",
    "CompoundLoss",
    "CrossEntropyLoss",
    "DETECTION_LOSSES",
    "DiceLoss",
    "DistancePenalizedCELoss",
    "FocalLoss",
    "GeneralizedDiceLoss",
    "HausdorffDTLoss",
    "IoUBalancedClassificationLoss",
    "IoUBalancedLocalisationLoss",
    "JaccardLoss",
    "LOSSES",
    "LinearSchedule",
    "Loss",
    "LovaszSoftmaxLoss",
    "RegionBCELoss",
    "RegionDiceLoss",
    "SensitivitySpecificityLoss",
    "TopKLoss",
    "TverskyLoss",
    "build_loss",
    "create_loss",
    "create_region_loss",
    "kervadec_schedule",
    "loss_activation",
    "loss_config",
    "loss_from_config",
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
    "region_bce": RegionBCELoss,
    "region_dice": RegionDiceLoss,
    "sensitivity_specificity": SensitivitySpecificityLoss,
    "topk": TopKLoss,
    "tversky": TverskyLoss,
}
"""Loss names for :func:`create_loss`; join names with ``+`` for a compound loss. The
``region_*`` losses train sigmoid outputs, one per region (see :func:`create_region_loss`)."""


def create_region_loss(name: str, regions: Sequence[Sequence[int]]) -> Loss:
    """A region (sigmoid) loss by name, every part trained on ``regions``.

    Args:
        name: region loss names joined by ``+``, e.g. ``"region_dice+region_bce"`` (nnU-Net's
            ``DC_and_BCE_loss``).
        regions: the class indices of each region, one per network output channel.

    Raises:
        ValueError: a part is a softmax (class) loss, or an unknown name.

    Example:
        >>> create_region_loss("region_dice+region_bce", [(1, 2), (2,)]).losses[0].regions
        ((1, 2), (2,))
    """
    parts = [look_up_option(part.strip(), LOSSES, argument="loss name") for part in name.split("+")]
    softmax = [part for part in parts if loss_activation(LOSSES[part]) != "sigmoid"]
    if softmax:
        raise ValueError(
            f"loss {name!r}: {softmax} train softmax class outputs, but these labels define regions "
            f"(one sigmoid output each); use region losses ({', '.join(k for k in LOSSES if k.startswith('region_'))}), "
            f"e.g. 'region_dice+region_bce'."
        )
    if len(parts) == 1:
        return create_loss(parts[0], regions=regions)
    return create_loss("+".join(parts), **{part: {"regions": regions} for part in parts})


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
    if name.strip().lower() in DETECTION_LOSSES:  # per-box (pred, target, ious) losses, never compound
        return DETECTION_LOSSES[name.strip().lower()](**kwargs)
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


def loss_config(loss: nn.Module) -> dict[str, Any] | None:
    """The JSON recipe of ``loss`` that :func:`loss_from_config` builds again, or ``None``.

    A registered loss gives ``{"name": ..., **constructor arguments}``, a compound
    ``{"name": "compound", "losses": [...], "weights": [...]}`` (numbers or linear schedules).
    Any other module, or arguments that are not numbers, strings, lists or arrays, give ``None``.

    Example:
        >>> loss_config(TverskyLoss(alpha=0.7))["alpha"]
        0.7
    """
    if isinstance(loss, CompoundLoss):
        parts = [loss_config(part) for part in loss.losses]
        weights = [weight_config(weight) for weight in loss.weights]
        if None in parts or None in weights:
            return None
        return {"name": "compound", "losses": parts, "weights": weights}
    name = next((key for key, cls in {**LOSSES, **DETECTION_LOSSES}.items() if type(loss) is cls), None)
    arguments = getattr(loss, "init_args", None)
    if name is None or arguments is None:
        return None
    try:
        return {"name": name, **{key: _plain(value) for key, value in arguments.items()}}
    except TypeError:
        return None


def loss_from_config(config: str | dict[str, Any]) -> Loss:
    """The loss a name (``"dice+ce"``) or a :func:`loss_config` recipe describes."""
    if isinstance(config, str):
        return create_loss(config)
    if isinstance(config, dict) and "custom" in config:
        raise ValueError(f"the loss was a custom module ({config['custom']}) that a config cannot "
                         "hold; pass the module itself.")
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise ValueError(f"a loss config is a name or a dict with a 'name', got {config!r}.")
    if config["name"] == "compound":
        parts = [loss_from_config(part) for part in config["losses"]]
        return CompoundLoss(parts, [weight_from_config(w) for w in config["weights"]])
    arguments = {key: value for key, value in config.items() if key != "name"}
    registry = {**LOSSES, **DETECTION_LOSSES}
    return registry[look_up_option(config["name"], registry, argument="loss name")](**arguments)


def _plain(value: Any) -> Any:
    """``value`` as JSON data (arrays and tensors as lists); ``TypeError`` if it is not data."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Real):
        return value.item() if isinstance(value, np.generic) else value
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v) for k, v in value.items()}
    raise TypeError(f"{type(value).__name__} is not JSON data")


def build_loss(
    loss: nn.Module | str | dict | None,
    *,
    regions: Sequence[Sequence[int]] = (),
    region_names: Sequence[str] = (),
) -> tuple[str | dict[str, Any] | None, Loss | nn.Module]:
    """The loss a Pipeline trains with, and the recipe it saves.

    Args:
        loss: a module, a name (``"dice+ce"``), a saved recipe, or ``None`` for the default:
            ``"dice+ce"`` for classes, ``"region_dice+region_bce"`` (nnU-Net's DC_and_BCE) for
            region labels, whose sigmoid outputs need a region loss.
        regions: the plan's regions (class indices per region); empty for softmax classes.
        region_names: their names, for messages.

    Returns:
        ``(recipe, module)``; the recipe is ``None`` for a custom module that cannot be recorded.

    Raises:
        ValueError: a class loss for region labels, or a region loss for classes.
    """
    if loss is None:
        loss = "region_dice+region_bce" if regions else "dice+ce"
    if isinstance(loss, str) and regions:  # a name: its parts get the plan's regions
        spec, module = loss, create_region_loss(loss, regions)
    elif isinstance(loss, (str, dict)):  # a name or a saved recipe
        spec, module = loss, loss_from_config(loss)
    elif isinstance(loss, nn.Module):  # medseg losses record their arguments (None: custom)
        spec, module = loss_config(loss), loss
    else:
        raise TypeError(f"loss must be a torch.nn.Module or a name like 'dice+ce', got {type(loss).__name__}.")
    activation = loss_activation(module)
    if regions and activation != "sigmoid":
        raise ValueError(f"loss {spec or type(module).__name__!r} trains softmax classes, but the plan's labels "
                         f"are regions {list(region_names)} (sigmoid outputs); use "
                         "loss='region_dice+region_bce' (the default) or another 'region_*' loss.")
    if not regions and activation == "sigmoid":
        raise ValueError(f"loss {spec!r} trains sigmoid regions, but the plan's labels are classes; "
                         "use a class loss such as 'dice+ce', or a LabelSpec with regions.")
    return spec, module
