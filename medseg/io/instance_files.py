"""Instance maps on disk: the class sidecars beside label files, and predictions written as an
instance map in the input's geometry with a JSON per case and, in 2D, a COCO dataset
``instances_coco.json`` that ``pycocotools.coco.COCO`` opens (:func:`write_instances`), read back
by :func:`read_instances`. See :mod:`medseg.io.instances` for what a sidecar holds."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import DataError
from ..instances.encoding import decode
from .datasets import one_channel
from .files import atomic_path, case_id_of, check_case_id, full_suffix
from .json_files import write_json
from .labels import IGNORE_INDEX, LabelSpec
from .locks import waiting_lock
from .readers import Image2DIO, io_for, read_image_file, write_label_file
from .sample import Geometry

__all__ = ["COCO_FILE", "raw_instances", "read_instances", "read_sidecar", "sidecar_of", "write_instances"]

COCO_FILE = "instances_coco.json"


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
def raw_instances(path: Path, geometry: Geometry | None = None, image_name: str = "") -> np.ndarray:
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
    instance_map = raw_instances(path).astype(np.int32)
    ids = np.unique(instance_map[instance_map > 0]).tolist()
    sidecar = sidecar_of(path)
    if sidecar is None:
        return instance_map, {i: 1 for i in ids}, {}
    classes, scores = read_sidecar(sidecar)
    missing = [i for i in ids if i not in classes]
    if missing:
        raise DataError(f"{sidecar}: instances {missing[:10]} of {path.name} have no class.")
    return instance_map, {i: classes[i] for i in ids}, {i: scores[i] for i in ids if i in scores}
