"""The command line: plan, train, predict, evaluate, errors."""

from __future__ import annotations

import csv
import errno
import json

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from medseg.cli import _describe, main
from tests.conftest import SAMPLES, write_disk_folder

_TINY = "architecture: {name: unet, spatial_dims: 2, in_channels: 1, out_channels: 2, features: [4, 8]}\n"


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    """6 noisy disk images with masks, and settings for a tiny U-Net (tiny.yaml beside them)."""
    root = tmp_path_factory.mktemp("cli-disks") / "disks"
    write_disk_folder(root, 6, seed=2)
    (root.parent / "tiny.yaml").write_text(_TINY)
    return root


def _train(disks, out, *flags):
    return main(["train", str(disks), "--out", str(out), "--config", str(disks.parent / "tiny.yaml"),
                 "--workers", "0", "--device", "cpu", "--iterations-per-epoch", "1", *flags])


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith(f"medseg {command}: error: "), err
    return err[-1]


def test_plan_prints_the_plan(capsys):
    assert main(["plan", str(SAMPLES / "hippocampus")]) == 0
    out = capsys.readouterr().out
    assert "patch_size      (40, 56, 40)" in out and "num_classes     3" in out


def test_evaluate_scores_folders_by_hand(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    pred = np.zeros((10, 10), np.uint8)
    pred[:4] = 1  # 40 pixels
    ref = np.zeros((10, 10), np.uint8)
    ref[:2] = 1  # 20 pixels, all inside the prediction
    sitk.WriteImage(sitk.GetImageFromArray(pred), str(tmp_path / "pred" / "a.png"))
    sitk.WriteImage(sitk.GetImageFromArray(ref), str(tmp_path / "ref" / "a_mask.png"))
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "--out", str(tmp_path / "m.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert rows[0]["case"] == "a" and abs(float(rows[0]["dice"]) - 2 * 20 / 60) < 1e-9
    assert "mean Dice over labels: 0.6667" in capsys.readouterr().out


def test_train_predict_evaluate_on_the_2d_sample(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", str(SAMPLES / "hc18"), "--out", str(run), "--epochs", "1",
                 "--iterations-per-epoch", "2", "--workers", "0", "--device", "cpu", "--cache-dir", str(tmp_path / "c")])
    assert code == 0 and (run / "model.pt").is_file() and (run / "pipeline.json").is_file()
    assert len(list((tmp_path / "c").glob("*/*/geometry.json"))) == 16  # --cache-dir holds the cases
    assert main(["predict", str(run), str(SAMPLES / "hc18" / "images" / "001_HC.png"), "--out", str(tmp_path / "p")]) == 0
    written = sitk.ReadImage(str(tmp_path / "p" / "001_HC.png"))
    assert written.GetSize() == (800, 540)
    assert set(np.unique(sitk.GetArrayFromImage(written))) <= {0, 1}
    assert "Dice" in capsys.readouterr().out


def test_errors_exit_2_with_a_message_naming_the_input(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no pipeline.json" in capsys.readouterr().err


def test_resume_keeps_the_saved_settings_and_flags_given_again_override(disks, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(disks, run, "--epochs", "2", "--time-limit", "900", "--lr", "0.004", "--val-fraction", "0") == 0
    capsys.readouterr()
    resumed = _printed(capsys, "train", str(disks), "--out", str(run), "--resume", "--print-config")
    assert resumed["training"]["epochs"] == 2 and resumed["training"]["time_limit"] == 900
    assert resumed["training"]["learning_rate"] == 0.004 and resumed["training"]["workers"] == 0
    assert main(["train", str(disks), "--out", str(run), "--resume", "--epochs", "3", "--device", "cpu"]) == 0
    saved = json.loads((run / "pipeline.json").read_text())
    assert saved["training"]["epochs"] == 3 and saved["training"]["time_limit"] == 900
    assert saved["training"]["learning_rate"] == 0.004
    assert [h["epoch"] for h in saved["history"]] == [1, 2, 3]  # continued, not restarted


@pytest.mark.parametrize(("flags", "expected"), [
    (["--loss", "focal"], '--loss cannot change when resuming: the run in {run} has "dice+ce", this call asks for "focal"'),
    (["--patch-size", "16,16"], '--patch-size cannot change when resuming: the run in {run} has [48, 64], this call asks '
                                'for [16, 16]'),
    (["--batch-size", "3"], "--batch-size cannot change when resuming"),
    (["--spatial-dims", "3"], "--spatial-dims cannot change when resuming"),
    (["--architecture", "deeplabv3plus"], "--architecture cannot change when resuming"),
    (["--classes", "1=disk,2=ring"], "--classes cannot change when resuming"),
    (["--seed", "5"], "--seed cannot change when resuming"),  # the patch stream's seed
    (["--iterations-per-epoch", "7"], "--iterations-per-epoch cannot change when resuming"),
])
def test_resume_refuses_what_a_run_cannot_change(disks, tmp_path, capsys, flags, expected):
    run = tmp_path / "run"
    assert _train(disks, run, "--epochs", "1", "--val-fraction", "0") == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert main(["train", str(disks), "--out", str(run), "--resume", "--device", "cpu", *flags]) == 2
    assert expected.format(run=run) in _one_error_line(capsys, "train")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_finished_run_is_not_overwritten_unless_asked(disks, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(disks, run, "--epochs", "1", "--val-fraction", "0") == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert _train(disks, run, "--epochs", "2", "--val-fraction", "0") == 2
    line = _one_error_line(capsys, "train")
    assert f"{run} already holds a run (pipeline.json, model.pt, checkpoint.pt" in line and "--resume" in line
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    (run / ".tmp-999999999-model.pt").write_bytes(b"torn")  # left by a killed run
    assert _train(disks, run, "--epochs", "2", "--val-fraction", "0", "--overwrite") == 0
    saved = json.loads((run / "pipeline.json").read_text())
    assert [h["epoch"] for h in saved["history"]] == [1, 2] and not (run / ".tmp-999999999-model.pt").exists()


def test_cv_overwrite_starts_again(disks, tmp_path, capsys):
    out = tmp_path / "cv"
    out.mkdir()
    (out / "cv.json").write_text(json.dumps({"folds": 3, "seed": 0, "groups": True, "splits": []}))
    args = ["cv", str(disks), "--out", str(out), "--config", str(disks.parent / "tiny.yaml"), "--folds", "2",
            "--epochs", "1", "--iterations-per-epoch", "1", "--workers", "0", "--device", "cpu"]
    assert main(args) == 2
    assert "holds a cross-validation with {'folds': 3}" in _one_error_line(capsys, "cv")
    assert main([*args, "--overwrite"]) == 0
    assert json.loads((out / "cv.json").read_text())["folds"] == 2 and (out / "report" / "report.md").is_file()


def _printed(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_cuda_without_cuda_is_a_one_line_error(disks, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["train", str(disks), "--out", str(tmp_path / "r"), "--device", "cuda"]) == 2
    assert _one_error_line(capsys, "train").endswith("CUDA is not available; use --device cpu")
    assert main(["predict", str(tmp_path), str(disks), "--out", str(tmp_path / "p"), "--device", "cuda:0"]) == 2
    assert "CUDA is not available" in _one_error_line(capsys, "predict")
    from medseg import MedsegError, Pipeline

    with pytest.raises(MedsegError, match="CUDA is not available; use --device cpu"):
        Pipeline(disks, device="cuda")  # the Python API says the same


def test_user_errors_are_one_line_with_exit_2(disks, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(disks, run, "--epochs", "1") == 0
    capsys.readouterr()
    other = tmp_path / "other"  # a dataset without the run's cases
    (other / "images").mkdir(parents=True)
    (other / "masks").mkdir()
    for name in ("images/x.png", "masks/x_mask.png"):
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.uint8)), str(other / name))
    assert main(["predict", str(run), str(other), "--split", "train", "--out", str(tmp_path / "p")]) == 2
    assert "no case 'd" in _one_error_line(capsys, "predict")  # a KeyError of the dataset
    assert main(["predict", str(run), str(disks), "--split", "val", "--out", str(tmp_path / "p")]) in (0, 2)
    capsys.readouterr()
    json_path = run / "pipeline.json"
    json_path.write_text(json_path.read_text().replace('"split"', '"split_"'))  # a run without a split
    assert main(["predict", str(run), str(disks), "--split", "val", "--out", str(tmp_path / "p")]) == 2
    assert "the run has no 'val' split" in _one_error_line(capsys, "predict")
    assert main(["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "nowhere" in _one_error_line(capsys, "train")
    assert main(["train", str(disks), "--patch-size", "0,4"]) == 2
    assert _one_error_line(capsys, "train").endswith("sizes must be positive (see medseg train --help)")


def test_an_internal_error_is_one_line_with_exit_1_and_a_traceback_with_v(disks, tmp_path, capsys, monkeypatch):
    def broken(args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr("medseg.cli._open_data", broken)
    assert main(["train", str(disks), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err == ("medseg train: error: internal error: TypeError: unsupported operand; "
                   "rerun with -v for the traceback\n")
    assert main(["-v", "train", str(disks), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "raise TypeError" in err and err.endswith("-v for the traceback\n")


def test_os_errors_name_the_final_file_and_worker_errors_their_last_line():
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/a/.tmp-4242-model.pt")
    assert _describe(full) == (2, "/runs/a/model.pt: No space left on device; free some disk space and rerun "
                                  "(finished outputs are kept)")
    denied = PermissionError(errno.EACCES, "Permission denied", "/runs/a/pred/.tmp-7-x.png")
    assert _describe(denied) == (2, "/runs/a/pred/x.png: Permission denied; check that you may write there")
    wrapped = ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                         "last):\n  File \"x.py\", line 1\nValueError: case d1: image is empty")
    assert _describe(wrapped) == (2, "case d1: image is empty")
    assert _describe(KeyError("d9")) == (2, "unknown case id or name 'd9'")


def test_plan_takes_the_classes_and_modality_train_would(capsys):
    assert main(["plan", str(SAMPLES / "hc18"), "--classes", "1=head", "--modality", "CT", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["class_names"] == ["background", "head"] and plan["normalization"] == "ct"
    assert plan["in_channels"] == 1 and len(plan["intensity"]) == 1  # CT statistics of the one channel
