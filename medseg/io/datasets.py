"""Datasets: a list of cases and a way to load each as a checked :class:`Sample`.

Two layouts are understood: MSD/nnU-Net folders (``dataset.json``, ``imagesTr/``, ``labelsTr/``,
``imagesTs/``, channels as ``_0000``, ``_0001``...) and plain folder pairs ``images/`` +
``labels/`` (or ``masks/``), where a label may carry a ``_mask``, ``_label`` or ``_seg`` suffix.
"""

from __future__ import annotations

import copy as _copy
import json
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .files import case_id_of, full_suffix
from .labels import LabelSpec
from .readers import READERS, Image2DIO, read_image_file
from .sample import Geometry, Sample

__all__ = ["CaseFiles", "Dataset", "FolderDataset", "MSDDataset", "find_images", "load_image", "open_dataset"]

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_LABEL_SUFFIXES = ("_mask", "_label", "_labels", "_seg", "_segmentation")
_KNOWN = tuple(s for reader in READERS for s in reader.suffixes)


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: one image file per channel (or a DICOM folder) and a label."""

    images: tuple[Path, ...]
    label: Path | None = None


def _is_image(path: Path) -> bool:
    return (path.is_file() and full_suffix(path) in _KNOWN and not path.name.startswith(".")) or (
        path.is_dir() and any(p.suffix.lower() in ("", ".dcm") and p.is_file() for p in path.iterdir())
    )


def find_images(path: str | os.PathLike) -> dict[str, tuple[Path, ...]]:
    """Cases under ``path``: one file, or a folder of files (``_0000`` channel groups joined).

    Returns ``{case_id: (channel files...)}`` sorted by case id.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder.")
    if path.is_file() or (path.is_dir() and not any(_is_image(p) and p.is_file() for p in path.iterdir()) and _is_image(path)):
        return {case_id_of(path): (path,)}
    files = sorted(p for p in path.iterdir() if _is_image(p))
    if not files:
        raise DataError(f"{path}: holds no image files (medseg reads {', '.join(sorted(set(_KNOWN)))}).")
    ids = [case_id_of(p) for p in files]
    if all(_CHANNEL.match(i) for i in ids):
        cases: dict[str, list[tuple[int, Path]]] = {}
        for case, file in zip(ids, files):
            match = _CHANNEL.match(case)
            assert match is not None
            cases.setdefault(match["case"], []).append((int(match["channel"]), file))
        return {c: tuple(f for _, f in sorted(v)) for c, v in sorted(cases.items())}
    return dict(sorted(zip(ids, ((f,) for f in files))))


class Dataset:
    """Cases with their files, class names and modality; ``load(case_id)`` gives a checked Sample.

    Args:
        cases: ``{case_id: CaseFiles}``.
        labels: ``{label value: name}``; ``None`` means "read the classes off the label files".
        modality: one name per channel (``"CT"`` switches planning to CT normalisation).
        groups: ``{case_id: subject}`` so that cross-validation keeps a subject's cases together.
        test_cases: ``{case_id: CaseFiles}`` without labels (``imagesTs/``).
        label_spec: what the label values mean (ignore label, regions); default built from
            ``labels``. Without either, :meth:`load` returns the files' own values until a
            Pipeline plans the classes and sets it (:meth:`with_label_spec`).

    With a label spec, :meth:`load` returns class indices ``0..K-1`` (and
    :data:`~medseg.io.labels.IGNORE_INDEX` for ignored voxels), whatever values the files hold.
    """

    def __init__(
        self,
        cases: dict[str, CaseFiles],
        *,
        labels: dict[int, str] | None = None,
        modality: Sequence[str] = ("MRI",),
        groups: dict[str, str] | None = None,
        test_cases: dict[str, CaseFiles] | None = None,
        root: Path | None = None,
        label_spec: LabelSpec | None = None,
    ) -> None:
        if not cases:
            raise DataError(f"{root or 'dataset'}: holds no cases.")
        self.cases = dict(cases)
        self.labels = dict(labels) if labels is not None else None
        self.modality = tuple(modality)
        self.groups = dict(groups) if groups else {}
        self.test_cases = dict(test_cases or {})
        self.root = root
        if label_spec is None and labels:
            label_spec = LabelSpec.from_values(list(labels), labels)
        self.label_spec = label_spec

    def with_label_spec(self, spec: LabelSpec) -> Dataset:
        """A copy of this dataset whose :meth:`load` encodes labels with ``spec``."""
        copy = _copy.copy(self)
        copy.label_spec = spec
        return copy

    def __len__(self) -> int:
        return len(self.cases)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {len(self)} cases)"

    @property
    def case_ids(self) -> list[str]:
        return list(self.cases)

    def group_of(self, case_id: str) -> str:
        return self.groups.get(case_id, case_id)

    def load(self, case_id: str) -> Sample:
        """Read one case, checking it: finite image, label on the image's grid, known classes."""
        if case_id not in self.cases and case_id not in self.test_cases:
            raise KeyError(f"Unknown case {case_id!r}; the dataset has {len(self)} cases, e.g. {self.case_ids[:3]}.")
        files = self.cases.get(case_id) or self.test_cases[case_id]
        image, geometry = load_image(files.images)
        label = None
        if files.label is not None:
            label_data, label_geometry = read_image_file(files.label)
            if label_data.shape[0] != 1:
                raise DataError(f"{files.label}: a label map must have one channel, got {label_data.shape[0]}.")
            if not label_geometry.same_grid(geometry, atol=1e-3):
                raise DataError(
                    f"{files.label}: label grid (shape {label_geometry.shape}, spacing "
                    f"{np.round(label_geometry.spacing, 4).tolist()}) differs from its image "
                    f"{files.images[0].name} (shape {geometry.shape}, spacing "
                    f"{np.round(geometry.spacing, 4).tolist()}); resample the label onto the image."
                )
            label = self._check_label(label_data[0], files.label)
        return Sample(case_id, image, geometry, label)

    def _check_label(self, label: np.ndarray, path: Path) -> np.ndarray:
        if not np.issubdtype(label.dtype, np.integer):
            if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
                raise DataError(f"{path}: label values must be whole class indices, found non-integers.")
        values = np.unique(label)
        if full_suffix(path) in Image2DIO.suffixes and set(values.tolist()) == {0, 255}:
            warnings.warn(f"{path}: binary mask stored as 0/255, read as 0/1.", stacklevel=3)
            label = label // 255
            values = np.array([0, 1])
        if self.label_spec is not None:
            return self.label_spec.encode(label.astype(np.int64, copy=False), source=path)
        if values.min() < 0:
            raise DataError(f"{path}: negative label values {values[values < 0].tolist()}.")
        return label.astype(np.int16 if values.max() > 127 else np.int8)


def load_image(files: Sequence[Path]) -> tuple[np.ndarray, Geometry]:
    """Read the channel files of one case into ``(C, *spatial)`` float32, checked for NaN/Inf."""
    arrays, geometry = [], None
    for file in files:
        data, grid = read_image_file(file)
        if geometry is not None and not grid.same_grid(geometry, atol=1e-3):
            raise DataError(f"{file}: channel grid differs from {files[0].name}; resample the channels together.")
        geometry = geometry or grid
        arrays.append(data)
    image = np.concatenate(arrays).astype(np.float32, copy=False)
    if not np.all(np.isfinite(image)):
        bad = int((~np.isfinite(image)).sum())
        raise DataError(f"{files[0]}: image holds {bad} NaN or Inf voxels; fix or mask them before training.")
    assert geometry is not None
    return image, geometry


def _match_labels(images: dict[str, tuple[Path, ...]], label_dir: Path) -> dict[str, CaseFiles]:
    labels: dict[str, Path] = {}
    for file in sorted(label_dir.iterdir()):
        if not _is_image(file):
            continue
        case = case_id_of(file)
        for suffix in _LABEL_SUFFIXES:
            if case.endswith(suffix) and case[: -len(suffix)] in images:
                case = case[: -len(suffix)]
                break
        labels[case] = file
    missing = [c for c in images if c not in labels]
    if missing:
        raise DataError(
            f"{label_dir}: no label for {len(missing)} image(s), e.g. {missing[:3]}; a label is named "
            f"like its image, optionally with a suffix {', '.join(_LABEL_SUFFIXES)}."
        )
    return {case: CaseFiles(files, labels[case]) for case, files in images.items()}


class FolderDataset(Dataset):
    """Images in one folder, labels in another, matched by case id.

    Args:
        root: a folder holding ``images/`` and ``labels/`` (or ``masks/``); or pass both below.
        images: the image folder.
        labels: the label folder.
        classes: ``{index: name}`` of the classes (default: read off the labels when planning).
        modality: one name per channel.
        group_pattern: a regular expression whose first group extracts the subject from a case id
            (e.g. ``r"^(\\d+)_"`` for HC18's ``010_2HC``), so a subject's images stay in one fold.

    Example:
        >>> data = FolderDataset("data_samples/hc18")  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        images: str | os.PathLike | None = None,
        labels: str | os.PathLike | None = None,
        classes: dict[int, str] | None = None,
        modality: Sequence[str] = ("MRI",),
        group_pattern: str | None = None,
    ) -> None:
        if root is not None:
            root = Path(root)
            images = images or root / "images"
            if labels is None:
                labels = next((root / n for n in ("labels", "masks") if (root / n).is_dir()), None)
        if images is None:
            raise ValueError("FolderDataset needs `root` or `images=`.")
        image_dir = Path(images)
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: image folder not found.")
        found = find_images(image_dir)
        cases = _match_labels(found, Path(labels)) if labels is not None else {
            c: CaseFiles(f) for c, f in found.items()
        }
        groups = _groups(cases, group_pattern)
        super().__init__(cases, labels=classes, modality=modality, groups=groups, root=Path(root or image_dir))


def _groups(cases: dict[str, CaseFiles], pattern: str | None) -> dict[str, str]:
    if pattern is None:
        return {}
    regex: Callable[[str], re.Match[str] | None] = re.compile(pattern).search
    groups = {}
    for case in cases:
        match = regex(case)
        groups[case] = match.group(1) if match and match.groups() else case
    return groups


class MSDDataset(Dataset):
    """A Medical Segmentation Decathlon or nnU-Net (v1/v2) folder with ``dataset.json``.

    Args:
        root: the task folder (holding ``dataset.json``, ``imagesTr/``, ``labelsTr/``).
        group_pattern: see :class:`FolderDataset`.

    Example:
        >>> data = MSDDataset("Task04_Hippocampus")  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike, *, group_pattern: str | None = None) -> None:
        root = Path(root)
        manifest = root / "dataset.json"
        if not manifest.is_file():
            raise DataError(f"{root}: no dataset.json; is this an MSD/nnU-Net task folder?")
        try:
            meta = json.loads(manifest.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"{manifest}: not valid JSON ({error}).") from error
        labels = _parse_labels(meta.get("labels", {}))
        channels = meta.get("modality") or meta.get("channel_names") or {"0": "MRI"}
        modality = [channels[k] for k in sorted(channels, key=int)]
        cases = self._training_cases(root, meta)
        test = find_images(root / "imagesTs") if (root / "imagesTs").is_dir() else {}
        super().__init__(
            cases,
            labels=labels or None,
            modality=modality,
            groups=_groups(cases, group_pattern),
            test_cases={c: CaseFiles(f) for c, f in test.items()},
            root=root,
        )

    @staticmethod
    def _training_cases(root: Path, meta: dict) -> dict[str, CaseFiles]:
        if "training" in meta:
            cases, missing = {}, []
            for entry in meta["training"]:
                image, label = root / entry["image"], root / entry["label"]
                case = case_id_of(image)
                if not image.exists():
                    channels = sorted(image.parent.glob(f"{case}_[0-9][0-9][0-9][0-9]{full_suffix(image)}"))
                    if not channels:
                        missing.append(image)
                        continue
                    images = tuple(channels)
                else:
                    images = (image,)
                if not label.exists():
                    missing.append(label)
                    continue
                cases[case] = CaseFiles(images, label)
            if missing:
                raise DataError(
                    f"{root / 'dataset.json'} lists {len(missing)} file(s) that are not there, e.g. "
                    f"{', '.join(str(m) for m in missing[:3])}."
                )
            return cases
        if not (root / "imagesTr").is_dir():
            raise DataError(f"{root}: no imagesTr/ folder.")
        return _match_labels(find_images(root / "imagesTr"), root / "labelsTr")


def _parse_labels(raw: dict) -> dict[int, str]:
    """MSD writes ``{"0": "background"}``, nnU-Net v2 ``{"background": 0}`` (regions as lists)."""
    labels = {}
    for key, value in raw.items():
        if isinstance(value, list):
            continue
        if str(key).lstrip("-").isdigit():
            labels[int(key)] = str(value)
        else:
            labels[int(value)] = str(key)
    return labels


def open_dataset(path: str | os.PathLike, **kwargs) -> Dataset:
    """An MSD/nnU-Net folder if ``path`` holds ``dataset.json``, else a folder pair dataset."""
    path = Path(path)
    if (path / "dataset.json").is_file():
        return MSDDataset(path, **kwargs)
    if (path / "images").is_dir():
        return FolderDataset(path, **kwargs)
    raise DataError(
        f"{path}: expected an MSD/nnU-Net folder (dataset.json, imagesTr/, labelsTr/) or a folder "
        "with images/ and labels/ (or masks/)."
    )
