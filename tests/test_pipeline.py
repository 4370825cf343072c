"""The Pipeline end to end: a tiny training that learns, save/load, resume, geometry of outputs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

import medseg
from medseg.architectures import UNet
from medseg.io import FolderDataset
from tests.conftest import SAMPLES, disk_images


def _write_png(array: np.ndarray, path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    root = tmp_path_factory.mktemp("disks")
    for folder in ("images", "masks", "test", "test_masks"):
        (root / folder).mkdir()
    for i, (image, label) in enumerate(disk_images(24, seed=0)):
        _write_png(image, root / "images" / f"d{i:02d}.png")
        _write_png(label, root / "masks" / f"d{i:02d}_mask.png")
    for i, (image, label) in enumerate(disk_images(4, seed=99)):
        _write_png(image, root / "test" / f"t{i}.png")
        _write_png(label, root / "test_masks" / f"t{i}_mask.png")
    return root


def _pipeline(data, **kwargs):
    training = medseg.TrainingConfig(workers=0, learning_rate=3e-3, seed=0)
    return medseg.Pipeline(data, architecture=UNet(2, 1, 2, features=(8, 16, 32)),
                           sampler=medseg.sampling.PatchSampler(patch_size=(48, 48)),
                           training=training, device="cpu", **kwargs)


def test_plan_of_the_disks_reads_classes_and_shape(disks):
    plan = medseg.plan_dataset(FolderDataset(disks))
    assert plan.spatial_dims == 2 and plan.num_classes == 2 and plan.in_channels == 1
    assert plan.median_shape == (48, 64)  # PNG arrays are (x, y): 48 columns, 64 rows
    # 3 poolings (48 / 2**3 = 6 >= 4 voxels), so the patch is the median shape, a multiple of 8
    assert plan.patch_size == (48, 64) and len(plan.features) == 4


def test_unet_by_name_is_the_planned_unet(disks):
    """Naming "unet" gives the network the plan sized, not the catalogue's default widths."""
    data = FolderDataset(disks)
    default, named = medseg.Pipeline(data, device="cpu"), medseg.Pipeline(data, architecture="unet", device="cpu")
    assert named.architecture_spec == default.architecture_spec
    assert named.architecture_spec["features"] == list(default.plan.features)
    count = lambda pipe: sum(p.numel() for p in pipe.network.parameters())  # noqa: E731
    assert count(named) == count(default)


def test_a_tiny_training_learns_and_predicts_in_the_input_geometry(disks, tmp_path):
    pipe = _pipeline(FolderDataset(disks))
    history = pipe.fit(epochs=6, iterations_per_epoch=15, output_dir=tmp_path / "run")
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert history[-1]["val_dice"] > 0.9
    written = pipe.predict(disks / "test", tmp_path / "pred")
    rows = medseg.evaluation.folders.evaluate_folders(tmp_path / "pred", disks / "test_masks")
    assert np.mean([r["dice"] for r in rows]) > 0.8
    assert sitk.ReadImage(str(written["t0"])).GetSize() == (48, 64)
    # save/load: same predictions, weights loaded with weights_only
    loaded = medseg.Pipeline.load(tmp_path / "run")
    again = loaded.predict(disks / "test")
    for case, path in written.items():
        np.testing.assert_array_equal(again[case], medseg.io.read_image_file(path)[0][0])
    config = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert config["split"]["val"] and not set(config["split"]["val"]) & set(config["split"]["train"])


def test_resume_continues_the_checkpoint(disks, tmp_path):
    run = tmp_path / "run"
    pipe = _pipeline(FolderDataset(disks))
    pipe.fit(epochs=2, iterations_per_epoch=3, output_dir=run)
    first = torch.load(run / "checkpoint.pt", weights_only=True)
    assert first["epoch"] == 2
    resumed = _pipeline(FolderDataset(disks))
    history = resumed.fit(pipe.split["train"], pipe.split["val"], epochs=3, iterations_per_epoch=3,
                          output_dir=run, resume=True)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[:2] == first["history"]


def test_prediction_keeps_an_oblique_anisotropic_nifti_geometry(tmp_path, oblique_affine):
    data = medseg.MSDDataset(SAMPLES / "hippocampus")
    pipe = medseg.Pipeline(data, architecture=UNet(3, 1, 3, features=(4, 8)), device="cpu",
                           sampler=medseg.sampling.PatchSampler(patch_size=(16, 16, 16)))
    image = np.random.default_rng(0).normal(size=(23, 19, 9)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, oblique_affine), str(tmp_path / "scan.nii.gz"))
    out = pipe.predict(tmp_path / "scan.nii.gz", tmp_path / "pred")["scan"]
    written = nib.load(str(out))
    assert written.shape == (23, 19, 9)
    np.testing.assert_allclose(written.affine, oblique_affine, atol=1e-4)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}


def test_pipeline_argument_errors(disks):
    with pytest.raises(TypeError, match="architecture must be a torch.nn.Module or a name"):
        medseg.Pipeline(FolderDataset(disks), architecture=3.5)
    with pytest.raises(medseg.DataError, match="no such file or folder|expected an MSD"):
        medseg.Pipeline(disks / "nowhere")
    with pytest.raises(ValueError, match="spatial_dims=3 does not fit 2D data"):
        medseg.Pipeline(FolderDataset(disks), spatial_dims=3)
