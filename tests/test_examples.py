"""The example pipelines and the README's Python block run (tiny budgets: smoke tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, SAMPLES

pytestmark = pytest.mark.slow


def _run(args, cwd, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                            encoding="utf-8", errors="replace", timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_train_msd_then_predict_folder(tmp_path):
    out = _run([ROOT / "pipelines" / "train_msd.py", SAMPLES / "hippocampus", "--time-limit", "4",
                "--iterations-per-epoch", "2", "--out", tmp_path / "run"], tmp_path)
    dice = float(re.search(r"held-out mean Dice over 6 cases: ([0-9.]+)", out).group(1))
    assert 0.0 <= dice <= 1.0
    out = _run([ROOT / "pipelines" / "predict_folder.py", tmp_path / "run",
                SAMPLES / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz", "--out", tmp_path / "pred"], tmp_path)
    assert "wrote 1 label maps" in out and (tmp_path / "pred" / "hippocampus_001.nii.gz").is_file()


def test_train_2d_images(tmp_path):
    out = _run([ROOT / "pipelines" / "train_2d_images.py", SAMPLES / "hc18", "--time-limit", "4",
                "--iterations-per-epoch", "2", "--out", tmp_path / "run"], tmp_path)
    assert re.search(r"held-out mean Dice over \d+ images: [0-9.]+", out)


def test_cross_validate_script(tmp_path):
    out = _run([ROOT / "pipelines" / "cross_validate.py", SAMPLES / "hc18", "--folds", "2",
                "--time-limit", "3", "--out", tmp_path / "cv"], tmp_path)
    assert "label 1: mean Dice" in out and (tmp_path / "cv" / "report" / "report.md").is_file()


def test_readme_python_block_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "time_limit=60" in block
    (tmp_path / "data_samples").symlink_to(SAMPLES)
    (tmp_path / "quickstart.py").write_text(block.replace("time_limit=60", "time_limit=3"))
    _run([tmp_path / "quickstart.py"], tmp_path)
    assert (tmp_path / "predictions" / "hippocampus_001.nii.gz").is_file()
    assert (tmp_path / "runs" / "hippo" / "model.pt").is_file()


def test_review_loop_script(tmp_path):
    out = _run([ROOT / "pipelines" / "review_loop.py", "--data", SAMPLES / "hippocampus", "--initial", "4",
                "--held-out", "2", "--pool", "4", "--per-round", "1", "--rounds", "1", "--base-steps", "2",
                "--round-steps", "1", "--features", "4,8", "--out", tmp_path / "loop"], tmp_path)
    row = re.search(r"\| 1 \| 5 \| ([0-9.]+) \| ([0-9.]+) \|", out)
    assert row and all(0.0 <= float(v) <= 1.0 for v in row.groups())
    assert (tmp_path / "loop" / "results.json").is_file()


def test_instances_nuclei_script(tmp_path):
    out = _run([ROOT / "pipelines" / "instances_nuclei.py", "--architecture", "bordercore", "--dims", "2,3",
                "--epochs", "1", "--iterations-per-epoch", "1", "--batch-size", "2", "--out", tmp_path / "nuclei"],
               tmp_path)
    found = re.findall(r"(\d)D bordercore: held-out matching accuracy \(AP\) at IoU 0.5 ([0-9.]+), "
                       r"panoptic quality ([0-9.]+) over (\d+) nuclei", out)
    # every reference nucleus of the held-out parts is counted: the 4 anti-diagonal tiles (10 + 9 + 6 + 16,
    # a nucleus cut by the tiling counting in each tile) and the second half of the volume
    label = np.array(Image.open(SAMPLES / "nuclei" / "2d" / "labels" / "dsb2018.png"))
    tiles = sum(len(np.unique(label[r:r + 128, 384 - r:512 - r])) - 1 for r in (0, 128, 256, 384))
    half = len(np.unique(np.asarray(nib.load(SAMPLES / "nuclei" / "3d" / "labels" / "synthetic.nii.gz").dataobj)[:, 30:])) - 1
    assert (tiles, half) == (41, 31)
    assert [(dims, int(nuclei)) for dims, _, _, nuclei in found] == [("2", tiles), ("3", half)]
    assert all(0.0 <= float(v) <= 1.0 for _, accuracy, pq, _ in found for v in (accuracy, pq))
    predictions = tmp_path / "nuclei" / "2d_bordercore" / "predictions"
    assert (predictions / "tile_000_384.png").is_file() and (predictions / "instances_coco.json").is_file()
