"""The training loop's history: what each record holds and what its clock counts."""

from __future__ import annotations

import itertools
import time

import torch

from medseg.training import TrainingConfig, train


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
