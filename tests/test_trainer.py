"""The training loop: its history, non-finite steps, resume of the very same run, run logs."""

from __future__ import annotations

import copy
import csv
import itertools
import random
import sys
import time
import types

import numpy as np
import pytest
import torch

from medseg.training import TrainingConfig, load_checkpoint, save_checkpoint, train


def test_history_times_the_steps_and_each_validation_apart():
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 2, 3, padding=1)
    batch = {"image": torch.randn(2, 1, 8, 8), "label": torch.randint(0, 2, (2, 8, 8))}
    calls = []

    def validate() -> float:
        time.sleep(0.2)
        calls.append(1)
        return 0.25 * len(calls)

    history = train(network, torch.nn.CrossEntropyLoss(), itertools.repeat(batch),
                    config=TrainingConfig(epochs=3, iterations_per_epoch=2), validate=validate)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["steps"] for h in history] == [2, 2, 2]
    assert [h["val_dice"] for h in history] == [0.25, 0.5, 0.75]
    assert all(0.2 <= h["val_seconds"] for h in history)
    # "time" is read before the epoch's validation, so it holds only the earlier ones
    assert history[0]["time"] < 0.2
    for before, after in itertools.pairwise(history):
        assert after["time"] - before["time"] >= before["val_seconds"]
    steps_only = [h["time"] - sum(e["val_seconds"] for e in history[:i]) for i, h in enumerate(history)]
    assert steps_only[-1] < 0.2  # six steps of a 2x1x8x8 convolution


# -- non-finite losses ----------------------------------------------------------------------------

class _NaNOn(torch.nn.Module):
    """Cross-entropy, but NaN on the given (0-based) calls; records the finite values."""

    def __init__(self, calls: set[int]) -> None:
        super().__init__()
        self.calls, self.count, self.values = calls, 0, []

    def forward(self, logits, target):
        value = torch.nn.functional.cross_entropy(logits, target)
        bad = self.count in self.calls
        self.count += 1
        if bad:
            return value * float("nan")
        self.values.append(value.item())
        return value


def _batches(start: int = 0):
    """Batch i depends on i alone (what PatchStream guarantees)."""
    for i in itertools.count(start):
        generator = torch.Generator().manual_seed(1000 + i)
        image = torch.randn(2, 1, 8, 8, generator=generator)
        yield {"image": image, "label": (image[:, 0] > 0.3).long()}


def test_a_nonfinite_step_is_skipped_and_counted_not_fatal():
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 2, 3, padding=1)
    loss = _NaNOn({1, 6})
    history = train(network, loss, _batches(), config=TrainingConfig(epochs=2, iterations_per_epoch=4))
    assert [h["nonfinite_steps"] for h in history] == [1, 1]
    assert [h["steps"] for h in history] == [4, 4]
    # the epoch's loss is the mean of its 3 finite steps; no NaN reached the weights
    np.testing.assert_allclose([h["loss"] for h in history],
                               [np.mean(loss.values[:3]), np.mean(loss.values[3:])], rtol=1e-6)
    assert all(torch.isfinite(p).all() for p in network.parameters())


def test_a_nonfinite_step_changes_no_weight():
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 2, 3, padding=1)
    seen = []

    class Watch(_NaNOn):
        def forward(self, logits, target):
            seen.append(network.weight.detach().clone())
            return super().forward(logits, target)

    train(network, Watch({0}), _batches(), config=TrainingConfig(epochs=1, iterations_per_epoch=3))
    torch.testing.assert_close(seen[1], seen[0], rtol=0, atol=0)  # step 0 (NaN) was skipped
    assert not torch.equal(seen[2], seen[1])  # step 1 was taken


def test_most_steps_nonfinite_stops_the_run_with_the_count():
    network = torch.nn.Conv2d(1, 2, 3, padding=1)
    with pytest.raises(FloatingPointError, match="epoch 1: 3 of 4 steps had a non-finite loss"):
        train(network, _NaNOn({0, 1, 3}), _batches(), config=TrainingConfig(epochs=2, iterations_per_epoch=4))


# -- resume ---------------------------------------------------------------------------------------

class _Killed(Exception):
    pass


def _net() -> torch.nn.Module:
    torch.manual_seed(0)  # dropout draws from torch's generator: a resume must restore it
    np.random.seed(0)
    random.seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Dropout2d(0.3), torch.nn.Conv2d(8, 2, 1))


def _run(path, *, kill_at: int | None = None, resume: bool = False, starts: list | None = None):
    """Four epochs of three steps; raising inside epoch ``kill_at``'s validation kills the run
    after the checkpoint of epoch ``kill_at - 1``."""
    calls = []

    def validate() -> float:
        calls.append(1)
        if kill_at is not None and len(calls) == kill_at:
            raise _Killed
        return float(np.random.rand() + torch.rand(()).item() + random.random())  # the three generators

    def batches(start: int):
        if starts is not None:
            starts.append(start)
        return _batches(start)

    config = TrainingConfig(epochs=4, iterations_per_epoch=3, learning_rate=1e-2)
    return train(_net(), torch.nn.CrossEntropyLoss(), batches, config=config, checkpoint=path,
                 resume=resume, validate=validate)


def test_a_killed_and_resumed_run_gives_the_curve_of_one_never_killed(tmp_path):
    whole = _run(tmp_path / "a" / "checkpoint.pt")
    with pytest.raises(_Killed):
        _run(tmp_path / "b" / "checkpoint.pt", kill_at=3)
    starts: list[int] = []
    resumed = _run(tmp_path / "b" / "checkpoint.pt", resume=True, starts=starts)
    assert starts == [6]  # the stream continues after the 2 x 3 batches already trained on
    assert [h["epoch"] for h in resumed] == [1, 2, 3, 4]
    for key in ("loss", "val_dice", "lr", "steps", "nonfinite_steps"):
        np.testing.assert_allclose([h[key] for h in resumed], [h[key] for h in whole], rtol=1e-6, atol=1e-6)


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    from medseg.training.checkpoint import random_states, set_random_states

    save_checkpoint({"random": random_states()}, tmp_path / "c.pt")
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    set_random_states(load_checkpoint(tmp_path / "c.pt")["random"])
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.testing.assert_close(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert first[2] == again[2]


# -- run logs -------------------------------------------------------------------------------------

def test_log_csv_holds_the_history_and_model_best_the_best_epoch(tmp_path):
    network = _net()
    scores, snapshots = iter([0.3, 0.9, 0.5]), []

    def validate() -> float:
        snapshots.append(copy.deepcopy(network.state_dict()))
        return next(scores)

    history = train(network, torch.nn.CrossEntropyLoss(), _batches(), checkpoint=tmp_path / "checkpoint.pt",
                    config=TrainingConfig(epochs=3, iterations_per_epoch=2), validate=validate)
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "loss", "val_dice", "lr", "seconds", "nonfinite_steps"]
    assert len(rows) == 3
    for row, record in zip(rows, history, strict=True):
        assert int(row["epoch"]) == record["epoch"] and int(row["nonfinite_steps"]) == record["nonfinite_steps"]
        for key in ("loss", "val_dice", "lr", "seconds"):
            assert float(row[key]) == record[key]
    # poly schedule: the last step of epoch 1 is step 1 of 6
    assert history[0]["lr"] == pytest.approx(2e-3 * (1 - 1 / 6) ** 0.9)
    best = load_checkpoint(tmp_path / "model_best.pt")
    assert best["epoch"] == 2 and best["val_dice"] == 0.9
    torch.testing.assert_close(best["model"]["3.weight"], snapshots[1]["3.weight"], rtol=0, atol=0)
    assert not torch.equal(best["model"]["3.weight"], network.state_dict()["3.weight"])


def test_tensorboard_gets_loss_lr_and_dice_per_epoch(tmp_path, monkeypatch):
    written = []

    class SummaryWriter:
        def __init__(self, log_dir, purge_step=None):
            written.append(("open", log_dir, purge_step))

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            written.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    history = train(_net(), torch.nn.CrossEntropyLoss(), _batches(), checkpoint=tmp_path / "checkpoint.pt",
                    config=TrainingConfig(epochs=2, iterations_per_epoch=1), validate=lambda: 0.5)
    assert written[0] == ("open", str(tmp_path / "tensorboard"), 1)
    scalars = {(tag, step): value for tag, value, step in (w for w in written if len(w) == 3 and w[0] != "open")}
    assert scalars == {("train/loss", 1): history[0]["loss"], ("train/lr", 1): history[0]["lr"], ("val/dice", 1): 0.5,
                       ("train/loss", 2): history[1]["loss"], ("train/lr", 2): history[1]["lr"], ("val/dice", 2): 0.5}
    assert written[-1] == ("close",)


# -- the GPU path, checked on the CPU -------------------------------------------------------------

def test_gated_scnn_consistency_term_stays_finite_with_half_precision_logits(monkeypatch):
    from medseg.architectures import GatedSCNN

    drawn = []
    rand_like = torch.rand_like
    monkeypatch.setattr(torch, "rand_like", lambda x, **kw: drawn.append(x.dtype) or rand_like(x, **kw))
    net = GatedSCNN(2, 1, 3, widths=(4, 4, 8, 8), aspp_channels=8, shape_channels=(4, 4, 4))
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 64, 64))
    for _ in range(20):  # float16 noise made nearly every draw NaN (value or gradient)
        logits = torch.randn(2, 3, 64, 64).half().requires_grad_()
        boundary = torch.randn(2, 1, 64, 64).half()
        value = net.training_loss((logits, boundary), target, lambda x, t: x.float().sum() * 0.0)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    assert drawn and set(drawn) == {torch.float32}


def test_cudnn_benchmark_is_on_only_inside_the_run_and_restored():
    from medseg.training.trainer import _cudnn_benchmark

    before = torch.backends.cudnn.benchmark
    with _cudnn_benchmark(True):
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == before


# -- moving average of the weights ------------------------------------------------------------------

def _weights_seen_by_validation(ema: float, tmp_path):
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 2, 3, padding=1)
    seen = []

    def validate() -> float:
        seen.append({k: v.clone() for k, v in network.state_dict().items()})
        return float(len(seen) == 2)  # epoch 2 is the best

    train(network, torch.nn.CrossEntropyLoss(), _batches(), checkpoint=tmp_path / "checkpoint.pt", validate=validate,
          config=TrainingConfig(epochs=4, iterations_per_epoch=1, learning_rate=0.05, ema=ema))
    return seen, network


def test_ema_validates_saves_and_ends_with_the_moving_average_of_the_steps(tmp_path):
    raw, _ = _weights_seen_by_validation(0.0, tmp_path / "raw")  # one step per epoch: the weights after each
    seen, network = _weights_seen_by_validation(0.6, tmp_path / "ema")
    expected = [raw[0]]  # the average starts at the first step's weights, then a_k = 0.6 a_(k-1) + 0.4 w_k
    for weights in raw[1:]:
        expected.append({k: 0.6 * expected[-1][k] + 0.4 * weights[k] for k in weights})
    for got, want in zip(seen, expected, strict=True):
        torch.testing.assert_close(got["weight"], want["weight"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(seen[-1]["weight"], raw[-1]["weight"], atol=1e-4)  # the average differs from the last step
    torch.testing.assert_close(network.weight.detach(), expected[-1]["weight"], rtol=1e-5, atol=1e-6)
    best = load_checkpoint(tmp_path / "ema" / "model_best.pt")
    torch.testing.assert_close(best["model"]["weight"], expected[1]["weight"], rtol=1e-5, atol=1e-6)
    checkpoint = load_checkpoint(tmp_path / "ema" / "checkpoint.pt")  # the optimiser's weights, to resume
    torch.testing.assert_close(checkpoint["model"]["weight"], raw[-1]["weight"], rtol=1e-5, atol=1e-6)


def test_a_resumed_ema_run_continues_the_average(tmp_path):
    def run(path, kill_at=None, resume=False):
        torch.manual_seed(0)
        network = torch.nn.Conv2d(1, 2, 3, padding=1)
        calls = []

        def validate() -> float:
            calls.append(1)
            if len(calls) == kill_at:
                raise _Killed
            return 0.5

        train(network, torch.nn.CrossEntropyLoss(), _batches, checkpoint=path, resume=resume, validate=validate,
              config=TrainingConfig(epochs=4, iterations_per_epoch=3, learning_rate=0.05, ema=0.9))
        return network.weight.detach()

    whole = run(tmp_path / "a" / "checkpoint.pt")
    with pytest.raises(_Killed):
        run(tmp_path / "b" / "checkpoint.pt", kill_at=3)
    torch.testing.assert_close(run(tmp_path / "b" / "checkpoint.pt", resume=True), whole, rtol=1e-6, atol=1e-7)


def test_ema_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="ema=1.0"):
        TrainingConfig(ema=1.0)


def test_a_finished_run_resumed_with_ema_but_no_average_saved_keeps_its_weights(tmp_path):
    torch.manual_seed(0)
    trained = torch.nn.Conv2d(1, 2, 3, padding=1)
    train(trained, torch.nn.CrossEntropyLoss(), _batches(), checkpoint=tmp_path / "checkpoint.pt",
          config=TrainingConfig(epochs=1, iterations_per_epoch=2, learning_rate=0.05))
    fresh = torch.nn.Conv2d(1, 2, 3, padding=1)  # other initial weights: the average would start from them
    train(fresh, torch.nn.CrossEntropyLoss(), _batches(), checkpoint=tmp_path / "checkpoint.pt", resume=True,
          config=TrainingConfig(epochs=1, iterations_per_epoch=2, learning_rate=0.05, ema=0.9))
    torch.testing.assert_close(fresh.weight.detach(), trained.weight.detach(), rtol=0, atol=0)
