"""What every benchmark layout shares: label files in the format's own encoding, an official split,
and predictions written (and read back) as the format's own files.

A format dataset's *values* are its class values ``0..K-1`` (VOC's class index, Cityscapes'
trainId, CamVid's 11-class index) and :data:`~medseg.io.formats.palettes.VOID` (255) for an
ignored pixel; :class:`~medseg.io.labels.LabelSpec` maps them to medseg's class indices. A
subclass says how a label file decodes to values (:meth:`FormatDataset.read_values`), how a
prediction's values encode to a file (:meth:`FormatDataset.prediction_image`) and what it is called.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..cases import CaseFiles
from ..datasets import Dataset, load_image
from ..files import atomic_path
from ..labels import LabelSpec
from ..sample import Geometry, Sample
from .palettes import VOID

__all__ = ["FormatDataset", "read_png"]

RGB = ("R", "G", "B")


def read_png(path: Path, *, mode: str | None = None) -> np.ndarray:
    """A label image as Pillow reads it, ``(H, W)`` or ``(H, W, 3)``, raw values (no palette
    applied unless ``mode`` converts). Raises :class:`DataError` naming the file."""
    from PIL import Image

    if not Path(path).is_file():
        raise DataError(f"{path}: file not found.")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode) if mode and image.mode != mode else image)
    except OSError as error:
        raise DataError(f"{path}: could not be read as an image ({error}).") from error


class FormatDataset(Dataset):
    """A benchmark layout: RGB images, label files in the format's encoding, an official split.

    Args:
        root: the folder the layout was found in.
        cases: ``{case: CaseFiles}`` of the labelled cases.
        split: the official split, ``{"train": [...], "val": [...](, "test": [...])}``.
        spec: the classes (values ``0..K-1``, ignore 255).
        evaluation: the split :meth:`evaluation_cases` names (predicted and scored by default).
        test_cases: cases without labels.
        group_pattern: see :class:`~medseg.io.FolderDataset` (unused by the official split).

    Attributes:
        official_split: ``{"train": ids, "val": ids}``: what ``medseg train`` trains and validates on.
    """

    prediction_suffix = ".png"

    def __init__(self, root: Path, cases: dict[str, CaseFiles], split: dict[str, list[str]], spec: LabelSpec, *,
                 evaluation: str = "val", test_cases: dict[str, CaseFiles] | None = None,
                 groups: dict[str, str] | None = None) -> None:
        super().__init__(cases, modality=RGB, groups=groups, test_cases=test_cases, root=root, label_spec=spec)
        self.official_split = {name: list(ids) for name, ids in split.items() if ids}
        self.evaluation = evaluation

    @staticmethod
    def check_options(name: str, classes: object = None, modality: object = None) -> None:
        """A format's classes and channels are fixed: refuse ``classes=``/``modality=``."""
        for option, value in (("classes", classes), ("modality", modality)):
            if value is not None:
                raise ValueError(f"{option}={value!r}: a {name} folder has fixed {option}; leave it out "
                                 "(or read the folder as images/ + labels/ with format=None).")

    # -- what a subclass defines ------------------------------------------------------------------
    def read_values(self, path: Path) -> np.ndarray:
        """A label file (reference or prediction) -> ``(H, W)`` values, 255 for ignored pixels.
        Formats with label images define it; COCO keeps labels in JSON (``reference_values``)."""
        raise TypeError(f"{type(self).__name__} has no label image files to read ({path}).")

    def prediction_image(self, values: np.ndarray):
        """``(H, W)`` predicted values -> the PIL image the format stores (formats that store
        predictions as images define it; COCO writes a results JSON instead)."""
        raise TypeError(f"{type(self).__name__} stores no prediction images.")

    def prediction_name(self, case: str) -> str:
        """The file name of ``case``'s prediction."""
        return f"{case}{self.prediction_suffix}"

    # -- cases ------------------------------------------------------------------------------------
    @property
    def evaluation_cases(self) -> list[str]:
        """The cases of the evaluation split (VOC and Cityscapes val, CamVid test)."""
        return list(self.official_split.get(self.evaluation, []))

    def load(self, case_id: str) -> Sample:
        """One case: the image as 3 channels (a grey image repeated), the label as class indices."""
        files = self.files(case_id)
        image, geometry = load_image(files.images)
        if image.shape[0] == 1:
            image = np.repeat(image, 3, axis=0)
        elif image.shape[0] != 3:
            raise DataError(f"{files.images[0]}: expected an RGB or grey image, got {image.shape[0]} channels.")
        label = None
        if files.label is not None:
            values = self.read_values(files.label).T  # Pillow's (H, W) -> medseg's (x, y)
            if values.shape != geometry.shape:
                raise DataError(f"{files.label}: label size {values.shape} differs from its image "
                                f"{files.images[0].name} {geometry.shape}.")
            spec = self.label_spec
            label = values if spec is None else spec.encode(values, source=files.label)
        return Sample(case_id, image, geometry, label)

    # -- predictions --------------------------------------------------------------------------------
    def write_prediction(self, labels: np.ndarray, geometry: Geometry, folder: str | os.PathLike,
                         case: str) -> Path:
        """Write ``case``'s predicted values (``(x, y)``, as :meth:`Pipeline.predict_case` gives
        them) into ``folder`` as the format's own file."""
        labels = np.asarray(labels)
        if labels.shape != geometry.shape:
            raise ValueError(f"{case}: label shape {labels.shape} differs from its image {geometry.shape}.")
        if np.any(labels == VOID):
            raise ValueError(f"{case}: a prediction never holds the ignore value {VOID}.")
        path = Path(folder) / self.prediction_name(case)
        with atomic_path(path) as tmp:
            self.prediction_image(labels.T).save(tmp, format="PNG")
        return path

    def prediction_files(self, folder: str | os.PathLike) -> dict[str, Path]:
        """``{case: file}`` of the predictions in ``folder`` named as :meth:`prediction_name` names them."""
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder of predictions.")
        known = {self.prediction_name(case): case for case in [*self.cases, *self.test_cases]}
        return {known[p.name]: p for p in sorted(folder.rglob("*")) if p.name in known}

    def reference_files(self, cases: Sequence[str] | None = None) -> dict[str, Path]:
        """``{case: label file}`` of ``cases`` (default: the evaluation split)."""
        cases = self.evaluation_cases if cases is None else list(cases)
        missing = [c for c in cases if c not in self.cases or self.cases[c].label is None]
        if missing:
            raise DataError(f"{self.root}: no reference labels for case(s) {missing[:10]}.")
        return {case: self.cases[case].label for case in cases}
