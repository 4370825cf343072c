"""Shared inputs of the loss tests: class count, spatial shapes, compound names and a batch
with an absent class."""

from __future__ import annotations

import numpy as np
import torch

C = 3
SHAPES = {"2d": (5, 6), "3d": (3, 4, 5)}
COMPOUNDS = ["dice+ce", "dice+boundary", "generalized_dice+ce+boundary", "tversky+hausdorff"]


def make_batch(spatial: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (2, C, *spatial) and labels (2, *spatial); class 2 is absent from sample 0."""
    gen = np.random.default_rng(seed)
    logits = gen.normal(size=(2, C, *spatial)).astype(np.float32)
    labels = gen.integers(0, C, size=(2, *spatial))
    labels[0][labels[0] == 2] = 1
    labels[1].flat[:3] = [0, 1, 2]
    return torch.from_numpy(logits), torch.from_numpy(labels)
