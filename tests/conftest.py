"""Shared fixtures: tiny in-memory volumes and the bundled data samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

# Tiny networks run several times faster on one thread than on two busy cores.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data_samples"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test session gets its own preprocessing cache."""
    monkeypatch.setenv("MEDSEG_CACHE", str(tmp_path_factory.getbasetemp() / "medseg-cache"))


@pytest.fixture
def oblique_affine() -> np.ndarray:
    """An oblique, anisotropic voxel-to-world matrix (rotation about two axes, 0.7/1.1/3.0 mm)."""
    a, b = np.deg2rad(20), np.deg2rad(-35)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.7, 1.1, 3.0])
    affine[:3, 3] = [-12.5, 40.25, 7.75]
    return affine


def disk_images(n: int, size: tuple[int, int] = (64, 48), seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Noisy 2D images with one bright disk each, and the disk as label 1."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    for _ in range(n):
        cy, cx, r = rng.uniform(16, size[0] - 16), rng.uniform(14, size[1] - 14), rng.uniform(7, 12)
        label = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2).astype(np.uint8)
        image = (60 + 120 * label + rng.normal(0, 25, size)).clip(0, 255).astype(np.uint8)
        out.append((image, label))
    return out


@pytest.fixture(params=["2d", "3d"])
def batch(request: pytest.FixtureRequest):
    """Logits and labels of the loss tests, in 2D and 3D (see loss_cases.make_batch)."""
    from loss_cases import SHAPES, make_batch

    return make_batch(SHAPES[request.param])


def write_disk_folder(root: Path, n: int, seed: int, digits: int = 1) -> Path:
    """``root/images/d<i>.png`` and ``root/masks/d<i>_mask.png``: :func:`disk_images` as a folder pair."""
    import SimpleITK as sitk

    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(disk_images(n, seed=seed)):
        sitk.WriteImage(sitk.GetImageFromArray(image), str(root / "images" / f"d{i:0{digits}d}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(label), str(root / "masks" / f"d{i:0{digits}d}_mask.png"))
    return root


def hippocampus_subset(root: Path, cases: tuple[str, ...] = ("hippocampus_001", "hippocampus_003")) -> Path:
    """An MSD folder at ``root`` with ``cases`` of the bundled hippocampus sample and their
    ``dataset.json`` entries."""
    import json
    import shutil

    source = SAMPLES / "hippocampus"
    manifest = json.loads((source / "dataset.json").read_text())
    manifest["training"] = [e for e in manifest["training"] if Path(e["image"]).name[:-7] in cases]
    manifest["numTraining"] = len(cases)
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
        for case in cases:
            shutil.copy(source / folder / f"{case}.nii.gz", root / folder)
    (root / "dataset.json").write_text(json.dumps(manifest))
    return root
