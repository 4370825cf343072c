"""Mixed precision in training: float16 on a GPU, bfloat16 autocast on a CPU that runs it natively
(float32 on other CPUs), and a resumed run keeps the precision it began with."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch

from medseg.training import TrainingConfig, load_checkpoint, precision, save_checkpoint, train
from medseg.training.kernels import fast_weight_gradients


def _batches(start: int = 0):
    for i in itertools.count(start):
        image = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(i))
        yield {"image": image, "label": (image[:, 0] > 0.3).long()}


class _Watched(torch.nn.Module):
    """Two convolutions; records the dtype the first one computes in."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first, self.last = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 2, 1)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.first(x)
        self.dtypes.append(y.dtype)
        return self.last(torch.relu(y)).float()


def _native(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(precision, "cpu_bfloat16", lambda: native)


def test_training_precision_by_device_and_cpu(monkeypatch):
    _native(monkeypatch, True)
    assert [precision.training_precision(d) for d in ("cpu", "cuda", "cuda:1")] == ["bfloat16", "float16", "float16"]
    assert precision.training_precision("cpu", amp=False) == precision.training_precision("cuda", amp=False) == "float32"
    _native(monkeypatch, False)
    assert precision.training_precision("cpu") == "float32"


@pytest.mark.parametrize(("native", "amp", "expected"), [(True, True, torch.bfloat16), (False, True, torch.float32),
                                                         (True, False, torch.float32)])
def test_cpu_steps_autocast_to_bfloat16_only_where_the_cpu_runs_it(monkeypatch, native, amp, expected):
    _native(monkeypatch, native)
    network = _Watched()
    train(network, torch.nn.CrossEntropyLoss(), _batches(), config=TrainingConfig(epochs=1, iterations_per_epoch=3, amp=amp))
    assert network.dtypes == [expected] * 3
    assert all(p.dtype == torch.float32 for p in network.parameters())  # the weights stay float32


def test_bfloat16_steps_follow_the_float32_steps_to_bfloat16_rounding(monkeypatch):
    weights = {}  # SGD: a step is proportional to the gradient (Adam's sign of a tiny gradient could flip)
    for native in (False, True):
        _native(monkeypatch, native)
        network = _Watched()
        history = train(network, torch.nn.CrossEntropyLoss(), _batches(),
                        config=TrainingConfig(epochs=1, iterations_per_epoch=5, optimizer="sgd", learning_rate=1e-2))
        weights[native] = (torch.cat([p.detach().flatten() for p in network.parameters()]), history[0]["loss"])
    (w32, loss32), (w16, loss16) = weights[False], weights[True]
    assert not torch.equal(w32, w16)  # the steps did run in bfloat16 (8 bits of mantissa)...
    torch.testing.assert_close(w16, w32, rtol=0, atol=2e-4)  # ...and ended where float32 did, to its rounding
    assert abs(loss16 - loss32) < 1e-3 * loss32  # measured: 2e-5 and 1.4e-4


class _Killed(Exception):
    pass


def _run(path, *, kill_at: int | None = None, resume: bool = False) -> tuple[list[dict], list[torch.dtype]]:
    network, calls = _Watched(), []

    def validate() -> float:
        calls.append(1)
        if len(calls) == kill_at:
            raise _Killed
        return 0.5

    config = TrainingConfig(epochs=3, iterations_per_epoch=2, learning_rate=1e-2)
    history = train(network, torch.nn.CrossEntropyLoss(), _batches, config=config, checkpoint=path,
                    resume=resume, validate=validate)
    return history, network.dtypes


@pytest.mark.parametrize("saved", [True, False], ids=["precision saved", "checkpoint from before"])
def test_a_run_begun_in_float32_resumes_in_float32_on_a_bfloat16_cpu(tmp_path, monkeypatch, caplog, saved):
    _native(monkeypatch, False)  # begun on a CPU without native bfloat16
    whole, _ = _run(tmp_path / "a" / "checkpoint.pt")
    with pytest.raises(_Killed):
        _run(tmp_path / "b" / "checkpoint.pt", kill_at=2)
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert state["precision"] == "float32"
    if not saved:  # as written before the precision was saved: the key is missing, the scaler empty
        del state["precision"]
        save_checkpoint(state, tmp_path / "b" / "checkpoint.pt")
    _native(monkeypatch, True)  # resumed where a new run would train in bfloat16
    with caplog.at_level(logging.WARNING, logger="medseg.training.trainer"):
        resumed, dtypes = _run(tmp_path / "b" / "checkpoint.pt", resume=True)
    assert dtypes == [torch.float32] * 4  # epochs 2 and 3
    assert "resuming in float32" in caplog.text
    np.testing.assert_allclose([h["loss"] for h in resumed], [h["loss"] for h in whole], rtol=1e-6)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["precision"] == "float32"


def test_a_bfloat16_run_resumes_in_bfloat16_to_the_same_curve(tmp_path, monkeypatch):
    _native(monkeypatch, True)
    whole, _ = _run(tmp_path / "a" / "checkpoint.pt")
    with pytest.raises(_Killed):
        _run(tmp_path / "b" / "checkpoint.pt", kill_at=2)
    resumed, dtypes = _run(tmp_path / "b" / "checkpoint.pt", resume=True)
    assert dtypes == [torch.bfloat16] * 4
    np.testing.assert_allclose([h["loss"] for h in resumed], [h["loss"] for h in whole], rtol=1e-6)


def test_fast_weight_gradients_leave_autocast_convolutions_to_onednn():
    """Under CPU autocast the 3D convolution computes in bfloat16; the forward-convolution weight
    gradient (float32 only) steps aside, and the gradients are oneDNN's own, bit for bit."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 12, 12, 12)
    grads = []
    for fast in (True, False):
        conv.zero_grad()
        with fast_weight_gradients(fast), torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        assert y.dtype == torch.bfloat16
        y.float().square().mean().backward()
        grads.append(conv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
