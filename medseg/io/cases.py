"""Which files make a case: one file per case, or nnU-Net's channel files grouped by case.

A name ending in ``_0000``, ``_0001``... is read as a channel of a case only where channels are
declared (``dataset.json``'s ``channel_names``/``modality``, or ``channels=``): ``amos_0001.nii.gz``
in a folder without declared channels is the case ``amos_0001``. With one declared channel, a
trailing ``_0000`` on *every* image (nnU-Net v2's single-channel naming) is dropped, so
``case_0000.nii.gz`` is the case ``case`` and matches its label ``case.nii.gz``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .files import case_id_of, check_case_id
from .readers import READERS, read_image_file

__all__ = ["LABEL_SUFFIXES", "CaseFiles", "case_groups", "files_per_case", "find_images", "image_files", "is_image", "match_labels"]

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
LABEL_SUFFIXES = ("_mask", "_label", "_labels", "_seg", "_segmentation")
KNOWN_SUFFIXES = tuple(s for reader in READERS for s in reader.suffixes)


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: one image file per channel (or a DICOM folder) and a label."""

    images: tuple[Path, ...]
    label: Path | None = None


def _is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and any(
        p.is_file() and p.suffix.lower() in ("", ".dcm") and not p.name.startswith(".") for p in path.iterdir()
    )


def is_image(path: Path, file_ending: str | None = None) -> bool:
    """Whether ``path`` is an image file medseg reads (or a DICOM folder); hidden files are not."""
    if path.name.startswith("."):
        return False
    if path.is_file():
        if file_ending is not None:
            return path.name.lower().endswith(file_ending.lower())
        return any(path.name.lower().endswith(s) for s in KNOWN_SUFFIXES)
    return file_ending is None and _is_dicom_folder(path)


def _stem(path: Path, file_ending: str | None) -> str:
    if file_ending is not None and path.name.lower().endswith(file_ending.lower()):
        return path.name[: len(path.name) - len(file_ending)]
    return case_id_of(path)


def image_files(folder: Path, file_ending: str | None = None) -> list[Path]:
    """The image files (and DICOM folders) in ``folder``, sorted; with ``file_ending`` only those."""
    return sorted(p for p in folder.iterdir() if is_image(p, file_ending))


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _one_per_file(files: list[Path], ids: list[str], folder: Path) -> dict[str, tuple[Path, ...]]:
    cases: dict[str, tuple[Path, ...]] = {}
    for case, file in zip(ids, files):
        if case in cases:
            raise DataError(f"{folder}: {cases[case][0].name} and {file.name} are both case {case!r}; "
                            "keep one file per case (or pass file_ending=).")
        cases[case] = (file,)
    return dict(sorted(cases.items()))


def _grouped(files: list[Path], ids: list[str], channels: int, folder: Path) -> dict[str, tuple[Path, ...]]:
    matches = [_CHANNEL.match(i) for i in ids]
    numbers = [int(m["channel"]) for m in matches if m]
    if 0 not in numbers or max(numbers) >= channels:  # numbered cases (amos_0001...), not channels
        return _one_per_file(files, ids, folder)
    groups: dict[str, dict[int, Path]] = {}
    for file, match in zip(files, matches):
        if match is None:
            raise DataError(f"{file}: {channels} channels are declared, so image files are named "
                            f"CASE_0000 .. CASE_{channels - 1:04d}; rename it or fix the declared channels.")
        groups.setdefault(match["case"], {})[int(match["channel"])] = file
    for case, found in groups.items():
        if sorted(found) != list(range(channels)):
            names = ", ".join(f.name for _, f in sorted(found.items()))
            raise DataError(f"{folder}: case {case!r} has channel files {names}; {channels} channels are declared, "
                            f"so every case needs {case}_0000 .. {case}_{channels - 1:04d}.")
    return {c: tuple(f for _, f in sorted(v.items())) for c, v in sorted(groups.items())}


def find_images(
    path: str | os.PathLike, *, channels: int | None = None, file_ending: str | None = None
) -> dict[str, tuple[Path, ...]]:
    """The cases under ``path``: one file, a DICOM folder, or a folder of image files.

    Args:
        path: an image file, a DICOM series folder or a folder of images.
        channels: the declared channel count. ``None`` (nothing declared): every file is a case
            named after its file, never grouped (what ``medseg evaluate`` uses). ``1``: a
            trailing ``_0000`` present on every file is dropped (nnU-Net v2 naming). ``n > 1``:
            files ``CASE_0000 .. CASE_{n-1}`` are grouped into case ``CASE``, every case needing
            all ``n``; a folder where no name ends in ``_0000``, or some number is ``n`` or more,
            holds numbered cases (``img_0001.png``...), one per file.
        file_ending: only files ending in it are cases (nnU-Net's ``file_ending``).

    Returns:
        ``{case_id: (channel files...)}`` sorted by case id.

    Raises:
        DataError: naming the folder or case when nothing is found or channels are incomplete.

    Example:
        >>> find_images("imagesTs", channels=2)  # doctest: +SKIP
        {'case1': (PosixPath('imagesTs/case1_0000.nii.gz'), PosixPath('imagesTs/case1_0001.nii.gz'))}
    """
    path = Path(path)
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int) or channels < 1):
        raise ValueError(f"channels must be a positive integer or None, got {channels!r}.")
    if not path.exists():
        raise DataError(f"{path}: no such file or folder.")
    if path.is_file() or (_is_dicom_folder(path) and not image_files(path, file_ending)):
        files = [path]
    else:
        files = [p for p in image_files(path, file_ending) if p.is_file() or _is_dicom_folder(p)]
    if not files:
        wanted = file_ending or ", ".join(sorted(set(KNOWN_SUFFIXES)))
        raise DataError(f"{path}: holds no image files (medseg reads {wanted} and DICOM folders).")
    ids = [_stem(f, file_ending) for f in files]
    if channels is not None and channels > 1:
        return _grouped(files, ids, channels, path)
    if channels == 1 and all(i.endswith("_0000") and len(i) > 5 for i in ids):
        ids = [i[:-5] for i in ids]
    return _one_per_file(files, ids, path)


def _label_ids(label_dir: Path, images: dict[str, tuple[Path, ...]], file_ending: str | None) -> dict[str, Path]:
    labels: dict[str, Path] = {}
    for file in image_files(label_dir, file_ending):
        case = _stem(file, file_ending)
        for suffix in LABEL_SUFFIXES:
            if case.endswith(suffix) and case[: -len(suffix)] in images:
                case = case[: -len(suffix)]
                break
        if case in labels:
            raise DataError(f"{label_dir}: {labels[case].name} and {file.name} are both the label of case {case!r}.")
        labels[case] = file
    return labels


def match_labels(
    images: dict[str, tuple[Path, ...]], label_dir: Path, file_ending: str | None = None
) -> dict[str, CaseFiles]:
    """Pair each case with its label file in ``label_dir`` (named like the case, optionally with
    a ``_mask``/``_label``/``_seg`` suffix).

    Raises:
        DataError: naming the folder and cases when a label is missing.
    """
    if not label_dir.is_dir():
        raise DataError(f"{label_dir}: label folder not found.")
    labels = _label_ids(label_dir, images, file_ending)
    missing = [c for c in images if c not in labels]
    if missing:
        hint = ""
        if all(c.endswith("_0000") for c in images) and any(c[:-5] in labels for c in missing):
            hint = (" The images end in _0000 (nnU-Net's channel suffix) and the labels do not: declare "
                    "the channels (modality='MRI', one name per channel) to read _0000 as a channel.")
        raise DataError(
            f"{label_dir}: no label for {len(missing)} image(s), e.g. {missing[:3]}; a label is named "
            f"like its image, optionally with a suffix {', '.join(LABEL_SUFFIXES)}.{hint}"
        )
    return {check_case_id(case, files[0]): CaseFiles(files, labels[case]) for case, files in images.items()}


def files_per_case(inputs: str | os.PathLike, channels: int) -> int:
    """How many files make one case of ``channels`` image channels in ``inputs``: the channels
    over those one file holds (``CASE_0000``, ``CASE_0001``... of one-channel files; one RGB file
    for three channels). The value :func:`find_images` takes as ``channels``."""
    if channels == 1:
        return 1
    first = next(iter(find_images(inputs).values()))[0]
    return max(1, channels // read_image_file(first)[0].shape[0])


def case_groups(cases: dict[str, CaseFiles], pattern: str | None) -> dict[str, str]:
    """``{case: subject}``: the first group of ``pattern`` (a regular expression) in each case id,
    or the id itself where it does not match; ``{}`` without a pattern (every case its own)."""
    if pattern is None:
        return {}
    regex = re.compile(pattern).search
    groups = {}
    for case in cases:
        match = regex(case)
        groups[case] = match.group(1) if match and match.groups() else case
    return groups
