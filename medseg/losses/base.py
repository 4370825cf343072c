"""The base class of every medseg loss and the input checks they share.

A loss takes raw logits ``(B, C, *spatial)`` and an integer label map ``(B, *spatial)`` or
``(B, 1, *spatial)``, and returns a scalar. Losses that need per-sample maps (distance maps)
compute them with :meth:`Loss.precompute` in the data-loader workers, once per patch; the trainer
stacks them into ``(B, ...)`` tensors and passes them to ``forward`` as keyword extras.
"""

from __future__ import annotations

import abc
import inspect
import numbers
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from medseg.losses.compound import CompoundLoss, Weight

__all__ = ["IGNORE_INDEX", "Loss", "as_labels", "one_hot", "spatial_axes", "valid_mask"]

IGNORE_INDEX = -1
"""The target value of an ignored voxel (``medseg.io.labels.IGNORE_INDEX``): every loss leaves it
out, so it adds nothing to a sum, a mean or a gradient."""


class Loss(nn.Module, abc.ABC):
    """A segmentation loss: ``forward(logits, target, **extras) -> scalar``.

    Subclasses implement ``forward``; those that need maps derived from the target override
    ``precompute`` (and fall back to computing the same maps in ``forward`` when the extra is
    missing). Losses combine with ``+`` and scalar ``*`` into a
    :class:`~medseg.losses.compound.CompoundLoss`.

    Example:
        >>> from medseg.losses import CrossEntropyLoss, DiceLoss
        >>> loss = 0.5 * DiceLoss() + CrossEntropyLoss()
        >>> logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss(logits, target).shape
        torch.Size([])
    """

    init_args: dict[str, Any] | None
    """The constructor's arguments, defaults included (``None`` if they cannot be told apart),
    recorded as the networks' ``hparams`` are, so a Pipeline can save the loss and rebuild it."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Loss:
        self = super().__new__(cls)
        self.__dict__["init_args"] = _bound_arguments(cls, self, args, kwargs)
        return self

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    @abc.abstractmethod
    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor
    ) -> torch.Tensor:
        """Return the loss of a batch.

        Args:
            logits: raw network output ``(B, C, *spatial)``.
            target: integer labels ``(B, *spatial)`` or ``(B, 1, *spatial)``.
            **extras: ``(B, ...)`` tensors made by stacking :meth:`precompute` results; losses
                ignore the names they do not use.

        Returns:
            The scalar loss, averaged over the batch.
        """

    def precompute(
        self, target: np.ndarray, num_classes: int, spacing: tuple[float, ...] | None = None
    ) -> dict[str, np.ndarray]:
        """Maps this loss needs from one sample's labels, computed off the training step.

        Args:
            target: one sample's integer label patch ``(*spatial)``.
            num_classes: the number of classes ``C`` of the logits.
            spacing: voxel spacing per spatial axis (unit spacing if ``None``).

        Returns:
            Named float32 arrays (none for losses that need nothing).
        """
        return {}

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss which epoch starts (drives weight schedules; a no-op otherwise).

        Args:
            epoch: the index of the epoch, from 0.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}.")
        self.epoch = int(epoch)

    def __add__(self, other: object) -> CompoundLoss:
        from medseg.losses.compound import CompoundLoss

        if not isinstance(other, Loss):
            return NotImplemented
        return CompoundLoss.of(self) + CompoundLoss.of(other)

    def __radd__(self, other: object) -> Loss:
        # lets ``sum([loss_a, loss_b])`` start from 0
        if isinstance(other, numbers.Number) and other == 0:
            return self
        return NotImplemented

    def __mul__(self, weight: Weight) -> CompoundLoss:
        from medseg.losses.compound import CompoundLoss, is_weight

        if not is_weight(weight):
            return NotImplemented
        return CompoundLoss([self], [weight])

    __rmul__ = __mul__


def _bound_arguments(cls: type, self: Loss, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """``cls.__init__``'s arguments by name, defaults filled in; ``None`` if they do not bind
    (the constructor then raises its own error) or include ``*args``."""
    try:
        bound = inspect.signature(cls.__init__).bind(self, *args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    arguments: dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL and value:
            return None
        if kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            arguments[name] = value
    return arguments


def as_labels(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Check a batch and return its labels as a long tensor ``(B, *spatial)``.

    Args:
        logits: ``(B, C, *spatial)`` with ``C >= 2`` and one or more spatial axes.
        target: ``(B, *spatial)`` or ``(B, 1, *spatial)``, any integer dtype or floats holding
            integers, with values in ``[0, C)`` or :data:`IGNORE_INDEX` (ignored voxels).

    The values are checked on CPU tensors only: on a GPU the check would wait for the device at
    every step, so there the data workers check each batch (``PatchStream``) instead.
    """
    if logits.ndim < 3:
        raise ValueError(f"logits must be (B, C, *spatial), got shape {tuple(logits.shape)}.")
    if logits.shape[1] < 2:
        raise ValueError(
            f"logits need C >= 2 channels (one per class incl. background), got {logits.shape[1]}."
        )
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; "
            "expected (B, *spatial) or (B, 1, *spatial)."
        )
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}.")
    if target.device.type == "cpu":
        check_label_values(target, logits.shape[1])
    return target.long()


def check_label_values(target: torch.Tensor, num_classes: int) -> None:
    """Raise a ``ValueError`` unless ``target`` holds integers in ``[0, num_classes)`` (or
    :data:`IGNORE_INDEX`)."""
    if target.is_floating_point():
        if not torch.equal(target, target.round()):
            raise ValueError(
                "target holds non-integer values; pass class indices, not one-hot or probabilities."
            )
    low, high = (v.item() for v in torch.aminmax(target))  # numbers: uint8 would wrap -1
    if low < IGNORE_INDEX or high >= num_classes:
        raise ValueError(
            f"target values must lie in [0, {num_classes - 1}] (or {IGNORE_INDEX}: ignored), "
            f"got [{low}, {high}]."
        )


def one_hot(
    labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One-hot encode ``(B, *spatial)`` labels into ``(B, C, *spatial)``; an ignored voxel
    (:data:`IGNORE_INDEX`) gets all zeros."""
    out = torch.zeros(
        (labels.shape[0], num_classes, *labels.shape[1:]), dtype=dtype, device=labels.device
    )
    out.scatter_(1, labels.clamp_min(0).unsqueeze(1), 1.0)
    return out * valid_mask(labels).unsqueeze(1).to(dtype)


def valid_mask(labels: torch.Tensor) -> torch.Tensor:
    """``(B, *spatial)`` booleans: the voxels that are not ignored."""
    return labels != IGNORE_INDEX


def spatial_axes(x: torch.Tensor, batch: bool = False) -> list[int]:
    """The axes a region sum runs over: the spatial ones, plus the batch axis if ``batch``."""
    return ([0] if batch else []) + list(range(2, x.ndim))


def check_flag(value: object, argument: str) -> bool:
    """Return ``value`` if it is a bool, else raise a ``ValueError`` naming ``argument``."""
    if not isinstance(value, bool):
        raise ValueError(f"{argument} must be True or False, got {value!r}.")
    return value


def check_number(value: object, argument: str, *, low: float = 0.0, strict: bool = False) -> float:
    """Return ``value`` as a float if it is a real number ``>= low`` (``> low`` if ``strict``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not np.isfinite(float(value))
    ):
        raise ValueError(f"{argument} must be a finite number, got {value!r}.")
    if value < low or (strict and value == low):
        raise ValueError(f"{argument} must be {'>' if strict else '>='} {low}, got {value!r}.")
    return float(value)
