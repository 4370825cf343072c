"""Damaged files: random bytes, truncations and flipped header bytes, in every format medseg reads.

Whatever the damage, only :class:`medseg.DataError` may come out of the readers, the datasets,
planning and the CLI, and its message names the file. Some damage still reads (a flipped byte
inside the pixel data): that is fine; the outcomes are counted and "other" must stay 0.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import DataError
from medseg.io import open_dataset, read_image_file

FORMATS = (".nii", ".nii.gz", ".mha", ".nrrd", ".png", ".npy", ".npz", "dicom")
HEADER = {".nii": 348, ".nii.gz": 348, ".mha": 300, ".nrrd": 200, ".png": 64, ".npy": 128, ".npz": 160}


def _volume(rng: np.random.Generator, suffix: str) -> np.ndarray:
    shape = (24, 20) if suffix == ".png" else (10, 12, 8)
    return rng.integers(0, 200, shape).astype(np.uint8 if suffix == ".png" else np.int16)


def write_valid(path: Path, rng: np.random.Generator) -> np.ndarray:
    """A small valid image at ``path`` (a folder of slices for ``dicom``); returns its array."""
    suffix = "dicom" if path.suffix == "" else (".nii.gz" if path.name.endswith(".nii.gz") else path.suffix)
    array = _volume(rng, suffix)
    if suffix in (".nii", ".nii.gz"):
        nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.9, 2.0, 1.0])), str(path))
    elif suffix in (".mha", ".nrrd", ".png"):
        sitk.WriteImage(sitk.GetImageFromArray(array.T), str(path), useCompression=suffix == ".mha")
    elif suffix == ".npy":
        np.save(path, array)
    elif suffix == ".npz":
        np.savez_compressed(path, image=array, spacing=np.ones(3))
    else:
        _write_dicom(path, array)
    return array


def _write_dicom(folder: Path, array: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.T))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(array.shape[2]):
        plane = image[:, :, z]
        for tag, value in (("0020|000e", "1.2.826.0.1.3680043.2.1125.7"), ("0020|0032", f"0\\0\\{2.0 * z}"),
                           ("0020|0013", str(z)), ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0028|0030", "0.8\\0.8")):
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{z:03d}.dcm"))
        writer.Execute(plane)


def corrupt(path: Path, kind: str, rng: np.random.Generator) -> Path:
    """Damage ``path`` in place: ``random`` bytes, ``truncate`` at a random offset, or ``flip``
    1-3 header bytes (inside the gzip stream for ``.nii.gz``; one slice of a DICOM folder)."""
    if path.is_dir():
        path = sorted(path.iterdir())[int(rng.integers(0, len(list(path.iterdir()))))]
        limit = 1200
    else:
        limit = HEADER[".nii.gz" if path.name.endswith(".nii.gz") else path.suffix]
    gz = path.name.endswith(".nii.gz") and kind == "flip"
    data = bytearray(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    if kind == "random":
        data = bytearray(rng.bytes(int(rng.integers(0, 2000))))
    elif kind == "truncate":
        data = data[: int(rng.integers(0, len(data)))]
    else:
        for offset in rng.integers(0, min(limit, len(data)), int(rng.integers(1, 4))):
            data[offset] ^= int(rng.integers(1, 256))
    path.write_bytes(gzip.compress(bytes(data)) if gz else bytes(data))
    return path


def _outcome(call, argument, name: str, counts: Counter, failures: list) -> None:
    try:
        call(argument)
        counts["ok"] += 1
    except DataError as error:
        counts["DataError"] += 1
        if name not in str(error):
            failures.append(f"message does not name {name}: {error}")
    except Exception as error:  # noqa: BLE001  what the test is about
        counts["other"] += 1
        failures.append(f"{name}: {type(error).__name__}: {error}")


def _file(root: Path, suffix: str, stem: str = "case") -> Path:
    return root / (stem if suffix == "dicom" else f"{stem}{suffix}")


@pytest.mark.parametrize("suffix", FORMATS)
def test_read_image_file_raises_only_data_error(tmp_path, suffix):
    rng = np.random.default_rng(sum(map(ord, suffix)))
    counts: Counter = Counter()
    failures: list[str] = []
    for i in range(30):
        path = _file(tmp_path / str(i), suffix)
        path.parent.mkdir(parents=True)
        write_valid(path, rng)
        damaged = corrupt(path, ("random", "truncate", "flip")[i % 3], rng)
        _outcome(read_image_file, path, damaged.name if suffix != "dicom" else path.name, counts, failures)
    print(f"read_image_file {suffix}: {dict(counts)}")
    assert counts["other"] == 0, failures[:5]
    assert not failures, failures[:5]
    assert counts["DataError"] >= 10  # the damage is real


def _folder_dataset(root: Path, suffix: str, rng: np.random.Generator, target: str) -> Path:
    """images/ + labels/ with one case; the image or the label gets damaged."""
    image = _file(root / "images", suffix)
    label = _file(root / "labels", ".nii.gz" if suffix == "dicom" else suffix)
    image.parent.mkdir(parents=True)
    label.parent.mkdir(parents=True)
    array = write_valid(image, rng)
    labels = (array > 100).astype(np.uint8)
    if label.name.endswith((".nii", ".nii.gz")):
        geometry = read_image_file(image)[1]
        nib.save(nib.Nifti1Image(labels, geometry.affine), str(label))
    elif suffix in (".mha", ".nrrd", ".png"):
        sitk.WriteImage(sitk.GetImageFromArray(labels.T), str(label))
    else:
        np.save(label, labels) if suffix == ".npy" else np.savez(label, image=labels, spacing=np.ones(3))
    return corrupt(image if target == "image" else label, ("random", "truncate", "flip")[int(rng.integers(3))], rng)


@pytest.mark.parametrize("suffix", FORMATS)
def test_dataset_load_raises_only_data_error(tmp_path, suffix):
    rng = np.random.default_rng(7 + sum(map(ord, suffix)))
    counts: Counter = Counter()
    failures: list[str] = []
    for i in range(16):
        root = tmp_path / str(i)
        damaged = _folder_dataset(root, suffix, rng, "image" if i % 2 else "label")
        name = damaged.parent.name if suffix == "dicom" and i % 2 else damaged.name
        _outcome(lambda r: open_dataset(r, classes={0: "bg", 1: "fg"}).load("case"), root, name, counts, failures)
    print(f"dataset.load {suffix}: {dict(counts)}")
    assert counts["other"] == 0 and not failures, failures[:5]


def _msd(root: Path, suffix: str, rng: np.random.Generator) -> Path:
    """An nnU-Net v2 folder (classes declared, so planning reads headers) with a damaged image."""
    for case in ("a", "b"):
        _folder_dataset(root / case, suffix, rng, "image")
        (root / "imagesTr").mkdir(exist_ok=True)
        (root / "labelsTr").mkdir(exist_ok=True)
        image = next((root / case / "images").iterdir())
        label = next((root / case / "labels").iterdir())
        shutil.move(image, root / "imagesTr" / image.name.replace("case", f"{case}_0000"))
        shutil.move(label, root / "labelsTr" / label.name.replace("case", case))
        shutil.rmtree(root / case)
    ending = ".nii.gz" if suffix == "dicom" else suffix
    meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "fg": 1}, "numTraining": 2}
    (root / "dataset.json").write_text(json.dumps({**meta, **({} if suffix == "dicom" else {"file_ending": ending})}))
    return root


@pytest.mark.parametrize("suffix", FORMATS)
def test_planning_and_cli_raise_only_data_error(tmp_path, suffix, capsys):
    from medseg import Pipeline
    from medseg.cli import main

    rng = np.random.default_rng(11 + sum(map(ord, suffix)))
    counts: Counter = Counter()
    failures: list[str] = []
    for i in range(6):
        root = _msd(tmp_path / str(i), suffix, rng)
        _outcome(lambda r: Pipeline(r, device="cpu"), root, "_0000", counts, failures)
        capsys.readouterr()
        code = main(["plan", str(root)])
        err = capsys.readouterr().err.strip()
        if code == 2:
            counts["cli 2"] += 1
            if len(err.splitlines()) != 1 or "_0000" not in err:
                failures.append(f"cli stderr: {err!r}")
        elif code != 0:
            failures.append(f"cli returned {code}: {err!r}")
    print(f"planning {suffix}: {dict(counts)}")
    assert counts["other"] == 0 and not failures, failures[:5]
