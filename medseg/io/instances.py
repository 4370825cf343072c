"""Instance datasets: views of any dataset whose labels are encoded instance labels.

An instance dataset labels each object with its own id (0 background, any positive ids) and
gives each id a class in a *sidecar* beside the label file, ``<label stem>.json``
(``{"<id>": <class value>}``, or the ``{"instances": [{"id", "class", ...}]}`` that
:func:`write_instances` writes) or ``<label stem>.csv`` (``id,class`` rows, a header optional);
without one every object is class 1. A semantic dataset is an instance dataset too: each
connected component of a class is one instance.

:class:`InstanceDataset` is a view of any :class:`~medseg.io.Dataset` whose ``load`` returns the
*encoded* instance label (:mod:`medseg.instances.encoding`), so the whole semantic machinery
(planning, the preprocessing cache, patch sampling, augmentation) carries instances unchanged.
:func:`write_instances` writes a prediction as an instance map in the input's geometry, a JSON
per case and, in 2D, a COCO dataset ``instances_coco.json`` that ``pycocotools.coco.COCO`` opens;
:func:`read_instances` reads a map and its sidecar back.

Example:
    >>> data = as_instances(open_dataset("nuclei"))  # doctest: +SKIP
    >>> data.mode, data.label_spec.names  # doctest: +SKIP
    ('map', ('background', 'object'))
"""

from __future__ import annotations

import copy as _copy
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, look_up_option
from ..instances.encoding import components, encode
from .cases import CaseFiles
from .datasets import Dataset
from .instance_files import (
    raw_instances,
    read_instances,
    read_sidecar,
    sidecar_of,
    write_instances,
)
from .labels import IGNORE_INDEX, LabelSpec
from .sample import Geometry, Sample

__all__ = ["InstanceDataset", "as_instances", "read_instances", "read_sidecar", "sidecar_of", "write_instances"]

logger = logging.getLogger(__name__)

MODES = ("auto", "map", "components")
TARGETS = ("instances", "bordercore")
_OBJECT = LabelSpec((0, 1), ("background", "object"))


class InstanceDataset(Dataset):
    """A view of ``base`` whose :meth:`load` returns the encoded instance label (int32).

    Args:
        base: the dataset (any layout).
        mode: ``"map"`` (labels are instance maps; classes from sidecars, else all class 1; a COCO
            dataset's annotations), ``"components"`` (labels are semantic; each connected
            component of a class is one instance), ``"auto"``: sidecars or COCO -> map, classes
            declared by the dataset -> components, else map with one class. Kept in :attr:`mode`.
        target: ``"instances"`` (the encoded label) or ``"bordercore"`` (its border-core classes,
            :func:`medseg.instances.bordercore.to_bordercore` on each case's spacing, at least
            :attr:`border_mm` wide: a pipeline sets it to the training grid's largest spacing, so
            the border survives the resampling to that grid).
        connectivity: of components: ``"full"`` (8/26 neighbours, the default) or ``"face"`` (4/6).

    Attributes:
        semantic_spec: the K semantic classes; :attr:`label_spec` is it, or its border-core
            classes for ``target="bordercore"``.
    """

    def __init__(self, base: Dataset, mode: str = "auto", target: str = "instances", *,
                 connectivity: str | None = None) -> None:
        if not isinstance(base, Dataset):
            raise TypeError(f"InstanceDataset: base must be a Dataset, got {type(base).__name__}.")
        if isinstance(base, InstanceDataset):
            base, connectivity = base.base, connectivity or base.connectivity
        connectivity = connectivity or "full"
        self.__dict__.update({k: v for k, v in vars(base).items() if k != "label_spec"})
        self.base = base
        self.target = look_up_option(target, TARGETS, argument="target")
        self.connectivity = look_up_option(connectivity, ("full", "face"), argument="connectivity")
        self.mode = self._choose(look_up_option(mode, MODES, argument="mode"))
        self.border_mm: float | None = None  # border-core width; None: each case's largest spacing
        self._set_spec(self._semantic_default())

    def _choose(self, mode: str) -> str:
        if mode != "auto":
            return mode
        with_sidecar = next((f.label for f in self.base.cases.values() if f.label and sidecar_of(f.label)), None)
        if with_sidecar is not None:
            chosen, why = "map", f"class sidecars beside the labels, e.g. {sidecar_of(with_sidecar)}"
        elif hasattr(self.base, "instances"):
            chosen, why = "map", "the dataset's instance annotations"
        elif self.base.label_spec is not None:
            chosen, why = "components", f"the dataset declares classes {list(self.base.label_spec.values)}"
        else:
            chosen, why = "map", "no class sidecars and no declared classes: instance maps of one class"
        logger.info("%s: instance mode %r (%s).", self.base.root or "dataset", chosen, why)
        return chosen

    def _semantic_default(self) -> LabelSpec:
        if self.base.label_spec is not None:
            return self.base.label_spec
        if self.mode == "components":
            raise DataError(f"{self.base.root or 'dataset'}: mode='components' needs the dataset's classes; declare "
                            "them (classes={0: 'background', 1: ...}) or use mode='map' for instance maps.")
        values = set()
        for files in self.base.cases.values():
            sidecar = sidecar_of(files.label) if files.label else None
            values |= set(read_sidecar(sidecar)[0].values()) if sidecar else set()
        return LabelSpec.from_values(sorted(values)) if values - {0, 1} else _OBJECT

    def _set_spec(self, spec: LabelSpec) -> None:
        self.semantic_spec = spec
        self.label_spec = spec
        if self.target == "bordercore":
            from ..instances.bordercore import bordercore_spec

            self.label_spec = bordercore_spec(spec)
        self.labels = dict(zip(self.label_spec.values, self.label_spec.names))

    def __getattr__(self, name: str) -> Any:  # what the base's own class adds (formats' splits...)
        if name.startswith("__") or name == "base" or "base" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["base"], name)

    @property
    def cache_tags(self) -> dict[str, Any]:
        """What sets this view's cached labels apart from the base's semantic ones (the
        preprocessing cache adds it to its key): mode, target, connectivity and the sidecars."""
        sidecars = [sidecar_of(f.label) for f in self.cases.values() if f.label] if self.mode == "map" else []
        stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sidecars if p]
        return {"instances": {"mode": self.mode, "target": self.target, "connectivity": self.connectivity,
                              "sidecars": stats, **({} if self.border_mm is None else {"border_mm": self.border_mm})}}

    def __repr__(self) -> str:
        return f"InstanceDataset({self.base!r}, mode={self.mode!r}, target={self.target!r})"

    def with_label_spec(self, spec: LabelSpec) -> InstanceDataset:
        """A copy whose semantic classes are ``spec``; for ``target="bordercore"`` a border-core
        spec (last class ``"border"``, e.g. one a pipeline planned from :attr:`label_spec`) keeps
        the semantic classes and replaces the border-core ones."""
        view = _copy.copy(self)
        if self.target == "bordercore" and spec.names[-1:] == ("border",):
            if spec.values != self.label_spec.values:
                raise DataError(f"border-core classes {list(spec.values)} differ from this dataset's "
                                f"{list(self.label_spec.values)} ({list(self.label_spec.names)}).")
            view.label_spec = spec
        elif spec != self.label_spec:
            view._set_spec(spec)
        return view

    def files(self, case_id: str) -> CaseFiles:
        return self.base.files(case_id)

    def write_prediction(self, labels: np.ndarray, geometry: Geometry, folder: str | os.PathLike,
                         case: str) -> Path:
        """The base dataset's semantic prediction writer (see :func:`write_instances` for instances)."""
        return self.base.write_prediction(labels, geometry, folder, case)

    def load(self, case_id: str) -> Sample:
        """The case with its encoded instance label (int32), or its border-core classes."""
        sample = self.load_encoded(case_id)
        if self.target == "bordercore" and sample.label is not None:
            from ..instances.bordercore import to_bordercore

            spacing = sample.geometry.spacing  # at least one voxel of this grid, and of the training grid
            border = None if self.border_mm is None else max(self.border_mm, float(max(spacing)))
            label = to_bordercore(sample.label, self.semantic_spec.num_classes, spacing, border_mm=border)
            sample = sample.replace(label=label)
        return sample

    def object_extents(self, max_cases: int = 20) -> np.ndarray:
        """``(N, ndim)`` extents in mm of the objects of up to ``max_cases`` cases (evenly spread
        over the dataset): the bounding box of each instance times its case's spacing. What the
        planner reads so that no resampling makes the small objects vanish."""
        from ..instances.boxes import boxes_from_instances

        ids = self.case_ids
        picked = [ids[i] for i in np.unique(np.linspace(0, len(ids) - 1, min(max_cases, len(ids))).round().astype(int))]
        extents = []
        for case in picked:
            sample = self.load_encoded(case)
            if sample.label is None:
                continue
            _, boxes = boxes_from_instances(np.where(sample.label > 0, sample.label, 0))
            ndim = sample.label.ndim
            extents.append((boxes[:, ndim:] - boxes[:, :ndim]) * np.asarray(sample.geometry.spacing, dtype=np.float32))
        return np.concatenate(extents) if extents else np.zeros((0, len(self.load_encoded(ids[0]).image.shape) - 1))

    def load_encoded(self, case_id: str) -> Sample:
        """The case with its encoded instance label (int32), whatever the target."""
        num_classes = self.semantic_spec.num_classes
        semantic = self.base.with_label_spec(self.semantic_spec)
        if self.mode == "components":
            try:
                sample = semantic.load(case_id)
            except DataError as error:
                raise DataError(f"{error} (mode 'components' reads the labels as semantic classes; for instance "
                                "maps use mode='map')") from None
            if sample.label is None:
                return sample
            return sample.replace(label=components(sample.label, num_classes, self.connectivity))
        if hasattr(self.base, "instances"):  # COCO: the annotations are the instances
            sample, found = semantic.load(case_id), semantic.instances(case_id)
            label = encode(found.instance_map, dict(enumerate(found.classes.tolist(), 1)), num_classes)
            label[found.crowd] = IGNORE_INDEX
            return sample.replace(label=label)
        files = self.base.files(case_id)
        unlabelled = _copy.copy(self.base)
        unlabelled.cases, unlabelled.test_cases = {case_id: CaseFiles(files.images)}, {}
        unlabelled.label_spec = None
        sample = unlabelled.load(case_id)
        if files.label is None:
            return sample
        raw = raw_instances(files.label, sample.geometry, files.images[0].name)
        return sample.replace(label=encode(raw, self._classes(files.label, raw), num_classes))

    def _classes(self, label_file: Path, raw: np.ndarray) -> dict[int, int] | None:
        """``{id: class index}`` from the sidecar of ``label_file`` (``None``: all class 1)."""
        sidecar = sidecar_of(label_file)
        if sidecar is None:
            return None
        values, _ = read_sidecar(sidecar)
        ids = np.unique(raw[raw > 0]).tolist()
        missing = [i for i in ids if i not in values]
        if missing:
            raise DataError(f"{sidecar}: instances {missing[:10]} of {label_file.name} have no class; give "
                            "every id in the map one.")
        spec = self.semantic_spec
        index = {v: i for i, v in enumerate(spec.values)}
        unknown = sorted({values[i] for i in ids if index.get(values[i], 0) == 0})
        if unknown:
            raise DataError(f"{sidecar}: class values {unknown} are not foreground classes of the dataset "
                            f"(classes {list(spec.values)}); fix the file or declare the classes.")
        return {i: index[values[i]] for i in ids}


def as_instances(data: Dataset, mode: str = "auto", target: str = "instances") -> InstanceDataset:
    """``data`` as an instance dataset (see :class:`InstanceDataset`); a view is returned as is
    when its mode and target already match."""
    if isinstance(data, InstanceDataset) and target == data.target and mode in ("auto", data.mode):
        return data
    return InstanceDataset(data, mode=mode, target=target)


