"""Cityscapes (fine annotations), read as the release ships it.

Layout::

    leftImg8bit/{train,val,test}/CITY/CITY_SEQ_FRAME_leftImg8bit.png
    gtFine/{train,val,test}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png     label ids 0..33
    gtFine/{train,val,test}/CITY/CITY_SEQ_FRAME_gtFine_instanceIds.png  id // 1000 = label id for ids >= 1000

Label ids map to the 19 training ids, every other id ignored (255), as cityscapesScripts'
``labels.py`` does. ``train`` and ``val`` are the official split (the public ``test`` labels are
empty, so test images are cases without labels). A prediction is written as a ``labelIds`` PNG
(trainId -> id) named ``CITY_SEQ_FRAME_leftImg8bit.png``, which the official
``evalPixelLevelSemanticLabeling`` finds by its ``CITY_SEQ_FRAME`` prefix.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..cases import CaseFiles
from ..labels import LabelSpec
from . import register
from .base import FormatDataset, read_png
from .palettes import CITYSCAPES_TRAIN_NAMES, VOID, id_to_train_id, train_id_to_id

__all__ = ["CityscapesDataset"]

_SPEC = LabelSpec(tuple(range(len(CITYSCAPES_TRAIN_NAMES))), CITYSCAPES_TRAIN_NAMES, ignore=VOID, background=False)
_IMAGE = "_leftImg8bit.png"


def _images(root: Path, split: str) -> dict[str, Path]:
    folder = root / "leftImg8bit" / split
    return {p.name[: -len(_IMAGE)]: p for p in sorted(folder.glob(f"*/*{_IMAGE}"))} if folder.is_dir() else {}


@register("cityscapes")
class CityscapesDataset(FormatDataset):
    """A Cityscapes folder (``leftImg8bit/`` and ``gtFine/``).

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        classes, modality: not accepted (the 19 training classes, RGB).
        group_pattern: unused (the split is Cityscapes' own).

    Example:
        >>> data = CityscapesDataset("cityscapes")  # doctest: +SKIP
        >>> data.label_spec.names[:3]               # doctest: +SKIP
        ('road', 'sidewalk', 'building')
    """

    def __init__(self, root: str | os.PathLike, *, classes: object = None, modality: object = None,
                 group_pattern: str | None = None) -> None:
        self.check_options("Cityscapes", classes, modality)
        root = Path(root)
        if not self.detect(root):
            raise DataError(f"{root}: not a Cityscapes folder (expected leftImg8bit/ and gtFine/).")
        cases, split, missing = {}, {}, []
        for name in ("train", "val"):
            images = _images(root, name)
            for case, image in images.items():
                label = root / "gtFine" / name / image.parent.name / f"{case}_gtFine_labelIds.png"
                if not label.is_file():
                    missing.append(label)
                cases[case] = CaseFiles((image,), label)
            split[name] = list(images)
        if missing:
            raise DataError(f"{root}: {len(missing)} image(s) without their gtFine labelIds, e.g. "
                            f"{', '.join(str(m) for m in missing[:3])}.")
        if not cases:
            raise DataError(f"{root}: no leftImg8bit/train or leftImg8bit/val images (*{_IMAGE}).")
        test = {case: CaseFiles((image,)) for case, image in _images(root, "test").items()}
        super().__init__(root, cases, split, _SPEC, evaluation="val", test_cases=test)

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (Path(path) / "leftImg8bit").is_dir() and (Path(path) / "gtFine").is_dir()

    def read_values(self, path: Path) -> np.ndarray:
        """A ``labelIds`` PNG (a prediction or ``*_gtFine_labelIds.png``) -> training ids, 255 ignored."""
        ids = read_png(path)
        if ids.ndim != 2:
            raise DataError(f"{path}: a labelIds image has one channel, got {ids.shape[-1]}; "
                            "is it a *_color.png?")
        return id_to_train_id(ids).astype(np.int64)

    def prediction_image(self, values: np.ndarray):
        from PIL import Image

        ids = np.ascontiguousarray(train_id_to_id(values))
        return Image.frombytes("L", (ids.shape[1], ids.shape[0]), ids.tobytes())

    def prediction_name(self, case: str) -> str:
        return f"{case}{_IMAGE}"

    def instances(self, case: str) -> tuple[np.ndarray, dict[int, int]]:
        """``*_gtFine_instanceIds.png``: the instance map ``(x, y)`` (0 none, 1..N in the order of
        the ids) and each instance's training id (``id // 1000`` mapped; ids < 1000 are no instance)."""
        label = self.files(case).label
        ids = read_png(label.with_name(f"{case}_gtFine_instanceIds.png")).T.astype(np.int64)
        instances = np.zeros(ids.shape, dtype=np.int64)
        classes = {}
        for number, value in enumerate(v for v in np.unique(ids) if v >= 1000):
            instances[ids == value] = number + 1
            classes[number + 1] = int(id_to_train_id(np.array([value // 1000]))[0])
        return instances, classes
