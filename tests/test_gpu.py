"""The GPU path: mixed-precision training of every architecture and loss, prediction and resume
on CUDA. Run with ``python -m pytest -m gpu tests/test_gpu.py`` on a machine with a GPU."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import medseg
from medseg.architectures import ARCHITECTURES, DETECTORS, GatedSCNN, UNet, create_architecture
from medseg.io import FolderDataset
from medseg.losses import LOSSES, create_loss, create_region_loss, loss_activation
from medseg.training import TrainingConfig, load_checkpoint, train
from tests.conftest import write_disk_folder
from tests.test_architectures import NEEDS_EINOPS, _small_kwargs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SHAPES = {2: (64, 64), 3: (32, 32, 32)}
AMP = TrainingConfig(epochs=1, iterations_per_epoch=4, amp=True, learning_rate=1e-3)


def _batches(shape, classes=3, start=0):
    """Batch i depends on i alone; labels are bright regions of the image."""
    for i in itertools.count(start):
        generator = torch.Generator().manual_seed(i)
        image = torch.randn(2, 1, *shape, generator=generator)
        yield {"image": image, "label": ((image[:, 0] > 0.5).long() + (image[:, 0] > 1.5).long()).clamp_max(classes - 1)}


def _finite(network):
    return all(torch.isfinite(p).all() for p in network.parameters())


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("name", sorted(set(ARCHITECTURES) - DETECTORS))
def test_amp_training_steps_of_every_architecture(name, d):
    if name in NEEDS_EINOPS:
        pytest.importorskip("einops")
    torch.manual_seed(0)
    kwargs = _small_kwargs(name, d)
    network = create_architecture(name, spatial_dims=d, in_channels=1, out_channels=3, **kwargs)
    shape = tuple(kwargs.get("img_size", SHAPES[d]))
    history = train(network, create_loss("dice+ce"), _batches(shape), config=AMP, device="cuda", fixed_shapes=True)
    assert np.isfinite(history[0]["loss"]) and history[0]["nonfinite_steps"] == 0
    assert next(network.parameters()).is_cuda and _finite(network)


@pytest.mark.parametrize("name", list(LOSSES))
def test_amp_training_steps_of_every_loss(name):
    torch.manual_seed(0)
    if loss_activation(LOSSES[name]) == "sigmoid":  # one output per region
        loss, channels = create_region_loss(name, [(1, 2), (2,)]), 2
    else:
        loss, channels = create_loss(name), 3
    network = UNet(2, 1, channels, features=(8, 16))
    history = train(network, loss, _batches(SHAPES[2]), config=AMP, device="cuda")
    assert np.isfinite(history[0]["loss"]) and history[0]["nonfinite_steps"] == 0
    assert _finite(network)


def test_gated_scnn_consistency_term_is_finite_under_float16_autocast():
    torch.manual_seed(0)
    network = GatedSCNN(2, 1, 3, **_small_kwargs("gatedscnn", 2)).cuda().train()
    batches = _batches((96, 96))
    for _ in range(30):
        batch = next(batches)
        image, target = batch["image"].cuda(), batch["label"].cuda()
        with torch.autocast("cuda", dtype=torch.float16):
            outputs = network(image)
            value = network.training_loss(outputs, target, create_loss("dice+ce"))
        value.backward()
        assert torch.isfinite(value)
        assert all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None)
        network.zero_grad()


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    root = tmp_path_factory.mktemp("disks")
    write_disk_folder(root, 8, seed=0)
    return root


def test_a_pipeline_on_cuda_predicts_without_fit(disks):
    pipe = medseg.Pipeline(FolderDataset(disks), architecture=UNet(2, 1, 2, features=(4, 8)), device="cuda",
                           sampler=medseg.sampling.PatchSampler(patch_size=(32, 32)))
    labels = pipe.predict(disks / "images")
    assert next(pipe.network.parameters()).is_cuda
    assert set(np.unique(labels["d0"]).tolist()) <= {0, 1}


def test_fit_on_a_cuda_device_string_pins_memory_and_tunes_cudnn(disks, tmp_path, monkeypatch):
    pins, benchmark = [], []
    make_loader = medseg.pipeline.make_loader

    def spy(stream, **kwargs):
        loader = make_loader(stream, **kwargs)
        pins.append(loader.pin_memory)
        return loader

    monkeypatch.setattr(medseg.pipeline, "make_loader", spy)
    pipe = medseg.Pipeline(FolderDataset(disks), architecture=UNet(2, 1, 2, features=(4, 8)), device="cuda:0",
                           sampler=medseg.sampling.PatchSampler(patch_size=(32, 32)),
                           training=TrainingConfig(workers=0))
    real = pipe.validation_dice
    monkeypatch.setattr(pipe, "validation_dice", lambda *a: benchmark.append(torch.backends.cudnn.benchmark) or real(*a))
    history = pipe.fit(epochs=1, iterations_per_epoch=2, output_dir=tmp_path / "run")
    assert pins == [True] and benchmark == [True]
    assert np.isfinite(history[0]["loss"]) and (tmp_path / "run" / "log.csv").is_file()


def test_a_killed_amp_run_resumes_on_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)

    def run(path, kill_at=None, resume=False):
        torch.manual_seed(0)
        np.random.seed(0)
        calls = []

        def validate():
            calls.append(1)
            if len(calls) == kill_at:
                raise KeyboardInterrupt
            return float(torch.rand((), device="cuda"))  # the CUDA generator is restored too

        network = UNet(2, 1, 3, features=(8, 16), dropout=0.2)
        config = TrainingConfig(epochs=4, iterations_per_epoch=3, amp=True, learning_rate=1e-2)
        return train(network, create_loss("dice+ce"), lambda start: _batches(SHAPES[2], start=start), config=config,
                     checkpoint=path, resume=resume, validate=validate, device="cuda")

    whole = run(tmp_path / "a" / "checkpoint.pt")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b" / "checkpoint.pt", kill_at=3)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["scaler"]["scale"] > 0
    resumed = run(tmp_path / "b" / "checkpoint.pt", resume=True)
    for key in ("loss", "val_dice", "lr"):
        np.testing.assert_allclose([h[key] for h in resumed[2:]], [h[key] for h in whole[2:]], rtol=1e-5, atol=1e-6)
    final = (load_checkpoint(tmp_path / p / "checkpoint.pt")["scaler"]["scale"] for p in "ab")
    assert next(final) == next(final)
