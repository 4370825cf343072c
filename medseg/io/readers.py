"""Image readers and writers, one per file family, chosen by suffix.

Every reader returns the image as ``(C, *spatial)`` in nibabel's index order (x, y[, z]) and a
:class:`~medseg.io.sample.Geometry` in RAS, so a case reads the same whichever reader opened it.
"""

from __future__ import annotations

import abc
import os
import warnings
from pathlib import Path
from typing import ClassVar

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..errors import DataError
from .files import atomic_path, full_suffix
from .sample import Geometry

__all__ = [
    "READERS",
    "ImageIO",
    "Image2DIO",
    "NiftiIO",
    "NumpyIO",
    "SimpleITKIO",
    "io_for",
    "output_suffix",
    "read_image_file",
    "write_label_file",
]


class ImageIO(abc.ABC):
    """Reads images and writes label maps of one file family."""

    suffixes: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        """Return ``(array (C, *spatial), geometry)``."""

    @abc.abstractmethod
    def write(self, array: np.ndarray, geometry: Geometry, path: Path) -> None:
        """Write a ``(*spatial)`` array on ``geometry`` to ``path`` (called on a temporary path)."""


class NiftiIO(ImageIO):
    """NIfTI through nibabel; 4D files hold channels on their last axis."""

    suffixes = (".nii", ".nii.gz")

    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
        if data.ndim == 4:
            data = np.moveaxis(data, -1, 0)
        elif data.ndim in (2, 3):
            data = data[None]
        else:
            raise DataError(f"{path}: expected a 2D, 3D or 4D NIfTI, got shape {data.shape}.")
        return data, Geometry(image.affine, data.shape[1:])

    def write(self, array: np.ndarray, geometry: Geometry, path: Path) -> None:
        image = nib.Nifti1Image(array, geometry.affine)
        image.set_qform(geometry.affine, code=1)
        image.set_sform(geometry.affine, code=1)
        nib.save(image, str(path))


def _itk_to_array(image: sitk.Image) -> np.ndarray:
    """SimpleITK image -> ``(C, *spatial)`` in nibabel index order."""
    data = sitk.GetArrayFromImage(image)
    ndim = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() > 1:
        data = np.moveaxis(data, -1, 0)
    else:
        data = data[None]
    return np.ascontiguousarray(np.transpose(data, (0, *range(ndim, 0, -1))))


def _array_to_itk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array)))
    origin, spacing, direction = geometry.to_itk()
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


class SimpleITKIO(ImageIO):
    """MHA/MHD, NRRD and DICOM series folders through SimpleITK."""

    suffixes = (".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")

    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        if path.is_dir():
            image = self._read_dicom_series(path)
        else:
            image = sitk.ReadImage(str(path))
        data = _itk_to_array(image)
        geometry = Geometry.from_itk(
            image.GetOrigin(), image.GetSpacing(), image.GetDirection(), data.shape[1:]
        )
        return data, geometry

    @staticmethod
    def _read_dicom_series(folder: Path) -> sitk.Image:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        if not series:
            raise DataError(f"{folder}: no DICOM series found in this folder.")
        if len(series) > 1:
            raise DataError(
                f"{folder}: holds {len(series)} DICOM series ({', '.join(series)}); "
                "put each series in its own folder."
            )
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
        left_out = sorted({p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in ("", ".dcm")} - {Path(n).name for n in names})
        if left_out:  # GDCM skips a damaged slice silently: the volume would miss it
            raise DataError(f"{folder}: {len(left_out)} file(s) are not readable slices of the series "
                            f"{series[0]}, e.g. {', '.join(left_out[:3])}; damaged, or remove them.")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(names)
        return reader.Execute()

    def write(self, array: np.ndarray, geometry: Geometry, path: Path) -> None:
        sitk.WriteImage(_array_to_itk(array, geometry), str(path), useCompression=True)


class Image2DIO(ImageIO):
    """2D images (PNG, JPEG, TIFF, BMP); colour images get one channel per component.

    An RGB image is 3 channels ``(3, x, y)``, a grey one 1 (a grey image saved as RGB is 3 equal
    channels; a label map saved so is read as one). The alpha channel of a PNG or BMP (RGBA, grey
    + alpha) is display transparency, not a measurement: it is dropped, with a warning when it is
    not fully opaque, so RGBA reads as 3 channels and grey + alpha as 1. TIFF keeps every
    component (microscopes store data channels there).
    """

    suffixes = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError:  # SimpleITK reads no grey + alpha PNG: Pillow does
            if full_suffix(path) not in (".png", ".bmp"):
                raise
            return self._read_pillow(path)
        if image.GetDimension() != 2:
            raise DataError(f"{path}: expected a 2D image, got {image.GetDimension()} dimensions.")
        data = self._drop_alpha(_itk_to_array(image), path)
        geometry = Geometry.from_itk(
            image.GetOrigin(), image.GetSpacing(), image.GetDirection(), data.shape[1:]
        )
        return data, geometry

    def _read_pillow(self, path: Path) -> tuple[np.ndarray, Geometry]:
        from PIL import Image

        with Image.open(path) as image:
            data = np.asarray(image)
        data = data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)
        data = self._drop_alpha(np.ascontiguousarray(np.swapaxes(data, 1, 2)), path)
        return data, Geometry.from_itk((0.0, 0.0), (1.0, 1.0), (1.0, 0.0, 0.0, 1.0), data.shape[1:])  # as SimpleITK

    @staticmethod
    def _drop_alpha(data: np.ndarray, path: Path) -> np.ndarray:
        if full_suffix(path) in (".png", ".bmp") and data.shape[0] in (2, 4):
            if data[-1].min() != data[-1].max():
                warnings.warn(f"{path}: transparency (alpha channel) dropped.", stacklevel=5)
            data = data[:-1]
        return data

    def write(self, array: np.ndarray, geometry: Geometry, path: Path) -> None:
        if array.max(initial=0) > 255:
            raise DataError(f"{path}: a PNG label map holds at most 255 classes.")
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(array.T.astype(np.uint8))), str(path))


class NumpyIO(ImageIO):
    """``.npy`` arrays (``(*spatial)`` or ``(C, *spatial)`` if 4D) and ``.npz`` archives.

    An ``.npz`` holds ``image`` (or its first array) and optionally ``affine`` (4x4) or
    ``spacing``; without them the grid is axis-aligned with 1 mm voxels.
    """

    suffixes = (".npy", ".npz")

    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        affine = spacing = None
        if full_suffix(path) == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = [k for k in archive.files if k not in ("affine", "spacing")]
                if not keys:
                    raise DataError(f"{path}: the archive holds no array besides affine/spacing.")
                data = archive["image"] if "image" in archive.files else archive[keys[0]]
                affine = archive["affine"] if "affine" in archive.files else None
                spacing = archive["spacing"] if "spacing" in archive.files else None
        else:
            data = np.load(path, allow_pickle=False)
        if data.ndim in (2, 3):
            data = data[None]
        elif data.ndim != 4:
            raise DataError(f"{path}: expected a 2D or 3D array (or 4D with channels first), got {data.shape}.")
        if affine is not None:
            return data, Geometry(affine, data.shape[1:])
        return data, Geometry.from_spacing(data.shape[1:], None if spacing is None else list(spacing))

    def write(self, array: np.ndarray, geometry: Geometry, path: Path) -> None:
        if full_suffix(path) == ".npz":
            with open(path, "wb") as handle:
                np.savez_compressed(handle, image=array, affine=geometry.affine)
        else:
            with open(path, "wb") as handle:
                np.save(handle, array)


READERS: tuple[ImageIO, ...] = (NiftiIO(), SimpleITKIO(), Image2DIO(), NumpyIO())


def io_for(path: str | os.PathLike) -> ImageIO:
    """The reader for ``path``: by suffix, SimpleITK for DICOM folders."""
    path = Path(path)
    if path.is_dir():
        return READERS[1]
    suffix = full_suffix(path)
    for reader in READERS:
        if suffix in reader.suffixes:
            return reader
    known = sorted(s for reader in READERS for s in reader.suffixes)
    raise DataError(f"{path}: unknown image format {suffix!r}; medseg reads {', '.join(known)} and DICOM folders.")


def output_suffix(path: str | os.PathLike) -> str:
    """The suffix a label map written for the input ``path`` gets: the input's own (nnU-Net's
    ``CASE<file_ending>``), except NIfTI for DICOM, PNG for lossy JPEG and MHA for the two-file MHD."""
    path = Path(path)
    if path.is_dir() or full_suffix(path) == ".dcm":
        return ".nii.gz"
    suffix = full_suffix(path)
    if suffix in (".jpg", ".jpeg"):
        return ".png"
    if suffix == ".mhd":
        return ".mha"
    return suffix


def read_image_file(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read any supported image, raising :class:`DataError` that names the file on failure."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found.")
    reader = io_for(path)
    try:
        return reader.read(path)
    except DataError:
        raise
    except Exception as error:  # nibabel/SimpleITK raise many types for corrupt files
        raise DataError(f"{path}: could not be read as {type(reader).__name__[:-2]} ({error}).") from error


def write_label_file(array: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> Path:
    """Write a label map atomically: a failed write leaves an earlier file in place."""
    path = Path(path)
    if array.shape != geometry.shape:
        raise ValueError(f"{path}: label shape {array.shape} differs from geometry shape {geometry.shape}.")
    dtype = np.uint8 if array.max(initial=0) < 256 else np.int16
    with atomic_path(path) as tmp:
        io_for(path).write(array.astype(dtype), geometry, tmp)
    return path
