"""Weighted sums of losses, with weights that may follow a per-epoch schedule.

``0.5 * DiceLoss() + CrossEntropyLoss()`` builds a :class:`CompoundLoss`. A weight is a number or
a schedule, any callable ``epoch -> float``, such as :class:`LinearSchedule`; the trainer calls
``loss.set_epoch(epoch)`` at the start of each epoch and the compound forwards it to its parts.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medseg.losses.base import Loss, check_number

__all__ = [
    "CompoundLoss",
    "LinearSchedule",
    "Weight",
    "is_weight",
    "kervadec_schedule",
    "weight_config",
    "weight_from_config",
]

Weight = float | Callable[[int], float]


def is_weight(value: object) -> bool:
    """Whether ``value`` can weight a loss: a real number or a callable ``epoch -> float``."""
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Real) or (callable(value) and not isinstance(value, nn.Module))


@dataclass(frozen=True)
class LinearSchedule:
    """A weight that moves from ``start`` towards ``end`` by ``step`` per epoch, then stays.

    Args:
        start: the weight at epoch 0.
        end: the weight it stops at.
        step: how much it moves per epoch (> 0; the direction is from ``start`` to ``end``).

    Example:
        >>> LinearSchedule(1.0, 0.01, 0.01)(50)
        0.5
    """

    start: float
    end: float
    step: float

    def __post_init__(self) -> None:
        check_number(self.start, "start", low=-np.inf)
        check_number(self.end, "end", low=-np.inf)
        check_number(self.step, "step", strict=True)

    def __call__(self, epoch: int) -> float:
        moved = self.step * epoch
        if self.end >= self.start:
            return float(min(self.start + moved, self.end))
        return float(max(self.start - moved, self.end))


def weight_config(weight: Weight) -> float | dict[str, float] | None:
    """A weight as JSON: the number, ``{"schedule": "linear", ...}``, or ``None`` for another callable."""
    if isinstance(weight, numbers.Real) and not isinstance(weight, bool):
        return float(weight)
    if isinstance(weight, LinearSchedule):
        return {"schedule": "linear", "start": weight.start, "end": weight.end, "step": weight.step}
    return None


def weight_from_config(config: float | dict[str, float]) -> Weight:
    """The weight :func:`weight_config` describes."""
    if isinstance(config, dict) and config.get("schedule") == "linear":
        return LinearSchedule(config["start"], config["end"], config["step"])
    if isinstance(config, numbers.Real) and not isinstance(config, bool):
        return float(config)
    raise ValueError(f"a loss weight must be a number or a linear schedule, got {config!r}.")


def kervadec_schedule() -> tuple[LinearSchedule, LinearSchedule]:
    """Kervadec et al. (2019)'s rebalancing: ``a * L_region + (1 - a) * L_boundary``.

    ``a`` starts at 1 and drops by 0.01 per epoch down to 0.01.

    Returns:
        The (region weight, boundary weight) schedules.
    """
    return LinearSchedule(1.0, 0.01, 0.01), LinearSchedule(0.0, 0.99, 0.01)


class CompoundLoss(Loss):
    """``sum_i w_i(epoch) * loss_i(logits, target, **extras)``.

    Every part receives all the extras and reads the names it knows; :meth:`precompute` merges
    the parts' maps (a name two parts share must hold the same array).

    Args:
        losses: the parts.
        weights: one weight per part, a number or a callable ``epoch -> float``
            (default: 1 each).

    Example:
        >>> from medseg.losses import BoundaryLoss, DiceLoss
        >>> region, boundary = kervadec_schedule()
        >>> loss = CompoundLoss([DiceLoss(), BoundaryLoss()], [region, boundary])
        >>> loss.set_epoch(10)
        >>> loss.current_weights()
        [0.9, 0.1]
    """

    def __init__(self, losses: Sequence[Loss], weights: Sequence[Weight] | None = None) -> None:
        super().__init__()
        losses = list(losses)
        weights = [1.0] * len(losses) if weights is None else list(weights)
        if not losses:
            raise ValueError("losses must hold at least one Loss, got an empty sequence.")
        for i, loss in enumerate(losses):
            if not isinstance(loss, Loss):
                raise TypeError(f"losses[{i}] must be a medseg Loss, got {type(loss).__name__}.")
        if len(weights) != len(losses):
            raise ValueError(
                f"weights needs one entry per loss ({len(losses)}), got {len(weights)}."
            )
        for i, weight in enumerate(weights):
            if not is_weight(weight):
                raise TypeError(
                    f"weights[{i}] must be a number or a callable epoch -> float, got {weight!r}."
                )
        self.losses = nn.ModuleList(losses)
        self.weights = [float(w) if isinstance(w, numbers.Real) else w for w in weights]

    @classmethod
    def of(cls, loss: Loss) -> CompoundLoss:
        """``loss`` itself if it is a compound, else a compound of weight 1 around it."""
        return loss if isinstance(loss, CompoundLoss) else cls([loss])

    def __add__(self, other: object) -> CompoundLoss:
        if not isinstance(other, Loss):
            return NotImplemented
        other = CompoundLoss.of(other)
        return CompoundLoss([*self.losses, *other.losses], [*self.weights, *other.weights])

    def current_weights(self) -> list[float]:
        """The parts' weights at the current epoch."""
        return [w if isinstance(w, float) else float(w(self.epoch)) for w in self.weights]

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the schedules and of every part."""
        super().set_epoch(epoch)
        for loss in self.losses:
            loss.set_epoch(epoch)

    def precompute(
        self, target: np.ndarray, num_classes: int, spacing: tuple[float, ...] | None = None
    ) -> dict[str, np.ndarray]:
        """The union of the parts' maps (see :meth:`Loss.precompute`)."""
        merged: dict[str, np.ndarray] = {}
        for loss in self.losses:
            for name, array in loss.precompute(target, num_classes, spacing).items():
                if name in merged and not np.array_equal(merged[name], array):
                    raise ValueError(
                        f"two parts precompute different arrays under the name {name!r}."
                    )
                merged.setdefault(name, array)
        return merged

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor
    ) -> torch.Tensor:
        """The weighted sum of the parts (see :meth:`Loss.forward`); parts of weight 0 are skipped."""
        total: torch.Tensor | None = None
        for weight, loss in zip(self.current_weights(), self.losses, strict=True):
            if weight != 0.0:
                term = weight * loss(logits, target, **extras)
                total = term if total is None else total + term
        if total is None:  # every weight is 0 this epoch: a zero that still backpropagates
            total = logits.float().sum() * 0.0
        return total

    def extra_repr(self) -> str:
        return f"weights={self.weights}"
