"""The example pipelines and the README's Python block run (tiny budgets: smoke tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

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
