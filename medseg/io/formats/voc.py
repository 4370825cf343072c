"""PASCAL VOC 2012 segmentation, read as the devkit ships it.

Layout (``VOCdevkit/VOC2012``, or a folder holding it)::

    JPEGImages/2007_000032.jpg
    SegmentationClass/2007_000032.png     palette PNG: index = class (0..20), 255 = void border
    SegmentationObject/2007_000032.png    palette PNG: index = object, 255 = void border
    ImageSets/Segmentation/train.txt      one id a line (val.txt, and test.txt without labels)

The 255 border is ignored (never trained on, never scored). Predictions are palette PNGs with
the devkit's colour map, ``<id>.png``, as the VOC evaluation server takes them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..cases import CaseFiles
from ..labels import IGNORE_INDEX, LabelSpec
from . import register
from .base import FormatDataset, read_png
from .palettes import VOC_CLASSES, VOID, colours_to_index, voc_colormap

__all__ = ["VOCDataset"]

_SPEC = LabelSpec(tuple(range(len(VOC_CLASSES))), VOC_CLASSES, ignore=VOID)


def _voc_root(path: Path) -> Path | None:
    for root in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
            return root
    return None


def _ids(file: Path) -> list[str]:
    return [line.split()[0] for line in file.read_text().splitlines() if line.strip()]


@register("voc")
class VOCDataset(FormatDataset):
    """A PASCAL VOC 2012 folder (``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/Segmentation``).

    Args:
        root: ``VOC2012`` (or ``VOCdevkit``, or a folder holding it).
        classes, modality: not accepted (VOC's 21 classes, RGB).
        group_pattern: unused (the split is VOC's own).

    Example:
        >>> data = VOCDataset("VOCdevkit/VOC2012")  # doctest: +SKIP
        >>> data.official_split["val"][:1]          # doctest: +SKIP
        ['2007_000033']
    """

    def __init__(self, root: str | os.PathLike, *, classes: object = None, modality: object = None,
                 group_pattern: str | None = None) -> None:
        self.check_options("VOC", classes, modality)
        given = Path(root)
        root = _voc_root(given)
        if root is None:
            raise DataError(f"{given}: not a VOC 2012 folder (expected JPEGImages/ and SegmentationClass/).")
        sets = root / "ImageSets" / "Segmentation"
        split = {name: _ids(sets / f"{name}.txt") for name in ("train", "val") if (sets / f"{name}.txt").is_file()}
        labelled = [*split.get("train", []), *split.get("val", [])] or sorted(
            p.stem for p in (root / "SegmentationClass").glob("*.png"))
        cases, missing = {}, []
        for case in dict.fromkeys(labelled):
            image, label = root / "JPEGImages" / f"{case}.jpg", root / "SegmentationClass" / f"{case}.png"
            missing += [p for p in (image, label) if not p.is_file()]
            cases[case] = CaseFiles((image,), label)
        if missing:
            raise DataError(f"{root}: {len(missing)} file(s) named by ImageSets/Segmentation are missing, e.g. "
                            f"{', '.join(str(m) for m in missing[:3])}.")
        test = {c: CaseFiles((root / "JPEGImages" / f"{c}.jpg",)) for c in
                (_ids(sets / "test.txt") if (sets / "test.txt").is_file() else []) if c not in cases}
        super().__init__(root, cases, split, _SPEC, evaluation="val", test_cases=test)

    @classmethod
    def detect(cls, path: Path) -> bool:
        return _voc_root(Path(path)) is not None

    def read_values(self, path: Path) -> np.ndarray:
        """A palette (or grey) PNG's indices; an RGB one decoded with VOC's colour map."""
        array = read_png(path)
        if array.ndim == 3:
            cmap = voc_colormap()
            table = {tuple(int(v) for v in cmap[i]): i for i in (*range(len(VOC_CLASSES)), VOID)}
            return colours_to_index(array, table, source=path)
        return array.astype(np.int64)

    def prediction_image(self, values: np.ndarray):
        from PIL import Image

        values = np.ascontiguousarray(values.astype(np.uint8))
        image = Image.frombytes("P", (values.shape[1], values.shape[0]), values.tobytes())
        image.putpalette(voc_colormap().ravel().tolist())
        return image

    def instances(self, case: str) -> tuple[np.ndarray, dict[int, int]]:
        """``SegmentationObject``: the instance map ``(x, y)`` (0 none, 1..N objects,
        ``IGNORE_INDEX`` on the void border) and each object's class (the class most of its pixels have)."""
        path = self.files(case).label.parent.parent / "SegmentationObject" / f"{case}.png"
        objects = read_png(path).T.astype(np.int64)
        classes = self.read_values(self.files(case).label).T
        out = {}
        for index in np.unique(objects):
            if 0 < index < VOID:
                values, counts = np.unique(classes[objects == index], return_counts=True)
                out[int(index)] = int(values[np.argmax(counts)])
        objects[objects == VOID] = IGNORE_INDEX
        return objects, out
