"""Tests of planning: per-axis topology on anisotropic data, headers, channels, the CLI's plan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

import medseg
from medseg.cli import main
from medseg.errors import DataError
from medseg.io import FolderDataset, MSDDataset, Sample, open_dataset
from medseg.planning import Plan, fingerprint_dataset, plan_dataset, plan_topology
from medseg.preprocessing import Resample, preprocess

SAMPLES = Path(__file__).resolve().parent.parent / "data_samples"
HIPPOCAMPUS = SAMPLES / "hippocampus"


def _copy_cases(dst: Path, n: int, transform=None, in_plane: float = 1.0, thick: float = 1.0) -> Path:
    """The first ``n`` hippocampus cases (CC-BY-SA 4.0: the attribution README goes along), each
    image and label passed through ``transform(array, order)`` and given the spacing
    ``(in_plane, in_plane, thick)``."""
    meta = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    meta["training"] = meta["training"][:n]
    meta["numTraining"] = n
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for case in meta["training"]:
        for key, order in (("image", 1), ("label", 0)):
            image = nib.load(str(HIPPOCAMPUS / case[key]))
            data = np.asanyarray(image.dataobj)
            data = data if transform is None else transform(data, order)
            affine = image.affine @ np.diag([in_plane, in_plane, thick, 1.0])
            nib.save(nib.Nifti1Image(data.astype(image.get_data_dtype()), affine), str(dst / case[key]))
    (dst / "dataset.json").write_text(json.dumps(meta, indent=1))
    shutil.copy(SAMPLES / "README.md", dst / "README.md")
    return dst


def _thick(data: np.ndarray, order: int) -> np.ndarray:
    """3.6 mm slices out of the 1 mm hippocampus volumes (36 slices -> 10)."""
    return ndimage.zoom(data, (1, 1, 1 / 3.6), order=order, grid_mode=True, mode="nearest")


@pytest.fixture(scope="module")
def thick_slices(tmp_path_factory) -> Path:
    """Six hippocampus cases resampled to 0.6 x 0.6 x 3.6 mm (spacing ratio 6, like prostate MRI)."""
    return _copy_cases(tmp_path_factory.mktemp("thick"), 6, _thick, in_plane=0.6, thick=3.6)


def test_topology_of_prostate_mri_is_nnunets() -> None:
    # nnU-Net v2's plan for MSD Task05 prostate (patch 20 x 320 x 256 at 3.6 x 0.625 x 0.625 mm)
    pools, convs = plan_topology((20, 320, 256), (3.6, 0.625, 0.625), 99)
    assert pools == ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2))
    assert convs == ((1, 3, 3), (1, 3, 3)) + ((3, 3, 3),) * 5
    # at most four halvings per axis (medseg's 3D cap): the same first four stages
    pools, convs = plan_topology((20, 320, 256), (3.6, 0.625, 0.625), 4)
    assert pools == ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)) and len(convs) == 5


def test_topology_joins_an_axis_within_twice_the_finest_spacing() -> None:
    # 1 x 1 x 1.8: the third axis is within a factor 2 from the start
    assert plan_topology((64, 64, 32), (1.0, 1.0, 1.8), 4)[0][0] == (2, 2, 2)
    # 1 x 1 x 3.6: it joins once the others reach 2 mm (3.6 / 2 < 2)
    pools, convs = plan_topology((64, 64, 32), (1.0, 1.0, 3.6), 4)
    assert pools[:2] == ((2, 2, 1), (2, 2, 2)) and convs[:2] == ((3, 3, 1), (3, 3, 3))
    # isotropic: every axis halved while it keeps at least 4 voxels (35 -> 17.5 -> 8.75 -> 4.4)
    assert plan_topology((35, 50, 36), (1.0, 1.0, 1.0), 4)[0] == ((2, 2, 2),) * 3


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_isotropic_sample_plans_are_unchanged(device: str) -> None:
    """The plans medseg made before per-axis planning (patch, depth, widths)."""
    hippocampus = plan_dataset(MSDDataset(HIPPOCAMPUS), device=device)
    assert hippocampus.patch_size == (40, 56, 40)
    assert hippocampus.features == ((16, 32, 64, 128) if device == "cpu" else (32, 64, 128, 256))
    assert hippocampus.pool_kernels == ((2, 2, 2),) * 3 and hippocampus.conv_kernels == ((3, 3, 3),) * 4
    hc18 = plan_dataset(open_dataset(SAMPLES / "hc18"), device=device)
    assert hc18.patch_size == ((256, 160) if device == "cpu" else (800, 544))
    assert len(hc18.features) == 6 and hc18.pool_kernels == ((2, 2),) * 5


def test_thick_slice_plan_pools_in_plane_first(thick_slices: Path) -> None:
    plan = plan_dataset(MSDDataset(thick_slices))
    assert plan.target_spacing == (0.6, 0.6, 3.6)
    # before: min(axis) = 10 slices allowed one isotropic halving, two stages
    assert plan.pool_kernels == ((2, 2, 1), (2, 2, 1), (2, 2, 2))
    assert plan.conv_kernels == ((3, 3, 1), (3, 3, 1), (3, 3, 3), (3, 3, 3))
    assert plan.features == (16, 32, 64, 128)
    strides = [np.prod([k[a] for k in plan.pool_kernels]) for a in range(3)]
    assert strides == [8, 8, 2] and all(p % s == 0 for p, s in zip(plan.patch_size, strides, strict=True))


def test_pipeline_builds_the_planned_kernels(thick_slices: Path) -> None:
    pipe = medseg.Pipeline(thick_slices, device="cpu")
    assert pipe.architecture_spec["strides"] == [[2, 2, 1], [2, 2, 1], [2, 2, 2]]
    assert pipe.network.encoder[0][0][0].kernel_size == (3, 3, 1)
    assert pipe.network(torch.zeros(1, 1, *pipe.plan.patch_size)).shape == (1, 3, *pipe.plan.patch_size)
    dyn = medseg.Pipeline(thick_slices, architecture="dynunet", device="cpu", plan=pipe.plan)
    assert dyn.network.net.strides == [[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 2]]
    assert dyn.network.net.kernel_size[0] == [3, 3, 1]


def test_plans_saved_without_kernels_load_isotropic() -> None:
    plan = plan_dataset(MSDDataset(HIPPOCAMPUS))
    saved = plan.to_dict()
    del saved["pool_kernels"], saved["conv_kernels"]
    assert Plan.from_dict(saved) == plan
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    with pytest.raises(ValueError, match=r"pool_kernels needs 1 and conv_kernels 2"):
        plan.replace(features=(8, 16))
    assert plan.replace(features=(8, 16), pool_kernels=(), conv_kernels=()).pool_kernels == ((2, 2, 2),)


def test_cli_plan_json(thick_slices: Path, capsys, monkeypatch) -> None:
    assert main(["plan", str(thick_slices), "--json", "--device", "cpu"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["spatial_dims"] == 3 and plan["num_classes"] == 3 and plan["in_channels"] == 1
    assert plan["target_spacing"] == [0.6, 0.6, 3.6]
    assert plan["pool_kernels"] == [[2, 2, 1], [2, 2, 1], [2, 2, 2]]
    assert plan["conv_kernels"] == [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]]
    assert plan["features"][0] == 16
    # without --device: the plan `medseg train` would use, on a GPU machine the GPU's
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert main(["plan", str(thick_slices), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["features"][0] == 32


@pytest.mark.parametrize("damage", ["truncated", "cut_header", "text"])
def test_unreadable_headers_name_the_file(tmp_path: Path, damage: str) -> None:
    folder = _copy_cases(tmp_path / "data", 3)
    bad = folder / "imagesTr" / "hippocampus_003.nii.gz"
    content = bad.read_bytes()
    if damage == "truncated":
        bad.write_bytes(content[: len(content) // 2])
    elif damage == "cut_header":
        bad.write_bytes(content[:100])
    else:
        bad.write_text("not an image\n")
    with pytest.raises(DataError, match=r"hippocampus_003\.nii\.gz"):
        fingerprint_dataset(MSDDataset(folder))


def test_truncated_uncompressed_nifti(tmp_path: Path) -> None:
    path = tmp_path / "a.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(path))
    path.write_bytes(path.read_bytes()[:-10])
    from medseg.io.headers import read_header as _header

    with pytest.raises(DataError, match=r"a\.nii: truncated NIfTI \(2390 of 2400 bytes\)"):
        _header(path)


def _numpy_folder(root: Path, arrays: dict[str, np.ndarray], suffix: str) -> Path:
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for case, image in arrays.items():
        label = (image[-3:] > 0.5).astype(np.uint8) if image.ndim == 4 else (image > 0.5).astype(np.uint8)
        for sub, array in (("images", image), ("labels", label)):
            path = root / sub / f"{case}{suffix}"
            np.save(path, array) if suffix == ".npy" else np.savez(path, image=array)
    return root


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_numpy_folders_plan_with_channels_from_the_data(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    arrays = {f"case{i}": rng.random((2, 24, 20, 16)).astype(np.float32) for i in range(3)}
    data = FolderDataset(_numpy_folder(tmp_path, arrays, suffix), classes={0: "background", 1: "thing"})
    fingerprint, _ = fingerprint_dataset(data)
    assert fingerprint.shapes == ((24, 20, 16),) * 3 and fingerprint.spacings == ((1.0, 1.0, 1.0),) * 3
    plan = plan_dataset(data, fingerprint=fingerprint)
    assert plan.in_channels == 2 and plan.num_classes == 2  # one modality named, two channels found


def test_channels_come_from_the_nifti_and_must_agree(tmp_path: Path) -> None:
    two = _copy_cases(tmp_path / "two", 3, lambda a, order: a if order == 0 else np.stack([a, a], axis=-1))
    assert plan_dataset(MSDDataset(two)).in_channels == 2
    odd = two / "imagesTr" / "hippocampus_004.nii.gz"
    image = nib.load(str(odd))
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[..., 0], image.affine), str(odd))
    with pytest.raises(DataError, match=r"case 'hippocampus_004' .* has 1 image channel\(s\), the other cases 2"):
        fingerprint_dataset(MSDDataset(two))


class _Threshold(nn.Module):
    """Logits ``(-x, x)``: class 1 wherever the (z-scored) slice is above its case's mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x, x], dim=1)


def test_2d_network_keeps_each_cases_own_slices(tmp_path: Path) -> None:
    """Slices alternate 1 and 2 (1.5 mm apart in one case, 3 mm in the others): each keeps its
    slices through preprocessing, and each original slice is predicted from itself."""
    root = tmp_path / "mixed"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    training = []
    for name, thickness, slices in (("fine", 1.5, 12), ("coarse_a", 3.0, 6), ("coarse_b", 3.0, 7)):
        image = np.broadcast_to(1.0 + (np.arange(slices) % 2), (16, 16, slices)).astype(np.float32)
        label = (image > 1.5).astype(np.uint8)
        affine = np.diag([1.0, 1.0, thickness, 1.0])
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"{name}.nii.gz"))
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "bright"},
                                                   "modality": {"0": "MRI"}, "training": training}))
    data = MSDDataset(root)
    pipe = medseg.Pipeline(data, spatial_dims=2, architecture=_Threshold(), device="cpu")
    assert pipe.plan.slice_axis == 2 and pipe.plan.target_spacing[2] == 3.0
    resample = next(step for step in pipe.preprocessing if isinstance(step, Resample))
    assert resample.keep_axis == 2 and resample.config()["keep_axis"] == 2
    fine = data.load("fine")
    prepared = preprocess(fine.replace(label=None), pipe.preprocessing)
    assert prepared.spatial_shape[2] == 12  # before: resampled to 3 mm, 6 slices
    prediction = pipe.predict_sample(Sample("fine", fine.image, fine.geometry))
    assert prediction.shape == (16, 16, 12)
    np.testing.assert_array_equal(prediction, fine.label)


def test_auto_augmentation_is_left_out_of_the_saved_plan() -> None:
    """A plan saved before ``augmentation`` existed has the same dict (and settings digest) today."""
    plan = plan_dataset(MSDDataset(HIPPOCAMPUS))
    assert plan.augmentation == "auto" and "augmentation" not in plan.to_dict()
    old = plan.to_dict()
    assert Plan.from_dict(old) == plan and Plan.from_dict(old).to_dict() == old
    natural = plan.replace(augmentation="natural")
    assert natural.to_dict()["augmentation"] == "natural"
    assert Plan.from_dict(json.loads(json.dumps(natural.to_dict()))) == natural


def test_an_instance_plan_never_coarsens_small_objects_away(tmp_path):
    """Large images of small objects: a semantic CPU plan coarsens the grid to fit its budget; the
    instance plan stops where the 10th-percentile object keeps 8 pixels across."""
    from PIL import Image

    from medseg.io import as_instances, open_dataset

    yy, xx = np.mgrid[:480, :480]
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    rng = np.random.default_rng(0)
    for case in range(3):
        label = np.zeros((480, 480), np.uint8)
        for n, (cy, cx) in enumerate(rng.uniform(20, 460, (12, 2)), 1):
            label[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = n  # discs of radius 6: 13 pixels across
        Image.fromarray(label).save(tmp_path / "labels" / f"c{case}.png")
        Image.fromarray((40 + 150 * (label > 0)).astype(np.uint8)).save(tmp_path / "images" / f"c{case}.png")
    instances = as_instances(open_dataset(tmp_path))
    extents = instances.object_extents()
    smallest = float(np.percentile(extents.min(axis=1), 10))
    assert 11 <= smallest <= 13  # a disc of radius 6 spans 11 to 13 pixels on an axis
    semantic = plan_dataset(open_dataset(tmp_path))
    assert semantic.target_spacing[0] == pytest.approx(480 / 192, rel=1e-3)  # the 192^2 budget
    planned = plan_dataset(instances)
    assert planned.target_spacing[0] == pytest.approx(smallest / 8, rel=1e-3)  # objects keep 8 pixels
