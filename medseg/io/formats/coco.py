"""COCO folders: ``annotations/instances_*.json`` with the images beside them, read as they ship.

Layout: ``annotations/instances_train2017.json`` and ``instances_val2017.json`` (any
``instances_<split>.json``, e.g. CVAT's ``instances_default.json``), images in ``<split>/``
(``train2017/``, ``val2017/``) or ``images/`` (or ``images/<split>/``), by each image's
``file_name``. Each image is a case named after its file (``000000397133``); the split it belongs
to comes from the file name of its JSON (``train2017`` -> ``"train"``), in ``official_split``;
images are 3 channels (a grey image repeated).

Semantic masks, in the dataset's values (the category ids; 0 background):

- polygons and RLE (list or string counts) are decoded by :mod:`.coco_masks`, without pycocotools;
- where objects overlap, the smaller one (fewer pixels) is on top; equal sizes: the later
  annotation id is on top. The same order paints :meth:`CocoDataset.instances`;
- every pixel of a crowd region (``iscrowd=1``) is the ignore label, whatever lies under it.

The classes are the categories sorted by id (class index ``i`` is the ``i``-th category, 0 the
background); the ignore value is 255 (or one above the largest category id when 255 is one).
Predictions are written as a COCO results JSON (``segmentations_<split>_results.json``: one entry
per image and predicted class, compressed RLE, score 1.0), which ``pycocotools.COCO.loadRes``
reads; processes predicting parts of one split (``--part K --parts N``, torchrun) add to that one
file, each re-reading and rewriting it under ``<file>.lock``; `CocoDataset.prediction_values` reads them back for ``medseg evaluate``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ...errors import DataError
from ..cases import CaseFiles, case_groups
from ..datasets import load_image
from ..json_files import write_json
from ..labels import LabelSpec
from ..locks import waiting_lock
from ..sample import Geometry, Sample
from . import register
from .base import FormatDataset
from .coco_masks import annotation_mask, encode_rle

__all__ = ["CocoDataset", "CocoInstances"]

_SPLITS = {"train2017": "train", "val2017": "val", "test2017": "test", "train2014": "train", "val2014": "val"}


class CocoInstances(NamedTuple):
    """The objects of one image, on the image's grid ``(x, y)`` (as its Sample).

    ``instance_map`` holds 0 (no object) or ``i + 1`` for the ``i``-th object, painted in the
    semantic order (smaller on top); ``classes[i]`` is its class index, ``annotation_ids[i]`` its
    COCO id; ``crowd`` marks the pixels of crowd regions (ignored).
    """

    instance_map: np.ndarray
    classes: np.ndarray
    annotation_ids: np.ndarray
    crowd: np.ndarray


class _Image(NamedTuple):
    image_id: int
    file: Path
    height: int
    width: int
    split: str
    source: Path


def _annotation_files(root: Path) -> list[Path]:
    folder = root / "annotations"
    return sorted(folder.glob("instances_*.json")) if folder.is_dir() else []


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable COCO JSON ({error}).") from None
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise DataError(f"{path}: a COCO instances file needs 'images', 'annotations' and 'categories'; "
                        f"it lacks {missing}.")
    return data


def _image_file(root: Path, split: str, name: str, source: Path) -> Path:
    tried = [root / split / name, root / "images" / split / name, root / "images" / name, root / name]
    found = next((path for path in tried if path.is_file()), None)
    if found is None:
        raise DataError(f"{source}: image {name!r} not found; looked in {', '.join(str(p.parent) for p in tried)}.")
    return found


@register("coco")
class CocoDataset(FormatDataset):
    """A COCO folder (see the module docstring).

    Args:
        root: the folder holding ``annotations/``.
        group_pattern: see :class:`~medseg.io.FolderDataset`.

    Example:
        >>> data = CocoDataset("coco")  # doctest: +SKIP
        >>> data.official_split["val"][:1], data.label_spec.names[:2]  # doctest: +SKIP
        (['000000000139'], ('background', 'person'))
    """

    @classmethod
    def detect(cls, path: str | os.PathLike) -> bool:
        return bool(_annotation_files(Path(path)))

    def __init__(self, root: str | os.PathLike, *, group_pattern: str | None = None, classes: Any = None,
                 modality: Any = None) -> None:
        self.check_options("COCO", classes, modality)
        root = Path(root)
        files = _annotation_files(root)
        if not files:
            raise DataError(f"{root}: no annotations/instances_*.json; is this a COCO folder?")
        self.images: dict[str, _Image] = {}
        self.annotations: dict[str, list[dict[str, Any]]] = {}
        categories: dict[int, str] = {}
        for path in files:
            self._read_split(root, path, categories)
        ids = sorted(categories)
        ignore = 255 if 255 not in ids else max(ids) + 1
        spec = LabelSpec((0, *ids), ("background", *(categories[i] for i in ids)), ignore=ignore)
        cases = {case: CaseFiles((image.file,), image.source) for case, image in self.images.items()}
        split: dict[str, list[str]] = {}  # named by each JSON: train, val, or the name itself
        for case, image in self.images.items():
            split.setdefault(_SPLITS.get(image.split, image.split), []).append(case)
        super().__init__(root, cases, split, spec, evaluation="val" if "val" in split else sorted(split)[0],
                         groups=case_groups(cases, group_pattern))
        self.ignore_value = ignore

    def _read_split(self, root: Path, path: Path, categories: dict[int, str]) -> None:
        data = _read_json(path)
        split = path.stem[len("instances_"):]
        for category in data["categories"]:
            cid, name = int(category["id"]), str(category.get("name", f"class_{category['id']}"))
            if cid <= 0:
                raise DataError(f"{path}: category id {cid} ({name!r}); COCO ids start at 1 (0 is the background).")
            if categories.setdefault(cid, name) != name:
                raise DataError(f"{path}: category {cid} is {name!r} here and {categories[cid]!r} in another file.")
        by_id: dict[int, str] = {}
        for entry in data["images"]:
            case = Path(str(entry["file_name"])).stem
            if case in self.images:
                raise DataError(f"{path}: image {entry['file_name']!r} is also in {self.images[case].source.name}; "
                                "an image belongs to one split.")
            self.images[case] = _Image(int(entry["id"]), _image_file(root, split, str(entry["file_name"]), path),
                                       int(entry["height"]), int(entry["width"]), split, path)
            self.annotations[case] = []
            by_id[int(entry["id"])] = case
        for annotation in data["annotations"]:
            case = by_id.get(int(annotation["image_id"]))
            if case is None:
                raise DataError(f"{path}: annotation {annotation.get('id')} names image_id {annotation['image_id']}, "
                                "which is not in 'images'.")
            self.annotations[case].append(annotation)

    # -- reading --------------------------------------------------------------------------------
    def _objects(self, case: str) -> tuple[list[tuple[dict[str, Any], np.ndarray]], np.ndarray]:
        """Non-crowd ``(annotation, (h, w) mask)`` in painting order, and the crowd mask."""
        self.files(case)  # a DataError naming the dataset for an unknown case
        image = self.images[case]
        crowd = np.zeros((image.height, image.width), bool)
        objects = []
        for annotation in self.annotations[case]:
            try:
                mask = annotation_mask(annotation["segmentation"], image.height, image.width)
            except DataError as error:
                raise DataError(f"{image.source}: annotation {annotation.get('id')} of {case!r}: {error}") from None
            if annotation.get("iscrowd"):
                crowd |= mask
            else:
                objects.append((annotation, mask))
        objects.sort(key=lambda item: (-int(item[1].sum()), int(item[0].get("id", 0))))
        return objects, crowd

    def reference_values(self, case: str) -> np.ndarray:
        """The semantic map of ``case`` in dataset values (category ids, the ignore value), ``(x, y)``."""
        objects, crowd = self._objects(case)
        dtype = np.uint8 if self.ignore_value < 256 else np.int32
        values = np.zeros(crowd.shape, dtype)
        for annotation, mask in objects:
            values[mask] = int(annotation["category_id"])
        values[crowd] = self.ignore_value
        return values.T

    def instances(self, case: str) -> CocoInstances:
        """The objects of ``case`` (see :class:`CocoInstances`); classes as class indices."""
        objects, crowd = self._objects(case)
        order = sorted(range(len(objects)), key=lambda i: int(objects[i][0].get("id", 0)))
        instance_map = np.zeros(crowd.shape, np.int32)
        rank = {position: number for number, position in enumerate(order)}
        for position, (_, mask) in enumerate(objects):
            instance_map[mask] = rank[position] + 1
        index = {v: i for i, v in enumerate(self.label_spec.values)} if self.label_spec else {}
        classes = [index.get(int(objects[i][0]["category_id"]), -1) for i in order]
        ids = [int(objects[i][0].get("id", 0)) for i in order]
        return CocoInstances(instance_map.T, np.asarray(classes, np.int64), np.asarray(ids, np.int64), crowd.T)

    def load(self, case_id: str) -> Sample:
        """Read the image and draw its semantic map (class indices under :attr:`label_spec`)."""
        files, image_info = self.files(case_id), self.images[case_id]
        image, geometry = load_image(files.images)
        if image.shape[0] == 1:  # a grey image among colour ones
            image = np.repeat(image, 3, axis=0)
        if tuple(geometry.shape) != (image_info.width, image_info.height):
            raise DataError(f"{files.images[0]}: the image is {geometry.shape[0]}x{geometry.shape[1]} (w x h), "
                            f"{image_info.source.name} says {image_info.width}x{image_info.height}; fix the JSON.")
        label = self.reference_values(case_id)
        if self.label_spec is not None:
            label = self.label_spec.encode(label, source=image_info.source)
        return Sample(case_id, image, geometry, label)

    # -- predictions ----------------------------------------------------------------------------
    def results_file(self, folder: str | os.PathLike, case: str) -> Path:
        """Where the prediction of ``case`` goes: ``segmentations_<split>_results.json``."""
        return Path(folder) / f"segmentations_{self.images[case].split}_results.json"

    def write_prediction(self, labels: np.ndarray, geometry: Geometry, folder: str | os.PathLike,
                         case: str) -> Path:
        """Add ``case``'s entries (one per predicted category, compressed RLE, score 1.0) to its
        split's results JSON, replacing earlier entries of that image; written atomically.

        The file is re-read and rewritten under ``<file>.lock``, so the processes of a sharded
        prediction (``--part K --parts N``, torchrun) all add to the one official results file."""
        image = self.images[case]
        if np.shape(labels) != tuple(geometry.shape) or np.any(np.asarray(labels) == self.ignore_value):
            raise ValueError(f"{case}: a prediction of shape {np.shape(labels)} for an image of {geometry.shape}, "
                             f"holding the ignore value {self.ignore_value}? Pass what Pipeline.predict_case returns.")
        path = self.results_file(folder, case)
        grid = np.asarray(labels).T
        mine = [{"image_id": image.image_id, "category_id": int(value), "segmentation": encode_rle(grid == value),
                 "score": 1.0} for value in np.unique(grid).tolist() if value != 0 and value != self.ignore_value]
        path.parent.mkdir(parents=True, exist_ok=True)
        with waiting_lock(path.with_name(path.name + ".lock"), f"writing {path.name}"):
            # re-read under the lock: other processes (--part K --parts N, torchrun) add to the same file
            entries = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
            entries = [e for e in entries if int(e["image_id"]) != image.image_id] + mine
            write_json(path, entries, indent=None)
        return path

    def prediction_values(self, folder: str | os.PathLike) -> dict[str, np.ndarray]:
        """``{case: (x, y) map of category ids}`` from the results JSONs in ``folder`` (or one
        file); where entries overlap, the higher score is on top.

        Raises:
            DataError: naming the file when an entry's image or category is not in the dataset.
        """
        folder = Path(folder)
        files = [folder] if folder.is_file() else sorted(folder.glob("*_results.json"))
        if not files:
            raise DataError(f"{folder}: no COCO results JSON (*_results.json) to score.")
        maps: dict[str, np.ndarray] = {}
        for path in files:
            self._read_results(path, maps)
        return {case: values.T for case, values in maps.items()}

    def _read_results(self, path: Path, maps: dict[str, np.ndarray]) -> None:
        split = path.name[len("segmentations_"):-len("_results.json")] if path.name.startswith("segmentations_") else None
        by_id: dict[int, list[str]] = {}
        for case, image in self.images.items():
            if split in (None, image.split):
                by_id.setdefault(image.image_id, []).append(case)
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: not a readable COCO results JSON ({error}).") from None
        for entry in sorted(entries, key=lambda e: float(e.get("score", 1.0))):
            matches = by_id.get(int(entry["image_id"]), [])
            if len(matches) != 1 or int(entry["category_id"]) not in self.label_spec.values:
                raise DataError(f"{path}: entry for image_id {entry['image_id']}, category {entry['category_id']} "
                                f"matches {len(matches)} image(s) of {self.root} (or an unknown category); name the "
                                "file segmentations_<split>_results.json and predict this dataset's images.")
            image = self.images[matches[0]]
            values = maps.setdefault(matches[0], np.zeros((image.height, image.width), np.int32))
            values[annotation_mask(entry["segmentation"], image.height, image.width)] = int(entry["category_id"])
