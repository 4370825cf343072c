"""A stream of augmented training batches, assembled in worker processes."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..preprocessing.cache import PreprocessedCases
from .augmentation import Augmentation
from .patch import PatchSampler, crop

__all__ = ["PatchStream", "make_loader"]

Precompute = Callable[[np.ndarray, int, "tuple[float, ...] | None"], dict[str, np.ndarray]]


class PatchStream(IterableDataset):
    """Endless batches ``{"image": (B, C, *patch), "label": (B, *patch), **extras}``.

    Each worker draws with its own seeded generator; extras (e.g. a loss's distance maps) are
    computed here, once per patch, so the training step does not pay for them.

    Args:
        cases: the preprocessed training cases.
        case_ids: which of them to draw from.
        sampler: where patches lie.
        batch_size: patches per batch.
        augmentation: the augmentation preset.
        precompute: ``(label_patch, num_classes, spacing) -> {name: array}`` or ``None``.
        num_classes: classes including background.
        spacing: voxel spacing of a patch (for spacing-aware distance maps).
        seed: base seed.
    """

    def __init__(
        self,
        cases: PreprocessedCases,
        case_ids: Sequence[str],
        sampler: PatchSampler,
        *,
        batch_size: int,
        augmentation: Augmentation,
        precompute: Precompute | None = None,
        num_classes: int = 2,
        spacing: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        if not case_ids:
            raise ValueError("PatchStream needs at least one training case.")
        self.cases, self.case_ids, self.sampler = cases, list(case_ids), sampler
        self.batch_size, self.augmentation = int(batch_size), augmentation
        self.precompute, self.num_classes, self.seed = precompute, num_classes, seed
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self._open: dict[str, tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]] = {}

    def _case(self, case: str) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        if case not in self._open:
            self._open[case] = (self.cases.image(case), self.cases.label(case), self.cases.foreground(case))
        return self._open[case]

    def patch(self, case: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One augmented patch of ``case``."""
        image, label, foreground = self._case(case)
        shape = image.shape[1:]
        size = self.sampler.data_patch(len(shape))
        squeeze = [a for a, s in enumerate(size) if s == 1 and len(size) == 3 and len(self.sampler.patch_size) == 2]
        net_size = tuple(s for a, s in enumerate(size) if a not in squeeze)
        params = self.augmentation.draw(rng, len(net_size))
        source = size
        if "rotate" in params:
            source = tuple(s if a in squeeze else math.ceil(s * self.augmentation.margin) for a, s in enumerate(size))
        start, _ = self.sampler.draw_start(shape, foreground, rng, size)
        start = tuple(st - (src - s) // 2 for st, src, s in zip(start, source, size))
        image_patch, label_patch = crop(image, start, source), crop(label, start, source)
        if squeeze:
            image_patch, label_patch = image_patch.squeeze(squeeze[0] + 1), label_patch.squeeze(squeeze[0])
        image_patch, label_patch = self.augmentation.apply(image_patch, label_patch, params, net_size)
        out = {"image": image_patch, "label": label_patch}
        if self.precompute is not None:
            out.update(self.precompute(label_patch, self.num_classes, self.spacing))
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        rng = np.random.default_rng([self.seed, worker])
        torch.set_num_threads(1) if info is not None else None
        while True:
            patches = [self.patch(self.case_ids[rng.integers(len(self.case_ids))], rng) for _ in range(self.batch_size)]
            yield {k: torch.from_numpy(np.stack([p[k] for p in patches])) for k in patches[0]}


def make_loader(stream: PatchStream, *, workers: int = 1, pin_memory: bool = False) -> DataLoader[Any]:
    """A DataLoader over ``stream``: whole batches come from worker processes."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=pin_memory,
    )
