"""Datasets: a list of cases and a way to load each as a checked :class:`Sample`.

Two layouts are understood: MSD/nnU-Net folders (``dataset.json``, ``imagesTr/``, ``labelsTr/``,
``imagesTs/``, channels as ``_0000``, ``_0001``... where declared) and plain folder pairs
``images/`` + ``labels/`` (or ``masks/``), where a label may carry a ``_mask``, ``_label`` or
``_seg`` suffix. See :mod:`medseg.io.cases` for how files become cases.
"""

from __future__ import annotations

import copy as _copy
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from .cases import CaseFiles, case_groups, find_images, glob_escape, image_files, match_labels
from .dataset_json import DatasetJson, read_dataset_json
from .files import case_id_of, check_case_id, full_suffix
from .labels import LabelSpec
from .readers import Image2DIO, output_suffix, read_image_file, write_label_file
from .sample import Geometry, Sample

__all__ = ["CaseFiles", "Dataset", "FolderDataset", "MSDDataset", "find_images", "load_image", "open_dataset"]

_LABEL_DIRS = ("labels", "masks")


def _as_modality(modality: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"CT"``, ``"T1,T2"`` or ``["T1", "T2"]`` -> one name per channel; ``None`` stays."""
    if modality is None:
        return None
    names = modality.split(",") if isinstance(modality, str) else list(modality)
    names = [str(n).strip() for n in names]
    if not names or not all(names):
        raise ValueError(f"modality={modality!r}: give one name per channel, e.g. 'CT' or 'T1,T2'.")
    return tuple(names)


def _as_classes(classes: Mapping[int, str] | Sequence[int] | LabelSpec | None) -> LabelSpec | None:
    """``{value: name}`` (keys may be strings of digits, as JSON/YAML give them), the values alone,
    or a LabelSpec."""
    if classes is None or isinstance(classes, LabelSpec):
        return classes
    if isinstance(classes, Sequence) and not isinstance(classes, str):
        if not all(str(v).lstrip("-").isdigit() for v in classes):
            raise ValueError(f"classes={classes!r}: label values are whole numbers, e.g. [0, 1, 2, 4].")
        classes = {int(v): "background" if int(v) == 0 else f"class_{int(v)}" for v in classes}
    if not isinstance(classes, Mapping) or not all(str(k).lstrip("-").isdigit() for k in classes):
        raise ValueError(f"classes={classes!r}: expected {{label value: name}}, e.g. {{0: 'background', 1: 'tumour'}}.")
    named = {int(k): str(v) for k, v in classes.items()}
    return LabelSpec.from_values(list(named), named)


class Dataset:
    """Cases with their files, class names and modality; ``load(case_id)`` gives a checked Sample.

    Args:
        cases: ``{case_id: CaseFiles}``; ids are file-name safe (no separator, ``..``, leading dot).
        labels: ``{label value: name}``; ``None`` means "read the classes off the label files".
        modality: one name per channel (``"CT"`` switches planning to CT normalisation);
            ``None`` when not declared (:attr:`channels` is then ``None``; named ``MRI``).
        groups: ``{case_id: subject}`` so that cross-validation keeps a subject's cases together.
        test_cases: ``{case_id: CaseFiles}`` without labels (``imagesTs/``).
        root: the folder the dataset was read from (for messages).
        label_spec: what the label values mean (ignore label, regions); default built from
            ``labels``. Without either, :meth:`load` returns the files' own values until a
            Pipeline plans the classes and sets it (:meth:`with_label_spec`).

    With a label spec, :meth:`load` returns class indices ``0..K-1`` (and
    :data:`~medseg.io.labels.IGNORE_INDEX` for ignored voxels), whatever values the files hold.

    Raises:
        DataError: naming the id when a case id is unsafe, or the root when there are no cases.
    """

    def __init__(
        self,
        cases: dict[str, CaseFiles],
        *,
        labels: dict[int, str] | None = None,
        modality: str | Sequence[str] | None = None,
        groups: dict[str, str] | None = None,
        test_cases: dict[str, CaseFiles] | None = None,
        root: Path | None = None,
        label_spec: LabelSpec | None = None,
    ) -> None:
        if not cases:
            raise DataError(f"{root or 'dataset'}: holds no cases.")
        for case in [*cases, *(test_cases or {})]:
            check_case_id(case, root or "dataset")
        declared = _as_modality(modality)
        self.cases = dict(cases)
        if label_spec is None and labels:
            label_spec = LabelSpec.from_values(list(labels), labels)
        if labels is None and label_spec is not None:
            labels = dict(zip(label_spec.values, label_spec.names))
        self.labels = dict(labels) if labels is not None else None
        self.modality = declared or ("MRI",)
        self.channels = None if declared is None else len(declared)
        """Declared channel count (``None``: not declared, read off the images)."""
        self.groups = dict(groups) if groups else {}
        self.test_cases = dict(test_cases or {})
        self.root = root
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

    def files(self, case_id: str) -> CaseFiles:
        """The files of a training or test case.

        Raises:
            DataError: naming the id and a few known ids when the case is not in the dataset.
        """
        files = self.cases.get(case_id) or self.test_cases.get(case_id)
        if files is None:
            raise DataError(f"{self.root or 'dataset'}: no case {case_id!r}; the dataset has {len(self)} cases, "
                            f"e.g. {self.case_ids[:3]}.")
        return files

    def write_prediction(self, labels: np.ndarray, geometry: Geometry, folder: str | os.PathLike,
                         case: str) -> Path:
        """Write a predicted label map (dataset values) of ``case`` into ``folder`` in this
        dataset's own file format: here ``<case><suffix>`` in the format of the case's first image
        (NIfTI for DICOM, PNG for 2D). Benchmark formats override it (palette PNGs, label ids...).
        """
        like = self.files(case).images[0]
        return write_label_file(labels, geometry, Path(folder) / f"{case}{output_suffix(like)}")

    def load(self, case_id: str) -> Sample:
        """Read one case, checking it: finite image, declared channels, label on the image's grid,
        known classes."""
        files = self.files(case_id)
        image, geometry = load_image(files.images)
        if self.channels is not None and image.shape[0] != self.channels:
            raise DataError(f"{files.images[0]}: case {case_id!r} has {image.shape[0]} channel(s), the dataset "
                            f"declares {self.channels} ({', '.join(self.modality)}); fix the files or the modality.")
        label = None
        if files.label is not None:
            label_data, label_geometry = read_image_file(files.label)
            label_data = one_channel(label_data, files.label)
            if not label_geometry.same_grid(geometry, atol=1e-3):
                raise DataError(
                    f"{files.label}: label grid (shape {label_geometry.shape}, spacing "
                    f"{np.round(label_geometry.spacing, 4).tolist()}) differs from its image "
                    f"{files.images[0].name} (shape {geometry.shape}, spacing "
                    f"{np.round(geometry.spacing, 4).tolist()}); resample the label onto the image."
                )
            label = self._check_label(label_data, files.label)
        return Sample(case_id, image, geometry, label)

    def load_label(self, case_id: str) -> np.ndarray | None:
        """The label of a case alone, checked as :meth:`load` checks it (without comparing its
        grid with the image's); ``None`` for a case without one. Formats that override
        :meth:`load` read their labels there."""
        path = self.files(case_id).label
        return None if path is None else self._check_label(one_channel(read_image_file(path)[0], path), path)

    def _check_label(self, label: np.ndarray, path: Path) -> np.ndarray:
        if not np.issubdtype(label.dtype, np.integer):
            if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
                raise DataError(f"{path}: label values must be whole class indices, found non-integers.")
        values = np.unique(label)
        spec = self.label_spec
        if (full_suffix(path) in Image2DIO.suffixes and set(values.tolist()) == {0, 255}
                and (spec is None or 255 not in spec.values)):
            warnings.warn(f"{path}: binary mask stored as 0/255, read as 0/1.", stacklevel=3)
            label = label // 255
            values = np.array([0, 1])
        if spec is not None:
            return spec.encode(label.astype(np.int64, copy=False), source=path)
        if values.min() < 0:
            raise DataError(f"{path}: negative label values {values[values < 0].tolist()}.")
        return label.astype(np.int16 if values.max() > 127 else np.int8)


def one_channel(label: np.ndarray, path: Path) -> np.ndarray:
    """A label map's single channel; a mask saved as RGB(A) with equal colour channels is one."""
    if label.shape[0] > 1 and full_suffix(path) in Image2DIO.suffixes and all(
            np.array_equal(label[0], c) for c in label[1:3]):
        return label[0]
    if label.shape[0] != 1:
        raise DataError(f"{path}: a label map must have one channel, got {label.shape[0]}.")
    return label[0]


def load_image(files: Sequence[Path]) -> tuple[np.ndarray, Geometry]:
    """Read the channel files of one case into ``(C, *spatial)`` float32, checked for NaN/Inf."""
    arrays, geometry = [], None
    for file in files:
        data, grid = read_image_file(file)
        if geometry is not None and not grid.same_grid(geometry, atol=1e-3):
            raise DataError(f"{file}: channel grid differs from {files[0].name}; resample the channels together.")
        geometry = geometry or grid
        arrays.append(data)
    if geometry is None:
        raise DataError("load_image: no image files given.")
    try:
        image = np.concatenate(arrays).astype(np.float32, copy=False)
    except (TypeError, ValueError) as error:  # complex or structured voxels from a damaged header
        raise DataError(f"{files[0]}: voxels of type {arrays[0].dtype} are not image intensities ({error}).") from None
    if not np.all(np.isfinite(image)):
        bad = int((~np.isfinite(image)).sum())
        raise DataError(f"{files[0]}: image holds {bad} NaN or Inf voxels; fix or mask them before training.")
    return image, geometry


def _label_dir(root: Path, labels: str | os.PathLike | None) -> Path:
    if labels is not None:
        given = Path(labels)
        return root / given if not given.is_dir() and (root / given).is_dir() else given
    found = next((root / n for n in _LABEL_DIRS if (root / n).is_dir()), None)
    if found is None:
        others = sorted(p.name + "/" for p in root.iterdir() if p.is_dir() and p.name != "images")
        raise DataError(
            f"{root}: found images/ but no label folder (looked for {', '.join(n + '/' for n in _LABEL_DIRS)}; "
            f"it holds {', '.join(others) or 'no other folder'}); pass labels= the folder of label maps, e.g. "
            f"FolderDataset({str(root)!r}, labels={str(root / (others[0][:-1] if others else 'gt'))!r}), "
            "or images= alone for cases without labels."
        )
    return found


class FolderDataset(Dataset):
    """Images in one folder, labels in another, matched by case id.

    Args:
        root: a folder holding ``images/`` and ``labels/`` (or ``masks/``); or pass both below.
        images: the image folder.
        labels: the label folder (a path, or a name inside ``root``).
        classes: ``{value: name}`` of the classes (or the values alone, or a :class:`LabelSpec`);
            default: read off the labels when planning.
        modality: one name per channel: ``"CT"``, ``"T1,T2"`` or ``["T1", "T2"]``. With more than
            one, images ``CASE_0000``, ``CASE_0001``... are the channels of ``CASE``; with one, a
            ``_0000`` on every image is dropped. Default: not declared (every file is a case).
        group_pattern: a regular expression whose first group extracts the subject from a case id
            (e.g. ``r"^(\\d+)_"`` for HC18's ``010_2HC``), so a subject's images stay in one fold.

    Example:
        >>> data = FolderDataset("data_samples/hc18")  # doctest: +SKIP
        >>> data = FolderDataset("mri", modality="T1,T2", classes={0: "background", 1: "tumour"})  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        images: str | os.PathLike | None = None,
        labels: str | os.PathLike | None = None,
        classes: Mapping[int, str] | Sequence[int] | LabelSpec | None = None,
        modality: str | Sequence[str] | None = None,
        group_pattern: str | None = None,
    ) -> None:
        declared = _as_modality(modality)
        label_dir = None
        if root is not None:
            root = Path(root)
            images = images or root / "images"
            label_dir = _label_dir(root, labels)
        elif labels is not None:
            label_dir = Path(labels)
        if images is None:
            raise ValueError("FolderDataset needs `root` or `images=`.")
        image_dir = Path(images)
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: image folder not found.")
        found = find_images(image_dir, channels=None if declared is None else len(declared))
        cases = match_labels(found, label_dir) if label_dir is not None else {c: CaseFiles(f) for c, f in found.items()}
        spec = _as_classes(classes)
        super().__init__(cases, modality=declared, groups=case_groups(cases, group_pattern),
                         root=Path(root or image_dir), label_spec=spec)


class MSDDataset(Dataset):
    """A Medical Segmentation Decathlon or nnU-Net (v1/v2) folder with ``dataset.json``.

    Args:
        root: the task folder (holding ``dataset.json``, ``imagesTr/``, ``labelsTr/``).
        classes: replaces the classes of ``dataset.json`` (with a warning when they differ).
        modality: replaces its channel names (with a warning when they differ).
        group_pattern: see :class:`FolderDataset`.

    Example:
        >>> data = MSDDataset("Task04_Hippocampus")  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        classes: Mapping[int, str] | Sequence[int] | LabelSpec | None = None,
        modality: str | Sequence[str] | None = None,
        group_pattern: str | None = None,
    ) -> None:
        root = Path(root)
        manifest = root / "dataset.json"
        if not manifest.is_file():
            raise DataError(f"{root}: no dataset.json; is this an MSD/nnU-Net task folder?")
        meta = read_dataset_json(manifest)
        spec = _override(manifest, "classes", _as_classes(classes), meta.label_spec)
        declared = _override(manifest, "modality", _as_modality(modality), meta.modality)
        channels = len(declared) if declared else 1  # nnU-Net names: CASE_0000 is channel 0
        cases = self._training_cases(root, meta, channels)
        if meta.num_training is not None and meta.num_training != len(cases):
            warnings.warn(f"{manifest}: numTraining is {meta.num_training}, found {len(cases)} cases.", stacklevel=2)
        test_dir = root / "imagesTs"
        has_test = test_dir.is_dir() and image_files(test_dir, meta.file_ending)
        test = find_images(test_dir, channels=channels, file_ending=meta.file_ending) if has_test else {}
        super().__init__(
            cases,
            modality=declared,
            groups=case_groups(cases, group_pattern),
            test_cases={c: CaseFiles(f) for c, f in test.items()},
            root=root,
            label_spec=spec,
        )

    @staticmethod
    def _training_cases(root: Path, meta: DatasetJson, channels: int) -> dict[str, CaseFiles]:
        if meta.training is None:
            if not (root / "imagesTr").is_dir():
                raise DataError(f"{root}: no imagesTr/ folder.")
            found = find_images(root / "imagesTr", channels=channels, file_ending=meta.file_ending)
            return match_labels(found, root / "labelsTr", meta.file_ending)
        cases, missing = {}, []
        for entry in meta.training:
            image, label = root / entry["image"], root / entry["label"]
            case = check_case_id(case_id_of(image), root / "dataset.json")
            images = (image,) if image.exists() else tuple(
                sorted(image.parent.glob(f"{glob_escape(case)}_[0-9][0-9][0-9][0-9]{full_suffix(image)}")))
            if not images:
                missing.append(image)
            if not label.exists():
                missing.append(label)
            if images and label.exists():
                if len(images) > 1 and len(images) != channels:
                    raise DataError(f"{root / 'dataset.json'}: case {case!r} has {len(images)} channel files, "
                                    f"the dataset declares {channels} channel(s).")
                cases[case] = CaseFiles(images, label)
        if missing:
            raise DataError(
                f"{root / 'dataset.json'} lists {len(missing)} file(s) that are not there, e.g. "
                f"{', '.join(str(m) for m in missing[:3])}."
            )
        return cases


def _override(manifest: Path, name: str, given, declared):
    """Explicit arguments win over ``dataset.json``, with a warning when they differ."""
    if given is None:
        return declared
    if declared is not None and given != declared:
        warnings.warn(f"{manifest}: {name}={given!r} replaces the file's {declared!r}.", stacklevel=3)
    return given


def open_dataset(path: str | os.PathLike, format: str | None = None, **kwargs) -> Dataset:  # noqa: A002
    """The dataset in folder ``path``, its layout detected (or named by ``format``).

    A benchmark layout (:mod:`medseg.io.formats`: ``format_names()``) if ``path`` has one, an
    MSD/nnU-Net folder if it holds ``dataset.json``, else a folder pair dataset.

    Keyword arguments (``classes``, ``modality``, ``group_pattern``, and for folder pairs
    ``labels``) go to the dataset class.
    """
    from .formats import detect_format, format_class

    path = Path(path)
    if format is None:
        format = detect_format(path)  # noqa: A001
    if format is not None:
        return format_class(format)(path, **kwargs)
    if (path / "dataset.json").is_file():
        return MSDDataset(path, **kwargs)
    if (path / "images").is_dir():
        return FolderDataset(path, **kwargs)
    raise DataError(f"{path}: expected an MSD/nnU-Net folder (dataset.json, imagesTr/, labelsTr/), a folder with "
                    "images/ and labels/ (or masks/), or a VOC, Cityscapes, CamVid or COCO folder (see --format).")
