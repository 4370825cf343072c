"""`medseg evaluate` and medseg.evaluation.folders: which cases and classes are scored, by hand.

Three 10x10 cases named like channels (``amos_0001``... are cases, not channels). Rows are
10 pixels each:

- amos_0001: reference 1 on rows 0-1; prediction 1 on rows 0-3 and a false-positive class 2 on
  row 9 -> Dice 1 = 2*20/60, Dice 2 = 0 (painted where the reference lacks it);
- amos_0002: reference 1 on rows 0-1, 2 on rows 5-6; prediction 1 on rows 0-1, 2 on row 5 and
  class 3 (in no reference) on row 9 -> Dice 1 = 1, Dice 2 = 2*10/30, Dice 3 = 0;
- amos_0003: reference 1 on rows 0-4 and no prediction (an error; with --allow-missing an empty
  prediction -> Dice 1 = 0).
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

import medseg.errors
from medseg.cli import main
from medseg.evaluation.folders import evaluate_folders, score_folders
from medseg.io.labels import LabelSpec


def _png(array: np.ndarray, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def _rows(spec: dict[int, list[int]]) -> np.ndarray:
    array = np.zeros((10, 10), np.uint8)
    for value, rows in spec.items():
        array[rows] = value
    return array


@pytest.fixture
def folders(tmp_path):
    references = {"amos_0001": {1: [0, 1]}, "amos_0002": {1: [0, 1], 2: [5, 6]}, "amos_0003": {1: [0, 1, 2, 3, 4]}}
    predictions = {"amos_0001": {1: [0, 1, 2, 3], 2: [9]}, "amos_0002": {1: [0, 1], 2: [5], 3: [9]}}
    for case, spec in references.items():
        _png(_rows(spec), tmp_path / "data" / "labels" / f"{case}.png")
    for case, spec in predictions.items():
        _png(_rows(spec), tmp_path / "pred" / f"{case}.png")
    return tmp_path / "pred", tmp_path / "data" / "labels"


def _evaluate(pred, ref, *options) -> int:
    return main(["evaluate", str(pred), str(ref), *map(str, options)])


def _dice_table(path) -> dict[tuple[str, str], float]:
    with open(path, newline="") as handle:
        return {(row["case"], row["label"]): float(row["dice"]) for row in csv.DictReader(handle)}


def test_a_missing_prediction_is_an_error_naming_the_case(folders, capsys):
    assert _evaluate(*folders) == 2
    error = capsys.readouterr().err
    assert "amos_0003" in error and "--allow-missing" in error
    assert "amos_0001" not in error


def test_a_prediction_without_reference_is_an_error(folders, capsys):
    pred, ref = folders
    _png(_rows({1: [0]}), pred / "amos_0009.png")
    assert _evaluate(pred, ref, "--allow-missing") == 2
    assert "no reference for 1 prediction(s) ['amos_0009']" in capsys.readouterr().err


def test_every_case_scores_every_class_of_references_and_predictions(folders, tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert _evaluate(*folders, "--allow-missing", "--out", out) == 0
    table = _dice_table(out)
    expected = {
        ("amos_0001", "1"): 2 * 20 / 60, ("amos_0001", "2"): 0.0, ("amos_0001", "3"): 1.0,  # 3 absent from both
        ("amos_0002", "1"): 1.0, ("amos_0002", "2"): 2 * 10 / 30, ("amos_0002", "3"): 0.0,
        ("amos_0003", "1"): 0.0, ("amos_0003", "2"): 1.0, ("amos_0003", "3"): 1.0,       # empty prediction
        ("mean", "1"): 5 / 9, ("mean", "2"): 5 / 9, ("mean", "3"): 2 / 3,
    }
    assert table.keys() == expected.keys()
    for key, value in expected.items():
        assert table[key] == pytest.approx(value, abs=1e-12), key
    out_text = capsys.readouterr().out
    assert "values found in references and predictions: [1, 2, 3]" in out_text
    assert "mean Dice over labels: 0.5926" in out_text  # (2/3 + 0 + 1 + 1 + 2/3 + 0 + 0 + 1 + 1) / 9


def test_predicted_only_scores_the_predicted_cases(folders):
    with pytest.warns(UserWarning, match=r"amos_0003"):
        rows = evaluate_folders(*folders, missing="skip")
    assert sorted({row["case"] for row in rows}) == ["amos_0001", "amos_0002"]
    assert {(row["case"], row["label"]): row["dice"] for row in rows}[("amos_0002", 3)] == 0.0


def test_summary_json_is_nnunets_layout_by_hand(folders, tmp_path):
    out = tmp_path / "summary.json"
    assert _evaluate(*folders, "--allow-missing", "--out", out) == 0
    summary = json.loads(out.read_text())
    assert list(summary) == ["metric_per_case", "mean", "foreground_mean"]
    cases = summary["metric_per_case"]
    assert [c["reference_file"].rsplit("/", 1)[-1] for c in cases] == ["amos_0001.png", "amos_0002.png", "amos_0003.png"]
    assert cases[0]["prediction_file"].endswith("pred/amos_0001.png") and cases[2]["prediction_file"] is None
    first = cases[0]["metrics"]
    assert list(first) == ["1", "2", "3"]
    assert first["1"] == {"Dice": pytest.approx(2 / 3), "IoU": 0.5, "FP": 20, "TP": 20, "FN": 0, "TN": 60,
                          "n_pred": 40, "n_ref": 20}
    assert first["2"] == {"Dice": 0.0, "IoU": 0.0, "FP": 10, "TP": 0, "FN": 0, "TN": 90, "n_pred": 10, "n_ref": 0}
    assert first["3"]["Dice"] == "nan" and first["3"]["IoU"] == "nan" and first["3"]["TN"] == 100  # nnU-Net: NaN
    assert cases[1]["metrics"]["2"] == {"Dice": pytest.approx(2 / 3), "IoU": 0.5, "FP": 0, "TP": 10, "FN": 10,
                                        "TN": 80, "n_pred": 10, "n_ref": 20}
    assert cases[2]["metrics"]["1"] == {"Dice": 0.0, "IoU": 0.0, "FP": 0, "TP": 0, "FN": 50, "TN": 50,
                                        "n_pred": 0, "n_ref": 50}
    mean = summary["mean"]
    assert mean["1"]["Dice"] == pytest.approx(5 / 9) and mean["1"]["TP"] == pytest.approx(40 / 3)
    assert mean["2"]["Dice"] == pytest.approx(1 / 3) and mean["2"]["IoU"] == pytest.approx(0.25)  # NaN left out
    assert mean["3"]["Dice"] == 0.0
    assert summary["foreground_mean"]["Dice"] == pytest.approx(8 / 27)  # (5/9 + 1/3 + 0) / 3
    assert summary["foreground_mean"]["IoU"] == pytest.approx(0.25)  # (1/2 + 1/4 + 0) / 3


@pytest.mark.parametrize("manifest", [
    {"0": "background", "1": "liver", "2": "tumour", "4": "vessel"},  # MSD
    {"background": 0, "liver": 1, "tumour": 2, "vessel": 4},           # nnU-Net v2
])
def test_classes_come_from_a_dataset_json_beside_the_references(folders, tmp_path, capsys, manifest):
    pred, ref = folders
    (ref.parent / "dataset.json").write_text(json.dumps({"labels": manifest}))
    out = tmp_path / "m.csv"
    with pytest.warns(UserWarning, match=r"no class of the dataset.*amos_0002.png': \[3\]"):
        assert _evaluate(pred, ref, "--allow-missing", "--out", out) == 0
    table = _dice_table(out)
    assert sorted({label for _, label in table}) == ["1", "2", "4"]  # 3 is no class; 4 scored everywhere
    assert table["amos_0001", "4"] == table["amos_0003", "4"] == 1.0
    assert table["mean", "2"] == pytest.approx(5 / 9)
    assert "classes from" in capsys.readouterr().out


def test_labels_option_and_run_plan_choose_the_classes(folders, tmp_path):
    pred, ref = folders
    out = tmp_path / "m.csv"
    assert _evaluate(pred, ref, "--allow-missing", "--labels", "1,4", "--out", out) == 0
    assert sorted({label for _, label in _dice_table(out)}) == ["1", "4"]
    run = tmp_path / "run"
    run.mkdir()
    spec = LabelSpec((0, 1, 2), ("background", "a", "b"))
    (run / "pipeline.json").write_text(json.dumps({"plan": {"num_classes": 3, "labels": spec.to_dict()}}))
    with pytest.warns(UserWarning, match=r"no class of the dataset \(classes \[0, 1, 2\]\)"):
        assert _evaluate(pred, ref, "--allow-missing", "--run", run, "--out", out) == 0
    assert sorted({label for _, label in _dice_table(out)}) == ["1", "2"]


def test_ignore_label_and_regions_by_hand(tmp_path):
    """Row 0 of the reference holds 1, 2, 3, 0, then 5 (ignored) on columns 4-5; the prediction 2, 2,
    0, 3, then 1 on the ignored columns (not counted)."""
    ref, pred = np.zeros((4, 8), np.uint8), np.zeros((4, 8), np.uint8)
    ref[0, :6] = [1, 2, 3, 0, 5, 5]
    pred[0, :6] = [2, 2, 0, 3, 1, 1]
    _png(ref, tmp_path / "ref" / "a.png")
    _png(pred, tmp_path / "pred" / "a.png")
    spec = LabelSpec((0, 1, 2, 3), ignore=5, regions=((1, 2, 3), (2, 3), (3,)), regions_class_order=(1, 2, 3))
    targets, scores = score_folders(tmp_path / "pred", tmp_path / "ref", spec=spec, all_metrics=True)
    assert [t.nnunet_key for t in targets] == ["(1, 2, 3)", "(2, 3)", "(3,)"]
    metrics, counts = scores[0].metrics, scores[0].counts
    assert metrics[1]["dice"] == pytest.approx(2 * 2 / 6)  # whole: ref cols 0-2, pred cols 0, 1, 3
    assert metrics[2]["dice"] == pytest.approx(2 * 1 / 5)  # core: ref cols 1-2, pred cols 0, 1, 3
    assert metrics[3]["dice"] == 0.0
    assert counts[1] == {"TP": 2, "FP": 1, "FN": 1, "TN": 26, "n_pred": 3, "n_ref": 3}  # 30 scored pixels
    assert metrics[1]["specificity"] == pytest.approx(26 / 27)
    plain = LabelSpec((0, 1, 2, 3), ignore=5)
    _, scores = score_folders(tmp_path / "pred", tmp_path / "ref", spec=plain)
    assert scores[0].metrics[1]["dice"] == 0.0 and scores[0].counts[1]["FP"] == 0  # label 1 painted on ignore only
    assert math.isclose(scores[0].metrics[2]["dice"], 2 / 3)


def test_nnunet_v2_regions_and_ignore_from_dataset_json(tmp_path):
    ref, pred = np.zeros((4, 8), np.uint8), np.zeros((4, 8), np.uint8)
    ref[0, :6] = [1, 2, 3, 0, 5, 5]
    pred[0, :6] = [2, 2, 0, 3, 1, 1]
    _png(ref, tmp_path / "task" / "labelsTr" / "a.png")
    _png(pred, tmp_path / "pred" / "a.png")
    manifest = {"labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3], "ignore": 5},
                "regions_class_order": [1, 2, 3]}
    (tmp_path / "task" / "dataset.json").write_text(json.dumps(manifest))
    out = tmp_path / "summary.json"
    assert _evaluate(tmp_path / "pred", tmp_path / "task" / "labelsTr", "--out", out) == 0
    summary = json.loads(out.read_text())
    metrics = summary["metric_per_case"][0]["metrics"]
    assert list(metrics) == ["(1, 2, 3)", "(2, 3)", "(3,)"]
    assert metrics["(1, 2, 3)"] == {"Dice": pytest.approx(4 / 6), "IoU": 0.5, "FP": 1, "TP": 2, "FN": 1, "TN": 26,
                                    "n_pred": 3, "n_ref": 3}  # the 2 ignored pixels are in no count
    assert metrics["(2, 3)"]["Dice"] == pytest.approx(2 / 5) and metrics["(3,)"]["Dice"] == 0.0
    assert summary["foreground_mean"]["Dice"] == pytest.approx((4 / 6 + 2 / 5 + 0) / 3)


def test_cases_scores_a_test_set_among_the_references(folders):
    rows = evaluate_folders(*folders, cases=["amos_0002"])  # amos_0003's reference is not asked for
    assert {(row["case"], row["label"]): row["dice"] for row in rows} == {
        ("amos_0002", 1): 1.0, ("amos_0002", 2): pytest.approx(2 / 3), ("amos_0002", 3): 0.0}
    with pytest.raises(medseg.errors.DataError, match=r"no prediction for 1 of the 2 .*\['amos_0003'\]"):
        evaluate_folders(*folders, cases=["amos_0002", "amos_0003"])


def test_masks_stored_as_0_255_score_as_the_datasets_read_them(tmp_path):
    ref = np.zeros((10, 10), np.uint8)
    ref[2:6, 2:6] = 255  # a 0/255 mask, as many tools save them
    pred = (ref // 255).astype(np.uint8)  # medseg writes the class, 1
    pred[2, 2:6] = 0  # 4 of 16 pixels missed: Dice 2*12/(12+16) = 6/7
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    _png(ref, tmp_path / "ref" / "a.png")
    _png(pred, tmp_path / "pred" / "a.png")
    rows = evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert [(r["label"], r["dice"]) for r in rows] == [(1, pytest.approx(6 / 7))]
