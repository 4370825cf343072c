"""Kill tests: ``medseg train``, ``cv`` and ``predict`` killed with SIGKILL at seeded moments
leave only files that read back, and the same command started again finishes.

Two kinds of moment: a timer (a seeded delay, then ``kill -9`` of the process group from here),
and a write (the process group is killed from inside, at the n-th atomic write of a named file,
after half of the temporary file is written and before it takes the final name: a torn write).
The second needs a small driver around ``medseg.cli.main`` that wraps ``os.replace``; the
timer kills ``python -m medseg``. The run that finishes the work after the kills calls
``medseg.cli.main`` in this process (the same command, without paying the imports again).
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.conftest import ROOT, write_disk_folder

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")

# Wraps os.replace: at the KILL_AT-th atomic write ("name:n") of a file whose final name ends
# with `name`, half-write the temporary file, then SIGKILL the whole process group.
_DRIVER = """
import os, signal, sys
name, n = os.environ["KILL_AT"].rsplit(":", 1)
count, real = [0], os.replace
def replace(src, dst, *args, **kwargs):
    if os.path.basename(str(src)).startswith(".tmp-") and str(dst).endswith(name):
        count[0] += 1
        if count[0] == int(n):
            os.truncate(src, os.path.getsize(src) // 2)
            os.killpg(os.getpgid(0), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
from medseg.cli import main
sys.exit(main(sys.argv[1:]))
"""
_SETTINGS = """
architecture: {name: unet, spatial_dims: 2, in_channels: 1, out_channels: 2, features: [4, 8]}
plan: {patch_size: [32, 32], batch_size: 2}
"""
_TIMEOUT = 120  # seconds a start may take before the test fails (CI runs each in under ~15)


@pytest.fixture
def disks(tmp_path: Path) -> Path:
    """8 noisy 64 x 48 disk images with masks, and a settings file for a tiny U-Net."""
    root = tmp_path / "disks"
    write_disk_folder(root, 8, seed=5)
    (tmp_path / "tiny.yaml").write_text(_SETTINGS)
    return root


def _start(args: list[str], tmp_path: Path, *, kill_at: str | None = None,
           kill_after: tuple[str, float] | None = None) -> int:
    """Run medseg with ``args``; return its exit status (-9 when killed).

    ``kill_at="name:n"`` kills at the n-th write of a file named ``*name``; ``kill_after=(pattern,
    seconds)`` kills ``seconds`` after a file matching ``pattern`` (under ``tmp_path``) appears.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDSEG_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if kill_at is not None:
        env["KILL_AT"] = kill_at
    command = [sys.executable, "-c", _DRIVER] if kill_at else [sys.executable, "-m", "medseg"]
    process = subprocess.Popen([*command, *args], env=env, cwd=tmp_path, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")
    if kill_after is not None:
        pattern, delay = kill_after
        while process.poll() is None and not any(tmp_path.glob(pattern)):
            time.sleep(0.002)
        time.sleep(delay)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    try:
        _, err = process.communicate(timeout=_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert "Traceback" not in err, err
    return process.returncode


def _read_back(folder: Path) -> tuple[int, list[Path]]:
    """Read every file under ``folder`` as its suffix says; returns (files read, temp files)."""
    count, temps = 0, []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith(".tmp-"):
            temps.append(path)
            continue
        name = path.name
        if name.endswith(".json"):
            json.loads(path.read_text())
        elif name.endswith(".pt"):
            torch.load(path, weights_only=True)
        elif name.endswith(".npy"):
            np.load(path)
        elif name.endswith(".npz"):
            with np.load(path) as archive:
                [archive[key] for key in archive.files]
        elif name.endswith(".nii.gz"):
            np.asarray(nib.load(path).dataobj)
        elif name.endswith(".png"):
            sitk.ReadImage(str(path))
        elif name.endswith(".csv"):
            list(csv.reader(path.open()))
        else:
            path.read_bytes()  # report.md, TensorBoard events: present and readable
        count += 1
    return count, temps


def _train_args(disks: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(disks), "--out", str(out), "--config", str(disks.parent / "tiny.yaml"), "--epochs", "3",
            "--iterations-per-epoch", "2", "--workers", "0", "--device", "cpu", "--val-fraction", "0.25", *extra]


def _finish(args: list[str], tmp_path: Path, monkeypatch) -> int:
    """Run the command to its end in this process, with the cache the killed starts used."""
    from medseg.cli import main

    monkeypatch.setenv("MEDSEG_CACHE", str(tmp_path / "cache"))
    return main(args)


def test_train_killed_at_seeded_moments_resumes_and_finishes(disks, tmp_path, monkeypatch):
    rng = random.Random(20261203)
    out, cache = tmp_path / "run", tmp_path / "cache"
    points = [  # (moment, how): the second start resumes what the first left
        # a timer: up to 50 ms after the first preprocessed file appears (8 cases to go)
        ("preprocessing", {"kill_after": ("cache/*/*/*", rng.uniform(0.0, 0.05))}),
        # a torn write: the checkpoint of epoch 1 or 2, the final weights, or the final pipeline.json
        ("writing", {"kill_at": rng.choice(["checkpoint.pt:1", "checkpoint.pt:2", "model.pt:1", "pipeline.json:2"])}),
    ]
    for i, (moment, how) in enumerate(points):
        assert _start(_train_args(disks, out, *(["--resume"] if i else [])), tmp_path, **how) == -signal.SIGKILL, moment
        _read_back(out)
        _read_back(cache)
    assert _finish(_train_args(disks, out, "--resume"), tmp_path, monkeypatch) == 0
    _, temps = _read_back(out)
    _, cache_temps = _read_back(cache)
    assert temps == [] and cache_temps == []  # the restarts removed what the killed runs left
    saved = json.loads((out / "pipeline.json").read_text())
    assert [h["epoch"] for h in saved["history"]] == [1, 2, 3]
    assert saved["training"]["epochs"] == 3 and saved["plan"]["patch_size"] == [32, 32]
    torch.load(out / "model.pt", weights_only=True)


def test_cv_killed_in_its_second_fold_resumes_on_rerun(disks, tmp_path, monkeypatch):
    rng = random.Random(7)
    out = tmp_path / "cv"
    args = ["cv", str(disks), "--out", str(out), "--config", str(disks.parent / "tiny.yaml"), "--folds", "2",
            "--epochs", "1", "--iterations-per-epoch", "1", "--workers", "0", "--device", "cpu"]
    # fold 1's checkpoint, or one of its written predictions
    kill_at = rng.choice(["checkpoint.pt:2", f".png:{rng.randint(5, 8)}"])
    assert _start(args, tmp_path, kill_at=kill_at) == -signal.SIGKILL
    _read_back(out)
    fold0 = (out / "fold_0" / "metrics.json").read_bytes()
    assert not (out / "fold_1" / "metrics.json").exists()
    assert _finish(args, tmp_path, monkeypatch) == 0
    count, temps = _read_back(out)
    assert temps == [] and count > 10
    assert (out / "fold_0" / "metrics.json").read_bytes() == fold0  # the finished fold was not redone
    assert len(list((out / "fold_1" / "predictions").glob("*.png"))) == 4
    assert (out / "report" / "report.md").is_file()


def test_predict_killed_while_writing_finishes_on_rerun(disks, tmp_path, monkeypatch):
    run = tmp_path / "run"
    args = _train_args(disks, run, "--epochs", "1", "--iterations-per-epoch", "1", "--val-fraction", "0")
    assert _finish(args, tmp_path, monkeypatch) == 0
    out = tmp_path / "pred"
    args = ["predict", str(run), str(disks / "images"), "--out", str(out), "--device", "cpu"]
    n = random.Random(3).randint(2, 7)
    assert _start(args, tmp_path, kill_at=f".png:{n}") == -signal.SIGKILL
    count, temps = _read_back(out)
    assert count == n - 1 and len(temps) == 1  # the torn write stayed a temp file
    assert _finish(args, tmp_path, monkeypatch) == 0
    count, temps = _read_back(out)
    assert count == 8 and temps == []
    for path in out.glob("*.png"):
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).shape == (64, 48)


# --- a folder that cannot be written, a full disk -------------------------------------------------


@pytest.fixture
def trained(disks, tmp_path):
    """A finished one-epoch run and its 8 predictions (in this process)."""
    from medseg.cli import main

    run, pred = tmp_path / "run", tmp_path / "pred"
    assert main(_train_args(disks, run, "--epochs", "1", "--iterations-per-epoch", "1", "--val-fraction", "0")) == 0
    assert main(["predict", str(run), str(disks / "images"), "--out", str(pred), "--device", "cpu"]) == 0
    return run, pred


def _snapshot(*folders: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("medseg ")]
    assert len(lines) == 1 and lines[0].startswith(f"medseg {command}: error: "), err
    return lines[0]


def test_a_read_only_output_folder_is_a_one_line_error(disks, trained, capsys, monkeypatch):
    from medseg.cli import main

    run, pred = trained
    before = _snapshot(pred)
    if os.geteuid() == 0:  # root writes anyway: fail the writes as a read-only folder would
        def denied(src, dst, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(src))

        monkeypatch.setattr(os, "replace", denied)
    else:
        pred.chmod(0o555)
    try:
        capsys.readouterr()
        assert main(["predict", str(run), str(disks / "images"), "--out", str(pred), "--device", "cpu"]) == 2
    finally:
        pred.chmod(0o755)
    line = _error_line(capsys, "predict")
    assert "Permission denied; check that you may write there" in line and str(pred) in line
    assert _snapshot(pred) == before  # no prediction replaced, no temp file left


def test_a_full_disk_is_a_one_line_error_and_keeps_earlier_outputs(disks, trained, capsys, monkeypatch):
    from medseg.cli import main

    run, pred = trained
    before = _snapshot(run, pred)

    def full(src, dst, *args, **kwargs):
        raise OSError(28, "No space left on device", str(src))

    with monkeypatch.context() as patch:  # every atomic write fails: the first is pipeline.json
        patch.setattr(os, "replace", full)
        capsys.readouterr()
        assert main([*_train_args(disks, run, "--epochs", "2", "--iterations-per-epoch", "1"), "--resume"]) == 2
        assert main(["predict", str(run), str(disks / "images"), "--out", str(pred), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"medseg train: error: {run / 'pipeline.json'}: No space left on device; free some disk space" in err
    assert f"medseg predict: error: {pred / 'd0.png'}: No space left on device" in err
    assert _snapshot(run, pred) == before
    saved_weights = {p: before[p] for p in (run / "checkpoint.pt", run / "model.pt")}

    def half_then_full(obj, path, *args, **kwargs):  # the disk fills half way through a checkpoint
        Path(path).write_bytes(b"\0" * 1000)
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(torch, "save", half_then_full)
    assert main([*_train_args(disks, run, "--epochs", "2", "--iterations-per-epoch", "1"), "--resume"]) == 2
    assert f"{run / 'checkpoint.pt'}: No space left on device" in _error_line(capsys, "train")
    assert {p: p.read_bytes() for p in saved_weights} == saved_weights
    assert not list(run.glob(".tmp-*"))
