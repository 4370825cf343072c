"""What the labels' layout tells the planner: the axes along which mirroring shows the network
only layouts the data has (:func:`mirror_axes`, ``Plan.mirror_axes``)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .io.datasets import Dataset
from .io.labels import LabelSpec

__all__ = ["mirror_axes"]

# Mirroring along an axis is left out when two classes lie in one order along it in this share of
# the cases holding both (read from up to _ORDER_CASES cases, and only from _ORDER_MIN_CASES on).
_ORDER_SHARE, _ORDER_CASES, _ORDER_MIN_CASES = 0.95, 100, 10


def mirror_axes(dataset: Dataset, spec: LabelSpec, data_dims: int, slice_axis: int | None) -> tuple[int, ...] | None:
    """The network axes mirroring may flip: all but those along which two foreground classes lie
    in one order (their centroids' difference has one sign) in ``_ORDER_SHARE`` of the cases that
    hold both; ``None`` when that leaves every axis (one foreground class, too few cases, classes
    in no fixed order). nnU-Net mirrors every axis and trains long enough to tell a mirrored
    head from a tail; a run of minutes is better off never seeing one (see README: accuracy)."""
    from .io.instances import InstanceDataset

    foreground = list(range(1 if spec.background else 0, spec.num_classes))  # class indices
    if len(foreground) < 2 or len(dataset.case_ids) < _ORDER_MIN_CASES or isinstance(dataset, InstanceDataset):
        return None  # (instances: a border lies round its core, in no order)
    labelled = [c for c in dataset.case_ids if dataset.cases[c].label is not None]
    chosen = labelled[:: max(1, math.ceil(len(labelled) / _ORDER_CASES))]
    plain_files = type(dataset).load is Dataset.load  # else a format decodes its labels in load()

    def centroids(case: str) -> dict[int, np.ndarray]:
        label = dataset.load_label(case) if plain_files else dataset.load(case).label
        if dataset.label_spec is None:  # raw values, as the plan's classes were found
            label = spec.encode(label.astype(np.int64, copy=False), source=case)
        found = {}
        for value in foreground:
            where = np.nonzero(label == value)
            if where[0].size:
                found[value] = np.array([axis.mean() for axis in where])
        return found

    with ThreadPoolExecutor(4) as pool:
        cases = list(pool.map(centroids, chosen))
    ordered: set[int] = set()
    for i, first in enumerate(foreground):
        for second in foreground[i + 1:]:
            differences = np.array([c[first] - c[second] for c in cases if first in c and second in c])
            if len(differences) < _ORDER_MIN_CASES:
                continue
            shares = np.maximum((differences > 0).mean(0), (differences < 0).mean(0))
            ordered |= {int(a) for a in np.flatnonzero(shares >= _ORDER_SHARE)}
    axes = [a for a in range(data_dims) if a != slice_axis]  # the network's axes, as data axes
    if not ordered & set(axes):
        return None
    return tuple(k for k, a in enumerate(axes) if a not in ordered)
