"""Instance datasets and instance predictions on disk.

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
import csv
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import DataError, look_up_option
from ..instances.encoding import components, decode, encode
from .cases import CaseFiles
from .datasets import Dataset, one_channel
from .files import atomic_path, case_id_of, check_case_id, full_suffix
from .json_files import write_json
from .labels import IGNORE_INDEX, LabelSpec
from .locks import waiting_lock
from .readers import Image2DIO, io_for, read_image_file, write_label_file
from .sample import Geometry, Sample

__all__ = ["InstanceDataset", "as_instances", "read_instances", "read_sidecar", "sidecar_of", "write_instances"]

logger = logging.getLogger(__name__)

MODES = ("auto", "map", "components")
TARGETS = ("instances", "bordercore")
COCO_FILE = "instances_coco.json"
_OBJECT = LabelSpec((0, 1), ("background", "object"))


# -- sidecars -----------------------------------------------------------------------------------
def sidecar_of(label: str | os.PathLike) -> Path | None:
    """The class sidecar of a label file (``<stem>.json``, else ``<stem>.csv``), or ``None``."""
    label = Path(label)
    stem = case_id_of(label)
    return next((p for p in (label.with_name(stem + s) for s in (".json", ".csv")) if p.is_file()), None)


def _number(value: Any, path: Path, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number != round(number):
        raise DataError(f"{path}: {what} {value!r} is not a whole number.")
    return int(number)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    rows = [r for r in csv.reader(path.read_text(encoding="utf-8").splitlines()) if r and any(c.strip() for c in r)]
    if rows and not rows[0][0].strip().lstrip("-").isdigit():
        header = [c.strip().lower() for c in rows[0]]
        if "id" not in header or "class" not in header:
            raise DataError(f"{path}: a class CSV needs columns 'id' and 'class', found {rows[0]}.")
        return [dict(zip(header, row)) for row in rows[1:]]
    return [{"id": row[0], "class": row[1] if len(row) > 1 else None} for row in rows]


def read_sidecar(path: str | os.PathLike) -> tuple[dict[int, int], dict[int, float]]:
    """``({id: class value}, {id: score})`` of a sidecar JSON or CSV (scores where given).

    Raises:
        DataError: naming the file when it is not readable or an id or class is not a whole number.
    """
    path = Path(path)
    try:
        if full_suffix(path) == ".csv":
            entries = _read_csv(path)
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = data["instances"] if isinstance(data, dict) and "instances" in data else [
                {"id": key, "class": value} for key, value in (data.items() if isinstance(data, dict) else [])]
            if not isinstance(data, dict) or not isinstance(entries, list):
                raise ValueError('expected {"<id>": <class value>} or {"instances": [{"id": ..., "class": ...}]}')
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataError(f"{path}: not a readable instance class file ({error}).") from None
    classes, scores = {}, {}
    for entry in entries:
        ident = _number(entry.get("id") if isinstance(entry, dict) else None, path, "instance id")
        classes[ident] = _number(entry.get("class"), path, f"class of instance {ident}")
        if entry.get("score") not in (None, ""):
            scores[ident] = float(entry["score"])
    return classes, scores


# -- the dataset view ---------------------------------------------------------------------------
class InstanceDataset(Dataset):
    """A view of ``base`` whose :meth:`load` returns the encoded instance label (int32).

    Args:
        base: the dataset (any layout).
        mode: ``"map"`` (labels are instance maps; classes from sidecars, else all class 1; a COCO
            dataset's annotations), ``"components"`` (labels are semantic; each connected
            component of a class is one instance), ``"auto"``: sidecars or COCO -> map, classes
            declared by the dataset -> components, else map with one class. Kept in :attr:`mode`.
        target: ``"instances"`` (the encoded label) or ``"bordercore"`` (its border-core classes,
            :func:`medseg.instances.bordercore.to_bordercore` on each case's spacing).
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
                              "sidecars": stats}}

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
        sample = self._load_encoded(case_id)
        if self.target == "bordercore" and sample.label is not None:
            from ..instances.bordercore import to_bordercore

            label = to_bordercore(sample.label, self.semantic_spec.num_classes, sample.geometry.spacing)
            sample = sample.replace(label=label)
        return sample

    def _load_encoded(self, case_id: str) -> Sample:
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
        raw = _raw_instances(files.label, sample.geometry, files.images[0].name)
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


def _raw_instances(path: Path, geometry: Geometry | None = None, image_name: str = "") -> np.ndarray:
    """An instance map file's ids (int64), checked: one channel, on the image's grid (when
    ``geometry`` is given), whole numbers, no negatives but the ignore index."""
    data, grid = read_image_file(path)
    data = one_channel(data, path)
    if geometry is not None and not grid.same_grid(geometry, atol=1e-3):
        raise DataError(f"{path}: instance map grid (shape {grid.shape}, spacing {np.round(grid.spacing, 4).tolist()}) "
                        f"differs from its image {image_name} (shape {geometry.shape}); resample it onto the image.")
    if not np.issubdtype(data.dtype, np.integer) and (
            not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data))):
        raise DataError(f"{path}: instance ids must be whole numbers, found non-integers.")
    data = data.astype(np.int64)
    negative = sorted(set(np.unique(data[data < 0]).tolist()) - {IGNORE_INDEX})
    if negative:
        raise DataError(f"{path}: negative instance ids {negative[:5]}; use 0 for background, -1 to ignore.")
    return data


# -- predictions --------------------------------------------------------------------------------
def _write_map(instance_map: np.ndarray, geometry: Geometry, path: Path) -> None:
    """The prediction writer of semantic maps, widened for ids it cannot hold (16-bit PNG past
    255 instances, int32 past 32767)."""
    largest = int(instance_map.max(initial=0))
    if largest < 256 or (largest < 32768 and full_suffix(path) not in Image2DIO.suffixes):
        write_label_file(instance_map, geometry, path)
        return
    if full_suffix(path) in Image2DIO.suffixes:
        if largest > 65535 or full_suffix(path) not in (".png", ".tif", ".tiff"):
            raise DataError(f"{path}: {largest} instances do not fit a 16-bit image; write .nii.gz or .tif.")
        import SimpleITK as sitk

        with atomic_path(path) as tmp:
            sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(instance_map.T.astype(np.uint16))), str(tmp))
        return
    with atomic_path(path) as tmp:
        io_for(path).write(instance_map.astype(np.int32), geometry, tmp)


def _records(instance_map: np.ndarray, classes: Mapping[int, int], numbers: Mapping[int, int], spec: LabelSpec,
             scores: Mapping[int, float] | None) -> list[dict[str, Any]]:
    voxels = np.bincount(instance_map.ravel(), minlength=len(classes) + 1)
    records = []
    for ident, box in enumerate(ndimage.find_objects(instance_map), 1):
        c = classes[ident]
        score = None if scores is None or numbers[ident] not in scores else float(scores[numbers[ident]])
        records.append({"id": ident, "class": spec.values[c], "name": spec.names[c], "score": score,
                        "voxels": int(voxels[ident]),
                        "box": [float(s.start) for s in box] + [float(s.stop) for s in box]})
    return records


def _merge_coco(folder: Path, file_name: str, instance_map: np.ndarray, records: list[dict[str, Any]],
                spec: LabelSpec) -> None:
    """Put this image's objects into ``folder/instances_coco.json``, under its lock."""
    from .formats.coco_masks import bbox, encode_rle

    grid = instance_map.T  # medseg's (x, y) -> COCO's (h, w)
    path = folder / COCO_FILE
    with waiting_lock(path.with_name(path.name + ".lock"), f"writing {path.name}"):
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        images = data.get("images", [])
        old = next((i for i in images if i.get("file_name") == file_name), None)
        image_id = old["id"] if old else max((int(i["id"]) for i in images), default=0) + 1
        annotations = [a for a in data.get("annotations", []) if a["image_id"] != image_id]
        first = max((int(a["id"]) for a in annotations), default=0) + 1
        for number, record in enumerate(records):
            mask = grid == record["id"]
            entry = {"id": first + number, "image_id": image_id, "category_id": record["class"],
                     "segmentation": encode_rle(mask), "area": float(mask.sum()), "bbox": bbox(mask), "iscrowd": 0}
            annotations.append(entry if record["score"] is None else {**entry, "score": record["score"]})
        categories = {int(c["id"]): c for c in data.get("categories", [])}
        categories.update({v: {"id": v, "name": n} for v, n in zip(spec.values[1:], spec.names[1:])})
        images = [i for i in images if i["id"] != image_id] + [
            {"id": image_id, "file_name": file_name, "height": int(grid.shape[0]), "width": int(grid.shape[1])}]
        write_json(path, {"info": {"description": "medseg instance predictions"}, "images": images,
                          "annotations": annotations, "categories": [categories[k] for k in sorted(categories)]},
                   indent=None)


def write_instances(encoded: np.ndarray, geometry: Geometry, folder: str | os.PathLike, case: str,
                    spec: LabelSpec, *, scores: Mapping[int, float] | None = None,
                    extension: str | None = None) -> Path:
    """Write a predicted (or reference) encoded instance label of ``case`` into ``folder``.

    Writes ``<case><extension>`` (the instance map, ids 1..N in encoded order, on ``geometry``,
    by the semantic prediction writer), ``<case>.json`` (``{"instances": [{"id", "class"
    (dataset value), "name", "score", "voxels", "box"}]}``; ``box`` as MONAI's StandardMode in
    voxels ``[min..., max + 1...]``) and, in 2D, merges the image into ``folder/instances_coco.json``
    (COCO: images, categories, annotations with RLE, bbox, area, score), under a lock.

    Args:
        encoded: ``(*spatial)`` encoded label (:mod:`medseg.instances.encoding`); -1 is written 0.
        geometry: the grid to write on (the input image's).
        folder: the output folder.
        case: the case id (names the files).
        spec: the semantic classes (K; their dataset values and names go into the JSONs).
        scores: ``{instance number n of the encoding: score}`` (n is the id when the instances
            are numbered 1..N, as :func:`~medseg.instances.encoding.encode` numbers them).
        extension: of the map, default ``.png`` in 2D, ``.nii.gz`` in 3D.

    Returns:
        The path of the instance map.
    """
    check_case_id(case, "write_instances")
    encoded = np.asarray(encoded)
    if encoded.shape != tuple(geometry.shape):
        raise ValueError(f"write_instances: case {case!r} label shape {encoded.shape} differs from its geometry "
                         f"{geometry.shape}.")
    num_classes = spec.num_classes
    clean = np.where(encoded > 0, encoded, 0).astype(np.int64)
    instance_map, classes = decode(clean, num_classes)
    values = np.unique(clean[clean > 0])
    numbers = {i + 1: int((v - 1) // (num_classes - 1) + 1) for i, v in enumerate(values.tolist())}
    suffix = extension or (".png" if geometry.ndim == 2 else ".nii.gz")
    folder = Path(folder)
    path = folder / f"{case}{suffix if suffix.startswith('.') else '.' + suffix}"
    _write_map(instance_map, geometry, path)
    records = _records(instance_map, classes, numbers, spec, scores)
    write_json(folder / f"{case}.json", {"instances": records})
    if geometry.ndim == 2:
        _merge_coco(folder, path.name, instance_map, records, spec)
    return path


def read_instances(path: str | os.PathLike) -> tuple[np.ndarray, dict[int, int], dict[int, float]]:
    """An instance map and its sidecar: ``(map int32, {id: class value}, {id: score})``.

    Without a sidecar every instance is class 1 and there are no scores.

    Raises:
        DataError: naming the file when it cannot be read, holds negative ids or ids without a class.
    """
    path = Path(path)
    instance_map = _raw_instances(path).astype(np.int32)
    ids = np.unique(instance_map[instance_map > 0]).tolist()
    sidecar = sidecar_of(path)
    if sidecar is None:
        return instance_map, {i: 1 for i in ids}, {}
    classes, scores = read_sidecar(sidecar)
    missing = [i for i in ids if i not in classes]
    if missing:
        raise DataError(f"{sidecar}: instances {missing[:10]} of {path.name} have no class.")
    return instance_map, {i: classes[i] for i in ids}, {i: scores[i] for i in ids if i in scores}
