"""The preprocessing protocol: steps ``Sample -> Sample`` that can undo what they did to the grid."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from ..errors import look_up_option
from ..io.sample import Sample

__all__ = ["Fingerprint", "Step", "invert", "invert_labels", "preprocess"]


@dataclass(frozen=True)
class Fingerprint:
    """What planning read off a dataset, and what data-driven steps fit on.

    Args:
        spacings: one spacing per case.
        shapes: one spatial shape per case.
        intensity: per channel, statistics of the foreground voxels (``mean``, ``std``,
            ``p00_5``, ``p99_5``); empty when not gathered.
        classes: the label values found.
        channels: image channels per case (the same in every case); ``None`` when not read.
    """

    spacings: tuple[tuple[float, ...], ...]
    shapes: tuple[tuple[int, ...], ...]
    intensity: tuple[dict[str, float], ...] = field(default_factory=tuple)
    classes: tuple[int, ...] = field(default_factory=tuple)
    channels: int | None = None

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

    def invert_channel(self, channel: np.ndarray, record: Any, *, fill: float = 0.0) -> np.ndarray:
        """Map one ``(1, *spatial)`` channel back; voxels the inverse adds (e.g. outside a crop)
        get ``fill``. The default defers to :meth:`invert`, right for steps that add no voxels."""
        return self.invert(channel, record)

    @property
    def moves_voxels_only(self) -> bool:
        """Whether the inverse only moves voxels and fills the ones it adds (crop, pad) or does
        nothing, so that it may run on a label map instead of on every class's probabilities."""
        return type(self).invert is Step.invert

    def invert_map(self, labels: np.ndarray, record: Any, *, fill: Any) -> np.ndarray:
        """Map ``(C, *spatial)`` label maps or masks back (only if :attr:`moves_voxels_only`);
        voxels the inverse adds get ``fill``."""
        return self.invert(labels, record)

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


def _invert_channel(channel: np.ndarray, steps: Sequence[tuple[Step, Any]], fill: float) -> np.ndarray:
    """One ``(*spatial)`` channel through ``steps`` (in the order they are undone)."""
    array = channel[None]
    for step, record in steps:
        array = step.invert_channel(array, record, fill=fill)
    return array[0]


def _argmax(probabilities: np.ndarray, steps: Sequence[tuple[Step, Any]]) -> np.ndarray:
    """``argmax`` of the inverted channels, with a running maximum (ties: the first class)."""
    best = index = None
    for c, channel in enumerate(probabilities):
        channel = _invert_channel(channel, steps, fill=1.0 if c == 0 else 0.0)  # background fills
        if best is None:  # the running maximum must never write into the input
            best = channel.copy() if np.may_share_memory(channel, probabilities) else channel
            index = np.zeros(channel.shape, dtype=np.int16)
            continue
        better = channel > best
        index[better] = c
        np.maximum(best, channel, out=best)
    assert index is not None
    return index[None]


def _threshold(probabilities: np.ndarray, steps: Sequence[tuple[Step, Any]], threshold: float) -> np.ndarray:
    masks: np.ndarray | None = None
    for c, channel in enumerate(probabilities):
        mask = _invert_channel(channel, steps, fill=0.0) > threshold
        masks = np.empty((len(probabilities), *mask.shape), dtype=bool) if masks is None else masks
        masks[c] = mask
    assert masks is not None
    return masks


def invert_labels(
    probabilities: np.ndarray,
    sample: Sample,
    *,
    reduce: Literal["argmax", "threshold"] = "argmax",
    threshold: float = 0.5,
) -> np.ndarray:
    """Labels on the original grid, undoing the history one channel at a time.

    Gives exactly ``invert(probabilities, sample).argmax(0)`` (or ``invert(...) > threshold``)
    without ever holding the ``(K, *original_spatial)`` probabilities: each channel is inverted
    and folded into a running maximum, and the first steps, if they only move voxels (crop, pad),
    are undone on the label map. Peak memory: the input plus a few single-channel volumes.

    Args:
        probabilities: ``(K, *spatial)`` on the preprocessed grid of ``sample``.
        sample: the preprocessed sample whose history to undo.
        reduce: ``"argmax"``: softmax classes (background, channel 0, fills voxels outside a
            crop); ``"threshold"``: sigmoid regions (nothing outside a crop).
        threshold: the region cut-off for ``reduce="threshold"``.

    Returns:
        ``"argmax"``: ``(*original_spatial)`` int16 class indices; ``"threshold"``:
        ``(K, *original_spatial)`` booleans, one mask per region (for
        :meth:`~medseg.io.labels.LabelSpec.regions_to_values`).

    Example:
        >>> labels = invert_labels(probabilities, prepared)  # doctest: +SKIP
    """
    reduce = look_up_option(reduce, ("argmax", "threshold"), argument="reduce")
    if probabilities.ndim != len(sample.spatial_shape) + 1 or len(probabilities) == 0:
        raise ValueError(f"invert_labels: probabilities of shape {probabilities.shape} must be (K, *spatial) "
                         f"with K >= 1 on the grid of case {sample.id!r} {sample.spatial_shape}.")
    steps = list(reversed(sample.history))
    split = len(steps)
    while split and steps[split - 1][0].moves_voxels_only:  # the first steps applied, undone last
        split -= 1
    if reduce == "threshold":
        out, fill = _threshold(probabilities, steps[:split], threshold), bool(0.0 > threshold)
    else:
        out, fill = _argmax(probabilities, steps[:split]), 0
    for step, record in steps[split:]:
        out = step.invert_map(out, record, fill=fill)
    return out if reduce == "threshold" else out[0]
