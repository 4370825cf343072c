"""Training-patch throughput, medseg next to MONAI and TorchIO: patches per second and CPU
seconds per patch, for 3D patches and for 2D slices, from the same synthetic ``.nii.gz`` volumes.

Every pipeline draws batches of 2 patches, a third of them centred on foreground, with no
augmentation, through 2 worker processes:

* MONAI, from disk: ``LoadImaged`` + ``RandCropByPosNegLabeld(pos=1, neg=2)`` in a ``DataLoader``
  (each patch reads and decompresses its whole volume);
* MONAI, cached: ``CacheDataset`` holding the loaded volumes and ``FgBgToIndicesd`` indices, then
  ``RandCropByPosNegLabeld(fg_indices_key=..., bg_indices_key=...)``;
* TorchIO: ``Queue`` with a ``LabelSampler`` (label probabilities 2/3 background, 1/3 foreground
  split over the classes), ``samples_per_volume`` patches per loaded volume;
* medseg: ``PreprocessedCases(steps=[])`` (the ``.npy`` cache) + ``PatchStream`` +
  ``make_loader``.

Each pipeline runs in rounds, the pipelines alternating: a round starts fresh workers, draws a
few untimed batches, then as many batches as fill ``--seconds``. *Patches/s* is patches over the
wall time of that window. *CPU ms / patch* is the CPU time of the main process and of every
worker process in that window (``/proc/<pid>/stat``, ``RUSAGE_CHILDREN`` for workers reaped
during it), over the patches it delivered. *Memory* is the growth of the main process's RSS over
its one-off setup (a cache held in RAM) plus the workers' PSS at the end of a round.

Usage:
    python bench/bench_sampling.py            # full size (minutes)
    python bench/bench_sampling.py --quick    # toy sizes, seconds
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from common import MB, CPUSnapshot, Row, Stats, alternate, children_pss, print_table, rss, save_rows
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import (
    Compose,
    FgBgToIndicesd,
    LoadImaged,
    RandCropByPosNegLabeld,
    SqueezeDimd,
)
from torch.utils.data import RandomSampler

from medseg.io import FolderDataset
from medseg.preprocessing.cache import PreprocessedCases
from medseg.sampling import AUGMENTATIONS, PatchSampler, PatchStream, crop, make_loader

SIZES = {
    "full": {"volumes": 8, "shape": (192, 192, 128), "patch": 96, "rounds": 3, "seconds": 4.0,
             "warmup": 4},
    "quick": {"volumes": 3, "shape": (48, 48, 40), "patch": 32, "rounds": 2, "seconds": 0.3,
              "warmup": 2},
}
BATCH, WORKERS, CLASSES = 2, 2, 3


def write_volumes(folder: Path, n: int, shape: tuple[int, ...], seed: int = 0) -> None:
    """``images/`` (int16, blobs brighter than a noisy background) and ``labels/`` (uint8 blobs)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    for i in range(n):
        label = np.zeros(shape, np.uint8)
        for k in range(4):
            centre = rng.uniform(0.25, 0.75, 3) * shape
            radii = rng.uniform(0.05, 0.1, 3) * shape
            inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1
            label[inside] = 1 + k % (CLASSES - 1)
        image = (200 + 100 * label + rng.normal(0, 20, shape)).astype(np.int16)
        nib.save(nib.Nifti1Image(image, np.eye(4)), folder / "images" / f"case_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), folder / "labels" / f"case_{i:03d}.nii.gz")


@dataclass
class Method:
    """A way of producing batches: ``make()`` builds a fresh loader, ``labels`` finds a batch's labels."""

    name: str
    make: Callable[[], Iterable]
    labels: Callable[[Any], torch.Tensor]
    setup_s: float = 0.0
    setup_mb: float = 0.0
    keep: list = field(default_factory=list)  # objects the loaders need alive


def _shutdown(*objects: Any) -> None:
    """Stop DataLoader workers now rather than at garbage collection."""
    for obj in objects:
        for it in (obj, getattr(obj, "_iterator", None), getattr(obj, "subjects_iterable", None)):
            if hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
    gc.collect()


def one_round(method: Method, *, warmup: int, seconds: float, min_batches: int = 3) -> dict[str, float]:
    """Fresh workers, ``warmup`` untimed batches, then a timed window of at least ``seconds``."""
    loader = method.make()
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start, t0 = CPUSnapshot.take(), time.perf_counter()
    batches = foreground = 0
    while batches < min_batches or time.perf_counter() - t0 < seconds:
        labels = method.labels(next(it))
        foreground += int((labels.reshape(labels.shape[0], -1).amax(1) > 0).sum())
        batches += 1
    wall = time.perf_counter() - t0
    own, kids = CPUSnapshot.take().since(start)
    pss = children_pss()
    _shutdown(it, loader, *method.keep)
    del it, loader
    patches = batches * BATCH
    return {"patches_per_s": patches / wall, "cpu_ms_per_patch": 1e3 * (own + kids) / patches,
            "workers_pss_mb": pss / MB, "foreground_share": foreground / patches}


def _timed_setup(build: Callable[[], Any]) -> tuple[Any, float, float]:
    before, t0 = rss(), time.perf_counter()
    value = build()
    return value, time.perf_counter() - t0, (rss() - before) / MB


def monai_methods(files: list[dict[str, str]], size: tuple[int, ...], squeeze: bool) -> list[Method]:
    """MONAI from disk, and with the load and the foreground indices cached."""
    crop_kw = {"keys": ["image", "label"], "label_key": "label", "spatial_size": size, "pos": 1, "neg": 2,
               "num_samples": 1}
    tail = [SqueezeDimd(keys=["image", "label"], dim=-1)] if squeeze else []
    load = LoadImaged(keys=["image", "label"], ensure_channel_first=True)

    def loader(dataset: Dataset) -> Callable[[], DataLoader]:
        sampler = RandomSampler(dataset, replacement=True, num_samples=10**8)
        return lambda: DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=WORKERS)

    disk = Dataset(files, transform=Compose([load, RandCropByPosNegLabeld(**crop_kw), *tail]))
    indices = FgBgToIndicesd(keys="label")
    cached_crop = RandCropByPosNegLabeld(**crop_kw, fg_indices_key="label_fg_indices",
                                         bg_indices_key="label_bg_indices")
    cached, seconds, mb = _timed_setup(lambda: CacheDataset(
        files, transform=Compose([load, indices, cached_crop, *tail]), cache_rate=1.0,
        num_workers=WORKERS, progress=False))
    return [Method("MONAI LoadImaged (disk)", loader(disk), lambda b: b["label"]),
            Method("MONAI CacheDataset + FgBgToIndicesd", loader(cached), lambda b: b["label"],
                   setup_s=seconds, setup_mb=mb)]


def torchio_method(files: list[dict[str, str]], size: tuple[int, ...], samples_per_volume: int) -> Method | None:
    """TorchIO's Queue with a LabelSampler (None when TorchIO is not installed)."""
    try:
        import torchio as tio
    except ImportError:
        return None
    subjects = tio.SubjectsDataset([tio.Subject(image=tio.ScalarImage(f["image"]), label=tio.LabelMap(f["label"]))
                                    for f in files])
    probabilities = {0: 2 / 3, **{c: 1 / 3 / (CLASSES - 1) for c in range(1, CLASSES)}}
    sampler = tio.LabelSampler(patch_size=size, label_name="label", label_probabilities=probabilities)
    method = Method(f"TorchIO Queue (LabelSampler, {samples_per_volume}/volume)", lambda: None,
                    lambda b: b["label"][tio.DATA])

    def make() -> Iterator:
        queue = tio.Queue(subjects, max_length=4 * samples_per_volume, samples_per_volume=samples_per_volume,
                          sampler=sampler, num_workers=WORKERS)
        method.keep[:] = [queue]
        outer = torch.utils.data.DataLoader(queue, batch_size=BATCH, num_workers=0)
        return (batch for _ in itertools.count() for batch in outer)

    method.make = make
    return method


def medseg_method(cases: PreprocessedCases, patch: tuple[int, ...], slice_axis: int | None) -> Method:
    sampler_kw = {"patch_size": patch, "foreground_ratio": 1 / 3, "slice_axis": slice_axis}

    def make() -> Any:
        stream = PatchStream(cases, cases.dataset.case_ids, PatchSampler(**sampler_kw), batch_size=BATCH,
                             augmentation=AUGMENTATIONS["none"], num_classes=CLASSES)
        return make_loader(stream, workers=WORKERS)

    return Method("medseg PatchStream", make, lambda b: b["label"])


def in_process_breakdown(cases: PreprocessedCases, patch: tuple[int, ...], n: int) -> Row:
    """medseg's per-patch work without workers: the whole patch, its crops, and the batch stack."""
    stream = PatchStream(cases, cases.dataset.case_ids, PatchSampler(patch_size=patch, foreground_ratio=1 / 3),
                         batch_size=BATCH, augmentation=AUGMENTATIONS["none"], num_classes=CLASSES)
    rng = np.random.default_rng(0)
    ids = cases.dataset.case_ids
    stream.patch(ids[0], rng)  # opens the memory maps

    def per_patch(fn: Callable[[int], object]) -> float:
        t = time.thread_time()
        for i in range(n):
            fn(i)
        return 1e3 * (time.thread_time() - t) / n

    patches = [stream.patch(ids[i % len(ids)], rng) for i in range(BATCH)]
    total = per_patch(lambda i: stream.patch(ids[i % len(ids)], rng))
    image, label = cases.image(ids[0]), cases.label(ids[0])
    crops = per_patch(lambda i: (crop(image, (0, 0, 0), patch), crop(label, (0, 0, 0), patch)))
    stack = per_patch(lambda i: {k: torch.from_numpy(np.stack([p[k] for p in patches])) for k in patches[0]})
    stack /= BATCH
    note = (f"crop image+label {crops:.2g} ms, rest of patch() (augmentation 'none': copies, int64 label) "
            f"{total - crops:.2g} ms, np.stack per patch {stack:.2g} ms; one thread, no workers, page cache warm")
    size = "x".join(map(str, patch))
    return Row("sampling", f"medseg PatchStream.patch in-process, {size}", "CPU ms / patch",
               Stats.of([total]), note=note)


def compare(methods: list[Method], label: str, size: str, rounds: int, seconds: float, warmup: int) -> list[Row]:
    """Alternate the methods round by round; rows of medseg (the last method) against each peer."""
    runs = alternate({m.name: (lambda m=m: one_round(m, warmup=warmup, seconds=seconds)) for m in methods},
                     repeats=rounds, warmup=0)
    ours, rows = methods[-1], []

    def memory(m: Method) -> str:
        return f"+{m.setup_mb:.0f} MB in main, workers {statistics.median(runs[m.name]['workers_pss_mb']):.0f} MB PSS"

    for peer in methods[:-1]:
        mine, theirs = runs[ours.name], runs[peer.name]
        fg = (f"foreground share {statistics.median(mine['foreground_share']):.2f} vs "
              f"{statistics.median(theirs['foreground_share']):.2f}; setup {ours.setup_s:.1f} s vs {peer.setup_s:.1f} s")
        task = f"{label} patches {size}, batch {BATCH}, {WORKERS} workers"
        rows.append(Row("sampling", task, "patches / s", Stats.of(mine["patches_per_s"]), peer.name,
                        Stats.of(theirs["patches_per_s"]), higher_is_better=True,
                        memory=f"{memory(ours)} vs {memory(peer)}", note=fg))
        rows.append(Row("sampling", task, "CPU ms / patch (main + workers)", Stats.of(mine["cpu_ms_per_patch"]),
                        peer.name, Stats.of(theirs["cpu_ms_per_patch"])))
    best = max(methods[:-1], key=lambda m: statistics.median(runs[m.name]["patches_per_s"]))
    speedup = statistics.median(runs[ours.name]["patches_per_s"]) / statistics.median(runs[best.name]["patches_per_s"])
    cpu = statistics.median(runs[ours.name]["cpu_ms_per_patch"])
    note = (f"issue targets: >= 3x the best peer: {'met' if speedup >= 3 else 'NOT met'} ({speedup:.1f}x); "
            f"<= 20 CPU ms per 96^3 patch: {cpu:.1f} ms" + ("" if label == "2D" else
            f" ({'met' if cpu <= 20 else 'NOT met'}{'' if size == '96x96x96' else ', but patches are not 96^3'})"))
    rows.append(Row("sampling", f"{label} medseg vs the fastest peer", "patches / s",
                    Stats.of(runs[ours.name]["patches_per_s"]), best.name, Stats.of(runs[best.name]["patches_per_s"]),
                    higher_is_better=True, note=note))
    return rows


def run(quick: bool, samples_per_volume: int = 4, rounds: int | None = None) -> list[Row]:
    cfg = SIZES["quick" if quick else "full"]
    rounds = rounds or cfg["rounds"]
    p = cfg["patch"]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="medseg-bench-sampling-") as tmp:
        root = Path(tmp) / "data"
        write_volumes(root, cfg["volumes"], cfg["shape"])
        dataset = FolderDataset(root)
        files = [{"image": str(f.images[0]), "label": str(f.label)} for f in dataset.cases.values()]
        cases, seconds, mb = _timed_setup(lambda: PreprocessedCases(dataset, [], cache_dir=Path(tmp) / "cache").build())
        for label, patch, data_patch, axis in (("3D", (p, p, p), (p, p, p), None), ("2D", (p, p), (p, p, 1), 2)):
            methods = monai_methods(files, data_patch, squeeze=axis is not None)
            tio = torchio_method(files, data_patch, samples_per_volume)
            methods += [tio] if tio is not None else []
            ours = medseg_method(cases, patch, axis)
            ours.setup_s, ours.setup_mb = (seconds, mb) if label == "3D" else (0.0, 0.0)
            size = "x".join(map(str, patch))
            rows += compare([*methods, ours], label, size, rounds, cfg["seconds"], cfg["warmup"])
            if tio is None:
                rows.append(Row("sampling", f"{label} TorchIO", "-", Stats.of([float("nan")]),
                                note="torchio not installed: skipped"))
            del methods, tio, ours
            gc.collect()
        rows.append(in_process_breakdown(cases, (p, p, p), 10 if quick else 40))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes (seconds)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per pipeline")
    parser.add_argument("--samples-per-volume", type=int, default=4, help="TorchIO Queue patches per loaded volume")
    parser.add_argument("--json", default=None, help="also write the rows here (for bench/run.py)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process only collects batches
    rows = run(args.quick, args.samples_per_volume, args.rounds)
    print_table("sampling", rows)
    save_rows(rows, args.json)


if __name__ == "__main__":
    main()
