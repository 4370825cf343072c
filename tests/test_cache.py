"""The preprocessed-case cache: keyed by settings, labels and code; opened a bounded number of times."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import medseg.preprocessing.cache as cache_module
from medseg.io import LabelSpec
from medseg.io.datasets import CaseFiles, Dataset
from medseg.preprocessing import Pad, ZScore
from medseg.preprocessing.cache import PreprocessedCases, code_version, source_digest
from medseg.sampling import AUGMENTATIONS, PatchSampler, PatchStream


def _tiny_dataset(folder: Path, n: int, **kwargs) -> Dataset:
    """``n`` cases of 6x5x4 voxels, each with a 2x2x2 block of class 1."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    cases = {}
    for i in range(n):
        label = np.zeros((6, 5, 4), np.int8)
        label[1:3, 2:4, 1:3] = 1
        image, mask = folder / f"case{i:03d}.npy", folder / f"case{i:03d}_seg.npy"
        np.save(image, (rng.random((6, 5, 4)) + label).astype(np.float32))
        np.save(mask, label)
        cases[f"case{i:03d}"] = CaseFiles(images=(image,), label=mask)
    return Dataset(cases, root=folder, **kwargs)


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd (Linux)")
def test_stream_keeps_a_bounded_number_of_cases_memory_mapped(tmp_path):
    data = _tiny_dataset(tmp_path / "data", 300)
    cases = PreprocessedCases(data, [], cache_dir=tmp_path / "cache", workers=1).build()
    stream = PatchStream(cases, data.case_ids, PatchSampler(patch_size=(4, 4, 4), foreground_ratio=1.0),
                         batch_size=1, augmentation=AUGMENTATIONS["none"])
    rng = np.random.default_rng(0)
    before = _open_descriptors()
    for case in data.case_ids:  # every case once: each memory map holds a file descriptor
        patch = stream.patch(case, rng)
        assert patch["label"].sum() == 8  # foreground-centred 4^3 patch holds the whole 2^3 block
    opened = _open_descriptors() - before
    limit = stream.max_open_cases
    assert limit == 64
    assert opened <= 2 * limit + 4, f"{opened} descriptors opened for 300 cases"  # before: 600
    assert list(stream._open) == data.case_ids[-limit:]  # the most recent ones stay open
    stream.patch(data.case_ids[-limit], rng)  # a hit moves to the back: the next miss drops another
    stream.patch(data.case_ids[0], rng)
    assert data.case_ids[-limit] in stream._open and data.case_ids[-limit + 1] not in stream._open


def test_cache_folder_changes_with_settings_labels_and_code_and_is_reused_otherwise(tmp_path, monkeypatch):
    data = _tiny_dataset(tmp_path / "data", 2)
    steps = [ZScore(), Pad(min_shape=(8, 8, 8))]
    first = PreprocessedCases(data, steps, cache_dir=tmp_path).build()
    marker = first.folder("case000") / "geometry.json"
    stamp = marker.stat().st_mtime_ns
    again = PreprocessedCases(data, [ZScore(), Pad(min_shape=(8, 8, 8))], cache_dir=tmp_path).build()
    assert again.root == first.root and marker.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert np.asarray(again.image("case000")).shape == (1, 8, 8, 8)
    other_setting = PreprocessedCases(data, [ZScore(), Pad(min_shape=(8, 8, 12))], cache_dir=tmp_path)
    relabelled = PreprocessedCases(data.with_label_spec(LabelSpec(values=(0, 1), ignore=255)), steps,
                                   cache_dir=tmp_path)
    monkeypatch.setattr(cache_module, "code_version", lambda: "0.1.0-edited")
    new_code = PreprocessedCases(data, steps, cache_dir=tmp_path)
    roots = {first.root, other_setting.root, relabelled.root, new_code.root}
    assert len(roots) == 4 and all(r.parent == tmp_path for r in roots)
    assert not (new_code.folder("case000") / "geometry.json").exists()  # stale cases are not read


def test_code_version_digests_the_preprocessing_and_label_sources(tmp_path):
    import medseg

    version = code_version()
    assert version.startswith(f"{medseg.__version__}-") and version == code_version()  # computed once
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    digest = source_digest([a, b])
    assert source_digest([b, a]) == digest  # order-free
    a.write_text("x = 2\n")
    assert source_digest([a, b]) != digest
