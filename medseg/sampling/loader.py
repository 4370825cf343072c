"""A stream of augmented training batches, assembled in worker processes."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import DataError
from ..io.labels import IGNORE_INDEX
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
        num_classes: classes including background (``None``: encoded instance labels, any id).
        spacing: voxel spacing of a patch (for spacing-aware distance maps).
        seed: base seed.
        rank: the process of a distributed run (``torchrun``) this stream feeds: rank ``r`` draws
            its own batches (its share of the global batch), seeded by ``(seed, index, r)``, with
            the foreground share kept per rank; rank 0 draws what a single process draws.
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
        num_classes: int | None = 2,
        spacing: Sequence[float] | None = None,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        if not case_ids:
            raise ValueError("PatchStream needs at least one training case.")
        self.cases, self.case_ids, self.sampler = cases, list(case_ids), sampler
        self.batch_size, self.augmentation = int(batch_size), augmentation
        self.precompute, self.num_classes, self.seed, self.rank = precompute, num_classes, seed, int(rank)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self._open: OrderedDict[str, tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]] = OrderedDict()

    max_open_cases = 64
    """Cases kept memory-mapped per worker, least recently used dropped first: each map holds a
    file descriptor, and thousands of cases would exceed the process's limit."""

    def _case(self, case: str) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        if case in self._open:
            self._open.move_to_end(case)
            return self._open[case]
        while len(self._open) >= self.max_open_cases:
            self._open.popitem(last=False)
        found = self._open[case] = (self.cases.image(case), self.cases.label(case), self.cases.foreground(case))
        return found

    def patch(self, case: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One augmented patch of ``case``."""
        image, label, foreground = self._case(case)
        shape = image.shape[1:]
        size = self.sampler.data_patch(len(shape))
        squeeze = [a for a, s in enumerate(size) if s == 1 and len(size) == 3 and len(self.sampler.patch_size) == 2]
        net_size = tuple(s for a, s in enumerate(size) if a not in squeeze)
        params = self.augmentation.draw(rng, len(net_size), self.spacing)
        source = list(self.augmentation.source_size(params, net_size))  # the rotated patch's bounding box
        for axis in squeeze:
            source.insert(axis, 1)
        start, _ = self.sampler.draw_start(shape, foreground, rng, size)
        # the block centred on the patch, moved the least that puts it inside the case (or, where
        # the case is smaller than the block, over the whole case): no padding the case could fill
        start = [st - (src - s) // 2 for st, src, s in zip(start, source, size, strict=True)]
        start = [min(max(st, min(0, n - src)), max(0, n - src)) for st, src, n in zip(start, source, shape, strict=True)]
        image_patch, label_patch = crop(image, start, source), crop(label, start, source)
        if squeeze:
            image_patch, label_patch = image_patch.squeeze(squeeze[0] + 1), label_patch.squeeze(squeeze[0])
        image_patch, label_patch = self.augmentation.apply(image_patch, label_patch, params, net_size)
        out = {"image": image_patch, "label": label_patch}
        if self.precompute is not None:
            out.update(self.precompute(label_patch, self.num_classes, self.spacing))
        return out

    start_batch = 0
    """The index of the first batch an iterator yields (a resumed run continues the stream)."""

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches ``start_batch``, ``start_batch + 1``, ...; with ``W`` workers worker ``w``
        makes every ``W``-th from ``start_batch + w``, and the DataLoader takes them round-robin,
        so the order is that of one process."""
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if info is not None:
            torch.set_num_threads(1)
        for index in itertools.count(self.start_batch + worker, workers):
            yield self.batch(index)

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        """Batch ``index`` of the stream, the same whichever worker makes it and whenever: its
        generator is seeded by ``(seed, index)`` (``(seed, index, rank)`` on ranks > 0) and the
        sampler's foreground share counts the patches of all batches before it."""
        rng = np.random.default_rng([self.seed, index] if self.rank == 0 else [self.seed, index, self.rank])
        self.sampler.drawn = index * self.batch_size
        cases, patches = [], []
        for _ in range(self.batch_size):
            cases.append(self.case_ids[rng.integers(len(self.case_ids))])
            patches.append(self.patch(cases[-1], rng))
        batch = {k: np.stack([p[k] for p in patches]) for k in patches[0]}
        self._check_labels(batch["label"], cases)
        return {k: torch.from_numpy(v) for k, v in batch.items()}

    def _check_labels(self, labels: np.ndarray, cases: list[str]) -> None:
        """Raise unless ``labels`` hold class indices below ``num_classes`` or IGNORE_INDEX (here,
        once per batch, so the losses need not check on the GPU, which would stall every step)."""
        if self.num_classes is None:  # encoded instance labels (Mask R-CNN): one value per instance
            return
        bad = (labels >= self.num_classes) | ((labels < 0) & (labels != IGNORE_INDEX))
        if bad.any():
            raise DataError(
                f"training cases {sorted(set(cases))} hold label values {np.unique(labels[bad]).tolist()} "
                f"outside 0..{self.num_classes - 1} (and the ignore index {IGNORE_INDEX}); give "
                "num_classes to match the dataset, or map its labels with a LabelSpec."
            )


def make_loader(
    stream: PatchStream,
    *,
    workers: int = 1,
    pin_memory: bool = False,
    device: str | torch.device | None = None,
    start_batch: int = 0,
) -> DataLoader[Any]:
    """A DataLoader over ``stream``: whole batches come from worker processes.

    Args:
        stream: the batches.
        workers: worker processes (0: the calling process makes them).
        pin_memory: page-locked batches (also on whenever ``device`` is a CUDA device, such
            as ``"cuda"``, ``"cuda:1"`` or ``torch.device("cuda", 0)``).
        device: where the batches go.
        start_batch: the index of the first batch (to resume a run where it stopped).
    """
    stream.start_batch = int(start_batch)
    pin_memory = pin_memory or (device is not None and torch.device(device).type == "cuda")
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=pin_memory,
    )
