"""The preprocessing protocol: steps ``Sample -> Sample`` that can undo what they did to the grid."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..io.sample import Sample

__all__ = ["Fingerprint", "Step", "invert", "preprocess"]


@dataclass(frozen=True)
class Fingerprint:
    """What planning read off a dataset, and what data-driven steps fit on.

    Args:
        spacings: one spacing per case.
        shapes: one spatial shape per case.
        intensity: per channel, statistics of the foreground voxels (``mean``, ``std``,
            ``p00_5``, ``p99_5``); empty when not gathered.
        classes: the label values found.
    """

    spacings: tuple[tuple[float, ...], ...]
    shapes: tuple[tuple[int, ...], ...]
    intensity: tuple[dict[str, float], ...] = field(default_factory=tuple)
    classes: tuple[int, ...] = field(default_factory=tuple)

    @property
    def median_spacing(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.median(np.asarray(self.spacings), axis=0))

    @property
    def median_shape(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.median(np.asarray(self.shapes), axis=0))


class Step(abc.ABC):
    """One preprocessing step.

    ``__call__`` returns a new Sample and appends ``(self, record)`` to its history, the record
    holding what ``invert`` needs to bring a prediction back onto the previous grid.
    """

    name: ClassVar[str]

    def fit(self, fingerprint: Fingerprint) -> Step:
        """Resolve data-driven settings (e.g. ``spacing="median"``); returns a fitted step."""
        return self

    @abc.abstractmethod
    def __call__(self, sample: Sample) -> Sample:
        """Apply the step."""

    def invert(self, probabilities: np.ndarray, record: Any) -> np.ndarray:
        """Map ``(C, *spatial)`` class probabilities back to the grid before this step."""
        return probabilities

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able settings; ``create_step(**config)`` rebuilds the step."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


def preprocess(sample: Sample, steps: Sequence[Step]) -> Sample:
    """Apply ``steps`` in order."""
    for step in steps:
        sample = step(sample)
    return sample


def invert(probabilities: np.ndarray, sample: Sample) -> np.ndarray:
    """Undo the grid changes recorded in ``sample.history``, last step first.

    Args:
        probabilities: ``(C, *spatial)`` on the preprocessed grid of ``sample``.
        sample: the preprocessed sample whose history to undo.

    Returns:
        ``(C, *original_spatial)`` on the grid the case was read on.
    """
    for step, record in reversed(sample.history):
        probabilities = step.invert(probabilities, record)
    return probabilities
