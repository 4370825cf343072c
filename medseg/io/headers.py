"""Shape, spacing and channel count of an image file from its header alone where the format
allows (NIfTI, NRRD, MHA...), so planning does not read every voxel of a large dataset."""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..errors import DataError
from .files import full_suffix
from .readers import NiftiIO, read_image_file

__all__ = ["Header", "read_header"]

Header = tuple[tuple[int, ...], tuple[float, ...], int]


def _nifti_header(path: Path) -> Header:
    """Shape, spacing and channels (a 4D file's last axis) of a NIfTI file, checked complete."""
    image = nib.load(str(path))
    header, proxy = image.header, image.dataobj  # the proxy knows where the voxels start
    shape = tuple(int(n) for n in header.get_data_shape())
    if not 2 <= len(shape) <= 4:
        raise DataError(f"{path}: expected a 2D, 3D or 4D NIfTI, got shape {shape}.")
    spatial = shape[:3]
    expected = int(proxy.offset) + math.prod(shape) * header.get_data_dtype().itemsize
    if full_suffix(path) == ".nii":
        found = path.stat().st_size
    else:  # gzip keeps the data size (mod 2**32) in its last 4 bytes; count only if they disagree
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            found = int.from_bytes(handle.read(4), "little")
        if found != expected % 2**32:
            found = 0
            with gzip.open(path) as stream:
                while chunk := stream.read(1 << 22):
                    found += len(chunk)
    if found < expected:
        raise DataError(f"{path}: truncated NIfTI ({found} of {expected} bytes); copy or export it again.")
    zooms = tuple(float(z) for z in header.get_zooms()[: len(spatial)])
    return spatial, zooms, shape[3] if len(shape) == 4 else 1


def read_header(path: Path) -> Header:
    """Shape, spacing and channel count from the header alone where the format allows.

    Raises:
        DataError: naming the file, when it is missing, truncated or not an image of its kind.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found.")
    suffix = full_suffix(path)
    try:
        if suffix in NiftiIO.suffixes:
            return _nifti_header(path)
        if suffix == ".npy":  # (*spatial) or (C, *spatial), 1 mm voxels, as NumpyIO reads it
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            spatial, channels = (shape[1:], shape[0]) if len(shape) == 4 else (shape, 1)
            return tuple(int(n) for n in spatial), (1.0,) * len(spatial), int(channels)
        if path.is_file() and suffix != ".npz":
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            return tuple(reader.GetSize()), tuple(reader.GetSpacing()), int(reader.GetNumberOfComponents())
    except DataError:
        raise
    except Exception as error:  # nibabel, NumPy and SimpleITK raise many types for corrupt files
        raise DataError(f"{path}: could not be read as a {suffix or 'DICOM'} image ({error}).") from error
    image, geometry = read_image_file(path)  # .npz archives and DICOM folders: read it all
    return geometry.shape, geometry.spacing, int(image.shape[0])
