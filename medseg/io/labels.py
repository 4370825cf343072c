"""What the label values of a dataset mean, and the map between them and the network's classes.

Datasets label their classes with any integers (BraTS: 0, 1, 2, 4), may mark voxels to ignore
(nnU-Net v2's ``ignore`` label) and may define overlapping *regions* (BraTS' whole tumour,
tumour core, enhancing tumour). Inside medseg a label map always holds contiguous class
indices ``0 .. K-1`` and :data:`IGNORE_INDEX` where a voxel is ignored; :class:`LabelSpec` turns
the dataset's values into those indices when a case is read and back when a prediction is
written, so a prediction file holds the dataset's own values.

Example:
    >>> spec = LabelSpec(values=(0, 1, 2, 4), names=("background", "edema", "necrosis", "enhancing"))
    >>> spec.encode(np.array([0, 4, 2])).tolist()
    [0, 3, 2]
    >>> spec.decode(np.array([0, 3, 2])).tolist()
    [0, 4, 2]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["IGNORE_INDEX", "LabelSpec"]

IGNORE_INDEX = -1
"""The class index of an ignored voxel inside medseg (never trained on, scored or predicted)."""


@dataclass(frozen=True)
class LabelSpec:
    """The classes of a dataset.

    Args:
        values: the dataset's value of each class index; ``values[0]`` is the background (0).
            For a region dataset: every value the label files may hold.
        names: one name per class index.
        ignore: the dataset value marking voxels to ignore, or ``None``.
        regions: for region-based training, one tuple of class *indices* per region (network
            output channel, trained with a sigmoid); empty for ordinary (softmax) classes.
        region_names: one name per region.
        regions_class_order: per region, the dataset value a voxel predicted in that region is
            written with; later regions overwrite earlier ones (nnU-Net's rule).
        background: whether class index 0 is a background, left out of scoring and of
            foreground sampling. ``False`` where index 0 is a real class (Cityscapes' road,
            CamVid's sky, with the void pixels as the ignore label).
    """

    values: tuple[int, ...]
    names: tuple[str, ...] = ()
    ignore: int | None = None
    regions: tuple[tuple[int, ...], ...] = ()
    region_names: tuple[str, ...] = ()
    regions_class_order: tuple[int, ...] = ()
    background: bool = True

    def __post_init__(self) -> None:
        values = tuple(int(v) for v in self.values)
        if not values or values[0] != 0:
            raise DataError(f"label values must start with the background 0, got {list(values)}.")
        if len(set(values)) != len(values):
            raise DataError(f"label values must be distinct, got {list(values)}.")
        if self.ignore is not None and int(self.ignore) in values:
            raise DataError(f"the ignore label {self.ignore} is also a class value {list(values)}.")
        names = tuple(str(n) for n in self.names) or tuple(
            "background" if v == 0 else f"class_{v}" for v in values
        )
        if len(names) != len(values):
            raise DataError(f"{len(names)} class names for {len(values)} label values {list(values)}.")
        regions = tuple(tuple(int(i) for i in r) for r in self.regions)
        for region in regions:
            if not region or any(not 0 < i < len(values) for i in region):
                raise DataError(f"a region must list class indices 1..{len(values) - 1}, got {list(region)}.")
        order = tuple(int(v) for v in self.regions_class_order)
        if regions and len(order) != len(regions):
            raise DataError(f"regions_class_order {list(order)} needs one value per region ({len(regions)}).")
        region_names = tuple(str(n) for n in self.region_names) or tuple(f"region_{i + 1}" for i in range(len(regions)))
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "ignore", None if self.ignore is None else int(self.ignore))
        object.__setattr__(self, "regions", regions)
        object.__setattr__(self, "region_names", region_names)
        object.__setattr__(self, "regions_class_order", order)
        object.__setattr__(self, "background", bool(self.background))

    # -- facts ----------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Class indices including background (the label map's values, ignore aside)."""
        return len(self.values)

    @property
    def is_regions(self) -> bool:
        return bool(self.regions)

    @property
    def out_channels(self) -> int:
        """Network output channels: one per region (sigmoid) or one per class (softmax)."""
        return len(self.regions) if self.regions else len(self.values)

    @property
    def scored(self) -> dict[int, str]:
        """``{dataset value: name}`` of what evaluation scores: foreground classes, or regions
        keyed by their ``regions_class_order`` value."""
        if self.regions:
            return dict(zip(self.regions_class_order, self.region_names))
        return {v: n for v, n in zip(self.values, self.names) if v != 0 or not self.background}

    @property
    def scored_values(self) -> tuple[int, ...]:
        """The dataset values of the classes scored (every class but a background 0)."""
        return self.values[1:] if self.background else self.values

    @property
    def is_identity(self) -> bool:
        """Whether encoding changes nothing (values ``0..K-1``, no ignore label)."""
        return self.values == tuple(range(len(self.values))) and self.ignore is None

    def agreed_with(self, declared: LabelSpec | None, source: object = "the data") -> LabelSpec:
        """This spec, once checked against what a dataset declares (names may differ).

        Raises:
            DataError: naming ``source`` when the values, ignore label or regions differ.
        """
        if declared is not None and (declared.values, declared.ignore, declared.regions) != (
                self.values, self.ignore, self.regions):
            raise DataError(
                f"{source}: its labels (values {list(declared.values)}, ignore {declared.ignore}, regions "
                f"{[list(r) for r in declared.regions]}) differ from the pipeline's plan (values "
                f"{list(self.values)}, ignore {self.ignore}, regions {[list(r) for r in self.regions]}); "
                "use the dataset the run was trained on, or declare the same classes.")
        return self

    # -- value maps ----------------------------------------------------------------------------
    def encode(self, label: np.ndarray, *, source: object = "label") -> np.ndarray:
        """Dataset values -> class indices (``IGNORE_INDEX`` for the ignore label), int8/int16.

        Raises:
            DataError: naming ``source`` when the map holds a value that is not a class.
        """
        label = np.asarray(label)
        found = np.unique(label)
        known = set(self.values) | ({self.ignore} if self.ignore is not None else set())
        unknown = [int(v) for v in found if int(v) not in known]
        if unknown:
            raise DataError(
                f"{source}: label values {unknown} are not classes of the dataset "
                f"(classes {list(self.values)}{'' if self.ignore is None else f', ignore {self.ignore}'})."
            )
        dtype = np.int8 if len(self.values) < 128 else np.int16
        if self.is_identity:
            return label.astype(dtype, copy=False)
        lookup = {v: i for i, v in enumerate(self.values)}
        if self.ignore is not None:
            lookup[self.ignore] = IGNORE_INDEX
        out = np.zeros(label.shape, dtype=dtype)
        for value in found:
            out[label == value] = lookup[int(value)]
        return out

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Class indices -> dataset values (the ignore index, never predicted, becomes 0)."""
        indices = np.asarray(indices)
        table = np.asarray(self.values, dtype=np.int64)
        out = table[np.clip(indices, 0, len(table) - 1)]
        out[indices < 0] = 0
        dtype = np.uint8 if 0 <= table.min() and table.max() < 256 else np.int16
        return out.astype(dtype)

    def region_masks(self, indices: np.ndarray) -> np.ndarray:
        """``(R, *spatial)`` booleans: which voxels of a class-index map lie in each region."""
        indices = np.asarray(indices)
        return np.stack([np.isin(indices, region) for region in self.regions])

    def regions_to_values(self, probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Per-region sigmoid probabilities ``(R, *spatial)`` -> a map of dataset values."""
        out = np.zeros(probabilities.shape[1:], dtype=np.int16)
        for channel, value in zip(probabilities, self.regions_class_order):
            out[channel > threshold] = value
        return out

    # -- construction and persistence ------------------------------------------------------------
    @classmethod
    def from_values(cls, values: Sequence[int], names: Mapping[int, str] | None = None,
                    ignore: int | None = None) -> LabelSpec:
        """Classes from the values found (or declared), background first, sorted."""
        ordered = sorted({0, *(int(v) for v in values)} - ({ignore} if ignore is not None else set()))
        names = names or {}
        return cls(tuple(ordered), tuple(names.get(v, "background" if v == 0 else f"class_{v}") for v in ordered),
                   ignore=ignore)

    def to_dict(self) -> dict[str, Any]:
        return {"values": list(self.values), "names": list(self.names), "ignore": self.ignore,
                "regions": [list(r) for r in self.regions], "region_names": list(self.region_names),
                "regions_class_order": list(self.regions_class_order),
                **({} if self.background else {"background": False})}  # saved plans keep their digest

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelSpec:
        return cls(values=tuple(data["values"]), names=tuple(data.get("names", ())), ignore=data.get("ignore"),
                   regions=tuple(tuple(r) for r in data.get("regions", ())),
                   region_names=tuple(data.get("region_names", ())),
                   regions_class_order=tuple(data.get("regions_class_order", ())),
                   background=bool(data.get("background", True)))
