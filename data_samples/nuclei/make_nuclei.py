"""Rebuild this folder from the stardist 0.9.2 wheel (``pip download stardist==0.9.2 --no-deps``, unzip).

    python data_samples/nuclei/make_nuclei.py /path/to/unzipped/wheel

Reads ``stardist/data/images/{img,mask}{2d,3d}.tif`` with Pillow (no stardist import) and writes
``2d/{images,labels}/dsb2018.png`` and ``3d/{images,labels}/synthetic.nii.gz`` beside this script.
Every voxel value is kept: the 2D image (0-235) fits 8 bits, the instance ids (at most 183) too.
"""

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image


def read_tiff(path: Path) -> np.ndarray:
    """All frames of a (multi-frame) TIFF as one array, frames first."""
    with Image.open(path) as image:
        frames = []
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            frames.append(np.array(image))
    return np.stack(frames) if len(frames) > 1 else frames[0]


def lossless(array: np.ndarray, dtype: type) -> np.ndarray:
    converted = array.astype(dtype)
    if not np.array_equal(converted, array):
        raise ValueError(f"values {array.min()}..{array.max()} do not fit {np.dtype(dtype).name}")
    return converted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("wheel", type=Path, help="the unzipped stardist wheel")
    source = parser.parse_args().wheel / "stardist" / "data" / "images"
    here = Path(__file__).resolve().parent
    for kind in ("images", "labels"):
        for dims in ("2d", "3d"):
            (here / dims / kind).mkdir(parents=True, exist_ok=True)
    Image.fromarray(lossless(read_tiff(source / "img2d.tif"), np.uint8)).save(here / "2d/images/dsb2018.png", optimize=True)
    Image.fromarray(lossless(read_tiff(source / "mask2d.tif"), np.uint8)).save(here / "2d/labels/dsb2018.png", optimize=True)
    for name, dtype, folder in (("img3d.tif", np.uint16, "images"), ("mask3d.tif", np.uint8, "labels")):
        volume = lossless(read_tiff(source / name), dtype).transpose(2, 1, 0)  # TIFF (z, y, x) -> NIfTI (x, y, z)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), here / "3d" / folder / "synthetic.nii.gz")


if __name__ == "__main__":
    main()
