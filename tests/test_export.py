"""medseg export: exported logits equal PyTorch's, and an export folder predicts what its run does."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg import Pipeline
from medseg.architectures import ARCHITECTURES, DETECTORS, UNet, create_architecture
from medseg.cli import main
from medseg.errors import DataError, MedsegError
from medseg.export import ATOL, RTOL, export_network, export_pipeline
from medseg.inference.exported import OnnxNetwork, TorchScriptNetwork
from medseg.training import TrainingConfig
from tests.conftest import SAMPLES

pytest.importorskip("onnxruntime")  # in the `test` extra; skipped only where someone installed less

HELD_OUT = ["hippocampus_004", "hippocampus_008", "hippocampus_025"]
PATCH = (16, 24, 16)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny 3D U-Net trained for three steps on 8 hippocampus cases, saved as a run folder, and
    a folder holding three held-out images."""
    root = tmp_path_factory.mktemp("export")
    data = SAMPLES / "hippocampus"
    train_ids = sorted(p.name[: -len(".nii.gz")] for p in (data / "imagesTr").glob("*.nii.gz"))
    train_ids = [c for c in train_ids if c not in HELD_OUT][:8]
    pipe = Pipeline(data, architecture={"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                                        "features": [4, 8, 16]},
                    plan={"patch_size": PATCH, "batch_size": 2}, device="cpu",
                    training=TrainingConfig(workers=0, epochs=1, iterations_per_epoch=3))
    pipe.fit(train_ids, [], output_dir=root / "run")
    images = root / "held_out"
    images.mkdir()
    for case in HELD_OUT:
        shutil.copy(data / "imagesTr" / f"{case}.nii.gz", images)
    return root / "run", images


def _labels(folder):
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_folder_predicts_the_runs_labels(run, tmp_path, tmp_path_factory, fmt):
    folder, images = run
    exp = tmp_path_factory.getbasetemp() / f"{fmt}-export"  # the ONNX one is reused below
    assert main(["export", str(folder), "--format", fmt, "--out", str(exp)]) == 0
    saved = json.loads((exp / "pipeline.json").read_text())
    suffix = {"onnx": ".onnx", "torchscript": ".ts"}[fmt]
    assert saved["export"]["networks"] == [f"network{suffix}"] and saved["export"]["max_abs_error"] <= ATOL
    assert saved["plan"]["patch_size"] == list(PATCH)  # the run's settings travel with the network
    if fmt == "onnx":  # the U-Net takes any size: batch and spatial axes are dynamic
        assert saved["export"]["input"]["dynamic_axes"] == [0, 2, 3, 4]
    assert main(["predict", str(folder), str(images), "--out", str(tmp_path / "p_run")]) == 0
    assert main(["predict", str(exp), str(images), "--out", str(tmp_path / "p_exp")]) == 0
    expected, got = _labels(tmp_path / "p_run"), _labels(tmp_path / "p_exp")
    assert sorted(got) == [f"{c}.nii.gz" for c in HELD_OUT]
    for name in expected:  # identical label maps on the input's grid
        np.testing.assert_array_equal(got[name], expected[name])
    network = Pipeline.load(exp).network
    assert isinstance(network, OnnxNetwork if fmt == "onnx" else TorchScriptNetwork)
    assert not (exp / "model.pt").exists()  # no PyTorch weights needed
    with pytest.raises(MedsegError, match="can only predict"):
        network.train()


def test_onnx_logits_equal_pytorch_on_a_real_case_and_another_size(run, tmp_path_factory):
    folder, _ = run
    exp = tmp_path_factory.getbasetemp() / "onnx-export"  # written by the test above
    if not (exp / "network.onnx").is_file():
        export_pipeline(Pipeline.load(folder, device="cpu"), exp, format="onnx")
    onnx_net, network = OnnxNetwork(exp / "network.onnx"), Pipeline.load(folder, device="cpu").network.eval()
    image = np.asarray(nib.load(SAMPLES / "hippocampus" / "imagesTr" / f"{HELD_OUT[0]}.nii.gz").dataobj, np.float32)
    image = (image - image.mean()) / image.std()
    for window in (image[:16, :24, :16], image[:32, :40, :32]):  # the patch, and a larger (dynamic) size
        x = torch.from_numpy(np.ascontiguousarray(window))[None, None]
        with torch.inference_mode():
            expected = network(x)
        np.testing.assert_allclose(onnx_net(x).numpy(), expected.numpy(), atol=ATOL, rtol=RTOL)


def test_the_parity_check_catches_a_different_network():
    from medseg.export import check_parity

    torch.manual_seed(0)
    net, other = UNet(2, 1, 3, features=(4, 8)).eval(), UNet(2, 1, 3, features=(4, 8)).eval()
    assert check_parity(net, net, torch.randn(1, 1, 32, 24), "same") == 0.0
    with pytest.raises(MedsegError, match="other: the exported logits differ"):
        check_parity(net, other, torch.randn(1, 1, 32, 24), "other")


def test_onnx_export_2d_matches(tmp_path):
    torch.manual_seed(0)
    net = UNet(2, 2, 3, features=(4, 8)).eval()
    x = torch.randn(1, 2, 32, 24)
    info = export_network(net, x, tmp_path / "n.onnx", format="onnx")
    assert info["dynamic_axes"] == [0, 2, 3]
    y = torch.randn(3, 2, 32, 24)
    with torch.inference_mode():
        np.testing.assert_allclose(OnnxNetwork(tmp_path / "n.onnx")(y).numpy(), net(y).numpy(), atol=ATOL, rtol=RTOL)


def test_an_export_that_disagrees_fails_and_writes_nothing(tmp_path, monkeypatch):
    import medseg.export as export

    class Off(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) + 1e-2

    real = export.load_network_file
    monkeypatch.setattr(export, "load_network_file", lambda path, device: Off(real(path, device=device)))
    with pytest.raises(MedsegError, match=r"differ from PyTorch's by up to 0\.01"):
        export_network(UNet(3, 1, 2, features=(4, 8)), torch.randn(1, 1, 8, 8, 8), tmp_path / "n.ts",
                       format="torchscript")
    assert list(tmp_path.iterdir()) == []


def test_bad_export_folders_give_clear_errors(run, tmp_path, capsys):
    folder, images = run
    exp = tmp_path / "exp"
    export_pipeline(Pipeline.load(folder, device="cpu"), exp, format="torchscript")
    (exp / "network.ts").unlink()
    with pytest.raises(DataError, match=r"network\.ts: the exported network file is missing"):
        Pipeline.load(exp)
    (exp / "network.ts").write_bytes(b"not a model")
    assert main(["predict", str(exp), str(images), "--out", str(tmp_path / "p")]) == 2
    assert "network.ts: torch.jit.load cannot read this TorchScript file" in capsys.readouterr().err
    config = json.loads((exp / "pipeline.json").read_text())
    config["export"]["networks"] = ["../elsewhere.ts"]
    (exp / "pipeline.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="must be a plain file name"):
        Pipeline.load(exp)
    assert main(["export", str(folder), "--out", str(folder)]) == 2
    assert "holds a training run" in capsys.readouterr().err


def test_a_cross_validation_exports_every_fold_and_predicts_their_ensemble(run, tmp_path):
    folder, images = run
    cv = tmp_path / "cv"
    for k in range(2):  # two folds: the run, and the run with other weights
        pipe = Pipeline.load(folder, device="cpu")
        if k:
            torch.manual_seed(k)
            for p in pipe.network.parameters():
                p.data.add_(0.05 * torch.randn_like(p))
        pipe.save(cv / f"fold_{k}")
        (cv / f"fold_{k}" / "metrics.json").write_text("{}")
    (cv / "cv.json").write_text(json.dumps({"folds": 2}))
    assert main(["export", str(cv), "--format", "torchscript", "--out", str(tmp_path / "exp")]) == 0
    assert json.loads((tmp_path / "exp" / "pipeline.json").read_text())["export"]["networks"] == ["fold_0.ts", "fold_1.ts"]
    exported, ensemble = Pipeline.load(tmp_path / "exp"), Pipeline.load(cv)
    assert len(exported.ensemble) == 1
    for case, labels in ensemble.predict(images).items():
        np.testing.assert_array_equal(exported.predict(images)[case], labels)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(ARCHITECTURES) - DETECTORS))
def test_every_architecture_exports_as_torchscript_in_2d_and_3d(name, tmp_path):
    from tests.test_architectures import NEEDS_EINOPS, _small_kwargs

    if name in NEEDS_EINOPS:
        pytest.importorskip("einops")
    for d, patch in ((2, (48, 32)), (3, (16, 24, 16))):
        kwargs = _small_kwargs(name, d)
        patch = tuple(kwargs["img_size"]) if name == "unetr" else patch
        torch.manual_seed(0)
        net = create_architecture(name, spatial_dims=d, in_channels=1, out_channels=3, **kwargs)
        info = export_network(net, torch.randn(1, 1, *patch), tmp_path / f"{d}.ts", format="torchscript")
        assert info["max_abs_error"] <= ATOL
