"""Work spread over processes: sharded prediction, fold-parallel cross-validation, fold locks."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from medseg.cli import main
from medseg.evaluation import cv_report
from medseg.evaluation.cv_folds import write_once
from medseg.io.locks import LockHeld, OwnerLock, lock_owner
from tests.conftest import ROOT, write_disk_folder

_TINY = "architecture: {name: unet, spatial_dims: 2, in_channels: 1, out_channels: 2, features: [4, 8]}\n"
_CASES = [f"d{i}" for i in range(6)]


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    """6 noisy disk images with masks (d0..d5), and a tiny U-Net's settings (tiny.yaml beside them)."""
    root = tmp_path_factory.mktemp("shard-disks") / "disks"
    write_disk_folder(root, 6, seed=4)
    (root.parent / "tiny.yaml").write_text(_TINY)
    return root


def _cv_args(disks, out, *flags: str) -> list[str]:
    return ["cv", str(disks), "--out", str(out), "--config", str(disks.parent / "tiny.yaml"), "--folds", "2",
            "--epochs", "1", "--iterations-per-epoch", "2", "--workers", "0", "--device", "cpu", "--seed", "3", *flags]


def _error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"medseg {command}: error: "), err
    return err[-1]


@pytest.fixture
def sleeper():
    """A live process of this host (its pid stands for another process holding a lock)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait(timeout=30)


def _lock_file(path, pid: int, host: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "started": "t", "token": "x"}))


# --- sharded prediction ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(disks, tmp_path_factory):
    out = tmp_path_factory.mktemp("shard-run") / "run"
    assert main(["train", str(disks), "--out", str(out), "--config", str(disks.parent / "tiny.yaml"), "--epochs", "1",
                 "--iterations-per-epoch", "2", "--workers", "0", "--device", "cpu"]) == 0
    return out


def _predict(run, source, out, *flags: str) -> dict[str, bytes]:
    assert main(["predict", str(run), str(source), "--out", str(out), "--device", "cpu", *flags]) == 0
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())} if out.exists() else {}


def test_parts_write_each_case_once_and_together_what_one_process_writes(run, disks, tmp_path):
    whole = _predict(run, disks / "images", tmp_path / "all")
    parts = [_predict(run, disks / "images", tmp_path / f"part{k}", "--part", str(k), "--parts", "2") for k in (0, 1)]
    assert sorted(parts[0]) == ["d0.png", "d2.png", "d4.png"]  # every 2nd sorted case from 0
    assert sorted(parts[1]) == ["d1.png", "d3.png", "d5.png"]
    assert {**parts[0], **parts[1]} == whole  # the same files, byte for byte
    # the run's validation split too: the same cases once each, as one process writes them
    val = _predict(run, disks, tmp_path / "val", "--split", "val")
    val_parts = [_predict(run, disks, tmp_path / f"val{k}", "--split", "val", "--part", str(k), "--parts", "2")
                 for k in (0, 1)]
    assert not set(val_parts[0]) & set(val_parts[1]) and {**val_parts[0], **val_parts[1]} == val


def test_torchrun_ranks_shard_and_split_a_machines_part_again(run, disks, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert sorted(_predict(run, disks / "images", tmp_path / "rank1")) == ["d1.png", "d3.png", "d5.png"]
    monkeypatch.setenv("RANK", "0")
    # machine 1 of 2, rank 0 of 2 there: part 1 * 2 + 0 = 2 of 4 -> the sorted cases [2::4]
    assert sorted(_predict(run, disks / "images", tmp_path / "m1r0", "--part", "1", "--parts", "2")) == ["d2.png"]


@pytest.mark.parametrize("flags, match", [(["--part", "2", "--parts", "2"], "--part one of 0..1"),
                                          (["--part", "0"], "give both")])
def test_bad_parts_are_refused_naming_the_flags(run, disks, tmp_path, capsys, flags, match):
    assert main(["predict", str(run), str(disks / "images"), "--out", str(tmp_path / "p"), *flags]) == 2
    assert match in _error(capsys, "predict") and not (tmp_path / "p").exists()


# --- folds in parallel --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def serial_and_parallel(disks, tmp_path_factory):
    """The same 2-fold cross-validation run whole in this process, and as two `--fold` processes
    at once plus `--report`."""
    base = tmp_path_factory.mktemp("shard-cv")
    with pytest.MonkeyPatch.context() as patch, pytest.warns(UserWarning, match="report has tables only"):
        patch.setattr(cv_report, "can_plot", lambda: False)  # figures cost seconds and are not compared
        assert main(_cv_args(disks, base / "serial")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen([sys.executable, "-m", "medseg", *_cv_args(disks, base / "parallel", "--fold", str(k))],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT) for k in (0, 1)]
    for process in processes:
        output, _ = process.communicate(timeout=240)
        text = output.decode("utf-8", errors="replace")
        assert process.returncode == 0, text
    with pytest.MonkeyPatch.context() as patch, pytest.warns(UserWarning, match="report has tables only"):
        patch.setattr(cv_report, "can_plot", lambda: False)
        assert main(_cv_args(disks, base / "parallel", "--report")) == 0
    return base / "serial", base / "parallel"


def test_parallel_folds_and_report_equal_the_serial_run(serial_and_parallel):
    serial, parallel = serial_and_parallel
    assert json.loads((serial / "cv.json").read_text()) == json.loads((parallel / "cv.json").read_text())
    for name in ("metrics.csv", "summary.csv"):
        assert (parallel / "report" / name).read_text() == (serial / "report" / name).read_text()
    for fold in (0, 1):
        rows = [json.loads((run / f"fold_{fold}" / "metrics.json").read_text())["rows"] for run in (serial, parallel)]
        assert rows[0] == rows[1] and len(rows[0]) == 3  # 3 validation cases, one foreground class
    assert not list((parallel / "locks").iterdir())  # every lock released


def test_a_finished_fold_is_not_trained_again(serial_and_parallel, disks, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr("medseg.pipeline.train", refuse)
    assert main(_cv_args(disks, serial_and_parallel[1], "--fold", "1")) == 0
    assert "fold 1:" in capsys.readouterr().out


def test_report_names_the_missing_fold_and_who_trains_it(serial_and_parallel, disks, tmp_path, capsys, sleeper):
    copy = tmp_path / "cv"
    shutil.copytree(serial_and_parallel[1], copy)
    (copy / "fold_1" / "metrics.json").unlink()
    assert main(_cv_args(disks, copy, "--report")) == 2
    assert "fold(s) [1] of 2" in (message := _error(capsys, "cv")) and "fold 1 has not finished" in message
    _lock_file(copy / "locks" / "fold_1.lock", sleeper.pid)
    assert main(_cv_args(disks, copy, "--report")) == 2
    assert f"fold 1 is being trained by host {socket.gethostname()!r}, pid {sleeper.pid}" in _error(capsys, "cv")


def test_a_fold_another_live_process_trains_is_refused(disks, tmp_path, capsys, sleeper):
    out = tmp_path / "cv"
    _lock_file(out / "locks" / "fold_0.lock", sleeper.pid)
    assert main(_cv_args(disks, out, "--fold", "0")) == 2
    message = _error(capsys, "cv")
    assert f"fold 0 of {out} is being run by host {socket.gethostname()!r}, pid {sleeper.pid}" in message
    assert not (out / "fold_0").exists()
    # a whole-run --overwrite deletes nothing while a fold trains; --report --overwrite is refused
    assert main(_cv_args(disks, out, "--overwrite")) == 2
    assert f"pid {sleeper.pid}" in _error(capsys, "cv") and (out / "cv.json").is_file()
    assert main(_cv_args(disks, out, "--report", "--overwrite")) == 2
    assert "--overwrite would delete them" in _error(capsys, "cv")


# --- the lock and cv.json -----------------------------------------------------------------------


def test_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path, sleeper):
    path = tmp_path / "locks" / "fold_3.lock"
    _lock_file(path, sleeper.pid)
    with pytest.raises(LockHeld, match=f"fold 3 is being run by host '{socket.gethostname()}', pid {sleeper.pid}"):
        OwnerLock(path, what="fold 3").acquire()
    sleeper.kill()
    sleeper.wait(timeout=30)
    with pytest.warns(UserWarning, match=f"took over the lock of fold 3 from host .*pid {sleeper.pid}"):
        lock = OwnerLock(path, what="fold 3").acquire()
    assert lock_owner(path)["pid"] == os.getpid() and not path.with_name("fold_3.lock.takeover").exists()
    with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):  # held: a second owner is refused
        OwnerLock(path, what="fold 3").acquire()
    lock.release()
    assert not path.exists()


def test_lock_of_another_host_is_refused_naming_it(tmp_path):
    path = tmp_path / "fold_0.lock"
    _lock_file(path, 1, host="node-17")
    with pytest.raises(LockHeld, match=r"host 'node-17', pid 1 .*on another host.*delete .*fold_0.lock"):
        OwnerLock(path, what="fold 0").acquire()


def test_lock_of_another_host_expires_without_heartbeat_and_the_owner_beats(tmp_path):
    path = tmp_path / "fold_0.lock"
    _lock_file(path, 1, host="node-17")
    os.utime(path, (time.time() - 601, time.time() - 601))  # untouched for longer than EXPIRE_S = 600
    with pytest.warns(UserWarning, match="took over the lock of fold 0 from host 'node-17', pid 1"):
        lock = OwnerLock(path, what="fold 0").acquire()
    lock.release()
    beating = OwnerLock(path, what="fold 0", heartbeat=0.05, expire=5.0).acquire()
    os.utime(path, (time.time() - 100, time.time() - 100))
    time.sleep(0.5)  # ten heartbeats: the owner touched it again
    assert time.time() - path.stat().st_mtime < 5.0
    beating.release()


def test_cv_json_is_written_once(tmp_path):
    path = tmp_path / "cv.json"
    assert write_once(path, {"seed": 1}) and not write_once(path, {"seed": 2})
    assert json.loads(path.read_text()) == {"seed": 1} and [p.name for p in tmp_path.iterdir()] == ["cv.json"]


@pytest.mark.parametrize("fold", [[], ["--fold", "0"]])
def test_cv_under_torchrun_is_refused_naming_the_fix(disks, tmp_path, capsys, monkeypatch, fold):
    """Every torchrun rank would take the same fold lock: refused before any fold is trained."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "cv"
    assert main(_cv_args(disks, out, *fold)) != 0
    message = _error(capsys, "cv")
    assert "under torchrun" in message and "--fold K" in message and "Scaling out" in message
    assert not (out / "fold_0").exists() and not (out / "locks").exists()
