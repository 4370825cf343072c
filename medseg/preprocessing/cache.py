"""Preprocessed cases cached on disk as uncompressed, memory-mappable ``.npy``.

The cache is keyed by the preprocessing configuration, the dataset's label spec, medseg's version
and a digest of the preprocessing and label-encoding code, and each case's file sizes and times,
so a second run (or a resumed one) starts training within seconds, and an edited file, setting or
code change is redone.
Foreground locations are precomputed per class, so patch sampling never scans a volume.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..instances.encoding import label_dtype
from ..io.datasets import Dataset
from ..io.files import atomic_path
from ..io.sample import Geometry
from .base import Step, preprocess

__all__ = ["PreprocessedCases", "code_version", "default_cache_dir"]

_MAX_LOCATIONS = 10_000  # foreground voxels kept per class (nnU-Net keeps 10k)


def default_cache_dir() -> Path:
    """``$MEDSEG_CACHE``, else ``$XDG_CACHE_HOME/medseg``, else ``~/.cache/medseg``."""
    if "MEDSEG_CACHE" in os.environ:
        return Path(os.environ["MEDSEG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medseg"


def _digest(value: object) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_digest(files: Iterable[Path]) -> str:
    """A digest of the files' names and contents."""
    sha = hashlib.sha1()
    for file in sorted(files):
        sha.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return sha.hexdigest()[:16]


@functools.cache
def code_version() -> str:
    """medseg's version and a digest of the code that decides what a cached case holds (the
    preprocessing steps and the label encoding), computed once per process: an edit to either
    lands in a new cache folder instead of reading stale cases."""
    from .. import __version__

    package = Path(__file__).resolve().parents[1]
    files = [*package.joinpath("preprocessing").glob("*.py"), package / "io" / "labels.py"]
    return f"{__version__}-{source_digest(files)}"


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def _foreground(label: np.ndarray, seed: int, first: int = 1) -> dict[str, np.ndarray]:
    """Up to ``_MAX_LOCATIONS`` voxel coordinates of each label value ``>= first`` (0 where class
    0 is a real class, not a background). One sort of the kept voxels, whatever the number of
    values (an instance label holds one value per object)."""
    rng = np.random.default_rng(seed)
    flat = label.ravel()
    kept = np.flatnonzero(flat >= first)
    if not len(kept):
        return {}
    kept = kept[np.argsort(flat[kept], kind="stable")]  # voxels grouped by value, in index order
    values, starts = np.unique(flat[kept], return_index=True)
    found = {}
    for value, group in zip(values.tolist(), np.split(kept, starts[1:]), strict=True):
        if len(group) > _MAX_LOCATIONS:
            group = np.sort(group[rng.choice(len(group), _MAX_LOCATIONS, replace=False)])
        found[f"class_{int(value)}"] = np.stack(np.unravel_index(group, label.shape), axis=1).astype(np.int32)
    return found


def _build(args: tuple[Dataset, Sequence[Step], str, Path]) -> None:
    dataset, steps, case, folder = args
    sample = preprocess(dataset.load(case), steps)
    folder.mkdir(parents=True, exist_ok=True)
    _save(folder / "image.npy", np.ascontiguousarray(sample.image, dtype=np.float32))
    if sample.label is not None:
        dtype = label_dtype(sample.label)  # encoded instance labels may need int32
        _save(folder / "label.npy", np.ascontiguousarray(sample.label, dtype=dtype))
        with atomic_path(folder / "foreground.npz") as tmp, open(tmp, "wb") as handle:
            spec = dataset.label_spec
            np.savez(handle, **_foreground(sample.label, seed=len(case), first=int(spec is None or spec.background)))
    with atomic_path(folder / "geometry.json") as tmp:  # written last: marks the case complete
        tmp.write_text(json.dumps(sample.geometry.to_dict()))


class PreprocessedCases:
    """The preprocessed training cases of a dataset, on disk.

    Args:
        dataset: where the cases come from.
        steps: the fitted preprocessing steps.
        cache_dir: the cache root (default :func:`default_cache_dir`).
        workers: processes preprocessing cases in parallel.

    Example:
        >>> cases = PreprocessedCases(data, steps).build()  # doctest: +SKIP
        >>> image = cases.image("hippocampus_001")          # (C, *spatial), memory-mapped
    """

    def __init__(
        self,
        dataset: Dataset,
        steps: Sequence[Step],
        *,
        cache_dir: str | os.PathLike | None = None,
        workers: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.steps = list(steps)
        spec = getattr(dataset, "label_spec", None)  # cached labels are class indices under it
        key = _digest({"root": str(dataset.root and Path(dataset.root).resolve()),
                       "steps": [s.config() for s in self.steps], "version": 2, "code": code_version(),
                       "labels": None if spec is None else spec.to_dict(), **getattr(dataset, "cache_tags", {})})
        self.root = Path(cache_dir or default_cache_dir()) / key
        self.workers = workers or min(4, os.cpu_count() or 1)

    def folder(self, case: str) -> Path:
        files = self.dataset.cases[case]
        stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in (*files.images, files.label) if p]
        return self.root / f"{case}-{_digest(stats)[:8]}"

    def build(self, cases: Sequence[str] | None = None) -> PreprocessedCases:
        """Preprocess the cases not cached yet, in parallel over cases."""
        cases = list(self.dataset.case_ids if cases is None else cases)
        todo = [(self.dataset, self.steps, c, self.folder(c)) for c in cases
                if not (self.folder(c) / "geometry.json").exists()]
        if len(todo) > 1 and self.workers > 1:
            with ProcessPoolExecutor(min(self.workers, len(todo))) as pool:
                list(pool.map(_build, todo, chunksize=max(1, len(todo) // (4 * self.workers))))
        else:
            for item in todo:
                _build(item)
        return self

    def image(self, case: str) -> np.ndarray:
        return np.load(self.folder(case) / "image.npy", mmap_mode="r")

    def label(self, case: str) -> np.ndarray:
        return np.load(self.folder(case) / "label.npy", mmap_mode="r")

    def foreground(self, case: str) -> dict[int, np.ndarray]:
        with np.load(self.folder(case) / "foreground.npz") as archive:
            return {int(k.split("_")[1]): archive[k] for k in archive.files}

    def geometry(self, case: str) -> Geometry:
        return Geometry.from_dict(json.loads((self.folder(case) / "geometry.json").read_text()))
