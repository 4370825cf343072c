"""The command line: plan, train, predict, evaluate, errors."""

from __future__ import annotations

import csv

import numpy as np
import SimpleITK as sitk

from medseg.cli import main
from tests.conftest import SAMPLES


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
                 "--iterations-per-epoch", "2", "--workers", "0", "--device", "cpu"])
    assert code == 0 and (run / "model.pt").is_file() and (run / "pipeline.json").is_file()
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
