"""CamVid with colour-coded labels, read as it is commonly shipped.

Layout::

    class_dict.csv            name,r,g,b (the 32 classes, or the 11 with Void), or label_colors.txt ("R G B Name")
    train/0001TP_006690.png   train_labels/0001TP_006690_L.png   (val/, val_labels/, test/, test_labels/)

Label colours map to the 11 classes of the papers (Sky, Building, Pole, Road, Sidewalk, Tree,
SignSymbol, Fence, Car, Pedestrian, Bicyclist; the 32 classes grouped as
:data:`~medseg.io.formats.palettes.CAMVID_GROUPS`); Void is ignored. ``train``/``val`` are the
official split and ``test`` the evaluation split. A prediction is a colour PNG ``<case>_L.png``
whose colours come from the table.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..cases import CaseFiles
from ..labels import LabelSpec
from . import register
from .base import FormatDataset, read_png
from .palettes import CAMVID_11, VOID, camvid_class_colours, camvid_class_of, colours_to_index

__all__ = ["CamVidDataset", "read_colour_table"]

_SPEC = LabelSpec(tuple(range(len(CAMVID_11))), CAMVID_11, ignore=VOID, background=False)
_TABLES = ("class_dict.csv", "label_colors.txt")
_SPLITS = ("train", "val", "test")


def read_colour_table(path: Path) -> dict[tuple[int, int, int], str]:
    """``{(r, g, b): name}`` of a ``class_dict.csv`` (``name,r,g,b``) or ``label_colors.txt``
    (``R G B<tab>Name``). Raises :class:`DataError` naming the file and line."""
    table: dict[tuple[int, int, int], str] = {}
    try:
        if path.suffix == ".csv":
            with open(path, newline="") as handle:
                rows = [(r["name"], r["r"], r["g"], r["b"]) for r in csv.DictReader(handle)]
        else:
            rows = [(" ".join(p[3:]), *p[:3]) for p in (line.split() for line in path.read_text().splitlines()) if p]
        for name, *rgb in rows:
            table[tuple(int(v) for v in rgb)] = name.strip()
    except (KeyError, ValueError, TypeError) as error:
        raise DataError(f"{path}: expected columns name,r,g,b (or lines 'R G B Name') ({error}).") from None
    if not table:
        raise DataError(f"{path}: holds no colours.")
    return table


def _label_name(image: Path) -> str:
    return f"{image.stem}_L.png"


@register("camvid")
class CamVidDataset(FormatDataset):
    """A CamVid folder: ``{train,val,test}/`` images, ``*_labels/`` colour labels, a colour table.

    Args:
        root: the folder holding ``class_dict.csv`` (or ``label_colors.txt``) and the split folders.
        classes, modality: not accepted (the 11 classes, RGB).
        group_pattern: unused (the split is CamVid's own).
    """

    def __init__(self, root: str | os.PathLike, *, classes: object = None, modality: object = None,
                 group_pattern: str | None = None) -> None:
        self.check_options("CamVid", classes, modality)
        root = Path(root)
        if not self.detect(root):
            raise DataError(f"{root}: not a CamVid folder (expected class_dict.csv and train/ + train_labels/).")
        table_file = next(root / n for n in _TABLES if (root / n).is_file())
        self.colours = read_colour_table(table_file)
        self.classes_of_colour = {c: camvid_class_of(n) for c, n in self.colours.items()}
        self.class_colours = camvid_class_colours(self.colours)
        if len(self.class_colours) != len(CAMVID_11):
            absent = [n for i, n in enumerate(CAMVID_11) if i not in self.class_colours]
            raise DataError(f"{table_file}: no colour for the CamVid class(es) {absent}; "
                            f"the table names {sorted(set(self.colours.values()))[:12]}.")
        cases, split, missing = {}, {}, []
        for name in _SPLITS:
            folder = root / name
            images = sorted(p for p in folder.glob("*.png")) if folder.is_dir() else []
            for image in images:
                label = root / f"{name}_labels" / _label_name(image)
                if not label.is_file():
                    missing.append(label)
                cases[image.stem] = CaseFiles((image,), label)
            split[name] = [p.stem for p in images]
        if missing:
            raise DataError(f"{root}: {len(missing)} image(s) without a colour label, e.g. "
                            f"{', '.join(str(m) for m in missing[:3])}.")
        super().__init__(root, cases, split, _SPEC, evaluation="test" if split["test"] else "val")

    @classmethod
    def detect(cls, path: Path) -> bool:
        path = Path(path)
        return any((path / n).is_file() for n in _TABLES) and (path / "train").is_dir() and (
            path / "train_labels").is_dir()

    def read_values(self, path: Path) -> np.ndarray:
        """A colour label (or prediction) -> 11-class values, 255 for Void and ungrouped colours."""
        rgb = read_png(path, mode="RGB")
        return colours_to_index(rgb, self.classes_of_colour, source=path)

    def prediction_image(self, values: np.ndarray):
        from PIL import Image

        palette = np.zeros((256, 3), dtype=np.uint8)
        for index, colour in self.class_colours.items():
            palette[index] = colour
        rgb = np.ascontiguousarray(palette[values.astype(np.uint8)])
        return Image.frombytes("RGB", (rgb.shape[1], rgb.shape[0]), rgb.tobytes())

    def prediction_name(self, case: str) -> str:
        return f"{case}_L.png"
