"""Corrected label files as viewers save them (NIfTI, NRRD, 3D Slicer's ``.seg.nrrd``), and the
checks that they lie on their scan and hold only known label values."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import DataError
from ..io import Geometry, LabelSpec, case_id_of, read_image_file

__all__ = ["case_of", "check_grid", "check_values", "read_correction", "region_dice"]

ORIGIN_TOLERANCE = 0.05  # of the smallest voxel size
SPACING_TOLERANCE = 1e-3  # relative
DIRECTION_TOLERANCE = 1e-3  # per cosine
_VIEWER_SUFFIXES = ("_seg", "-seg", "_label", "-label", "_labels", "_mask", "_corrected", "-corrected")
_FIX = ("save the segmentation on the scan's own grid (3D Slicer: the scan as the segmentation's reference "
        "geometry; ITK-SNAP: the scan as main image, then Segmentation > Save)")


def case_of(path: Path, cases: Iterable[str]) -> str:
    """The case a corrected file belongs to, by its name: ``CASE.nii.gz``, ``CASE.seg.nrrd``,
    ``CASE_seg.nrrd``, ``CASE-label.nrrd``... (a suffix a viewer adds is dropped).

    Raises:
        DataError: naming the file and some known cases when no case matches.
    """
    known = set(cases)
    name = case_id_of(path)
    name = name[:-4] if name.endswith(".seg") else name
    candidates = [name] + [name[: -len(s)] for s in _VIEWER_SUFFIXES if name.endswith(s)]
    for candidate in candidates:
        if candidate in known:
            return candidate
    raise DataError(f"{path}: no case {name!r} in this review (it has e.g. {sorted(known)[:3]}); name the file "
                    "after its case, e.g. CASE.nii.gz or CASE.seg.nrrd.")


def read_correction(path: Path, spec: LabelSpec) -> tuple[np.ndarray, Geometry]:
    """A corrected label map ``(*spatial)`` in dataset values, and its geometry.

    A ``.seg.nrrd`` (3D Slicer) holds segments ``Segment{i}_*`` in one or more layers: a segment's
    voxels are those of its layer equal to ``Segment{i}_LabelValue``; it gets the value of the
    class whose name it bears (case-insensitive), else its ``LabelValue``.

    Raises:
        DataError: naming the file when it cannot be read, has several channels that are no
            Slicer layers, or holds non-integer values.
    """
    data, geometry = read_image_file(path)
    if path.name.lower().endswith(".seg.nrrd"):
        return _slicer_labels(path, data, spec), geometry
    if data.shape[0] != 1:
        raise DataError(f"{path}: a label map must have one channel, got {data.shape[0]}; save one label layer.")
    return _whole(data[0], path), geometry


def _whole(values: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(values.dtype, np.integer) and not np.array_equal(values, np.round(values)):
        raise DataError(f"{path}: label values must be whole numbers, found fractions; save a label map.")
    return values.astype(np.int64)


def _slicer_labels(path: Path, layers: np.ndarray, spec: LabelSpec) -> np.ndarray:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    meta = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
    indices = sorted({int(m.group(1)) for key in meta if (m := re.match(r"Segment(\d+)_", key))})
    if not indices:  # a plain label NRRD named .seg.nrrd
        return _whole(layers[0], path) if layers.shape[0] == 1 else _whole(layers.max(axis=0), path)
    by_name = {str(name).lower(): value for value, name in zip(spec.values, spec.names)}
    layers = _whole(layers, path)
    out = np.zeros(layers.shape[1:], dtype=np.int64)
    claimed = np.zeros(layers.shape, dtype=bool)
    for i in indices:
        try:
            value, layer = int(meta.get(f"Segment{i}_LabelValue", i + 1)), int(meta.get(f"Segment{i}_Layer", 0))
        except ValueError as error:
            raise DataError(f"{path}: Segment{i}_LabelValue/_Layer are not whole numbers ({error}).") from error
        if not 0 <= layer < layers.shape[0]:
            raise DataError(f"{path}: Segment{i}_Layer is {layer}, the file has {layers.shape[0]} layer(s).")
        mask = layers[layer] == value
        claimed[layer] |= mask
        out[mask] = by_name.get(meta.get(f"Segment{i}_Name", "").strip().lower(), value)
    for layer in range(layers.shape[0]):  # voxels no segment describes keep their value: the value check names it
        loose = (layers[layer] != 0) & ~claimed[layer]
        out[loose] = layers[layer][loose]
    return out


def check_grid(geometry: Geometry, scan: Geometry) -> str | None:
    """Why a label map does not lie on its scan's grid (shape, spacing, direction, origin), or
    ``None`` when it does, within the module's tolerances."""
    if geometry.shape != scan.shape:
        return f"shape {list(geometry.shape)} differs from the scan's {list(scan.shape)}; {_FIX}"
    spacing, scan_spacing = np.asarray(geometry.spacing), np.asarray(scan.spacing)
    if not np.allclose(spacing, scan_spacing, rtol=SPACING_TOLERANCE, atol=1e-6):
        return (f"spacing {np.round(spacing, 5).tolist()} mm differs from the scan's "
                f"{np.round(scan_spacing, 5).tolist()} mm; {_FIX}")
    direction = geometry.affine[:3, :3] / np.linalg.norm(geometry.affine[:3, :3], axis=0)
    scan_direction = scan.affine[:3, :3] / np.linalg.norm(scan.affine[:3, :3], axis=0)
    if not np.allclose(direction, scan_direction, atol=DIRECTION_TOLERANCE):
        return (f"direction {(np.round(direction, 4) + 0.0).tolist()} differs from the scan's "
                f"{(np.round(scan_direction, 4) + 0.0).tolist()} (flipped or rotated axes); {_FIX}")
    shift = float(np.linalg.norm(geometry.affine[:3, 3] - scan.affine[:3, 3]))
    if shift > ORIGIN_TOLERANCE * float(scan_spacing.min()):
        return (f"origin {np.round(geometry.affine[:3, 3], 4).tolist()} (RAS mm) lies {shift:.4g} mm from the "
                f"scan's {np.round(scan.affine[:3, 3], 4).tolist()}; {_FIX}")
    return None


def check_values(values: np.ndarray, spec: LabelSpec) -> str | None:
    """Why a label map holds values that are no class of ``spec`` (or ``None``)."""
    known = set(spec.values) | ({spec.ignore} if spec.ignore is not None else set())
    unknown = sorted(set(np.unique(values).tolist()) - known)
    if not unknown:
        return None
    classes = ", ".join(f"{v}={n}" for v, n in zip(spec.values, spec.names))
    return (f"label values {unknown} are no class of the run ({classes}); relabel them in the viewer "
            "(or name a Slicer segment after its class).")


def region_dice(proposal: np.ndarray, final: np.ndarray, spec: LabelSpec) -> dict[int, float]:
    """Dice per foreground value between two label maps of dataset values (1.0 when both lack
    the class: nothing had to change)."""
    scores = {}
    for value in spec.values[1:]:
        a, b = proposal == value, final == value
        total = int(a.sum() + b.sum())
        scores[int(value)] = 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total
    return scores
