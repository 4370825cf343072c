"""The confusion-matrix mIoU of VOC and Cityscapes, worked out by hand on two 3x3 images."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.cli import main
from medseg.evaluation.confusion import (
    confusion_matrix,
    dataset_scores,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)
from medseg.evaluation.folders import dataset_block, score_folders
from medseg.io import LabelSpec

# image A: reference       prediction        image B: reference   prediction
#          0 0 1           0 1 1                      0 0 0        0 0 0
#          0 1 1           0 1 1                      0 0 0        0 0 0
#          2 2 255         2 0 2                      0 0 1        0 1 1
REF_A = np.array([[0, 0, 1], [0, 1, 1], [2, 2, 255]])
PRED_A = np.array([[0, 1, 1], [0, 1, 1], [2, 0, 2]])
REF_B = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 1]])
PRED_B = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 1]])
# rows: reference class 0, 1, 2; columns: predicted class. The 255 pixel of A is left out.
MATRIX_A = [[2, 1, 0], [0, 3, 0], [1, 0, 1]]
MATRIX_B = [[7, 1, 0], [0, 1, 0], [0, 0, 0]]
# summed [[9, 2, 0], [0, 4, 0], [1, 0, 1]]:
#   IoU 0 = 9 / (11 + 10 - 9) = 3/4, IoU 1 = 4 / (4 + 6 - 4) = 2/3, IoU 2 = 1 / (2 + 1 - 1) = 1/2
#   mIoU = (3/4 + 2/3 + 1/2) / 3 = 23/36 = 0.63889; pixel accuracy = 14/17
# per image: A (2/4, 3/4, 1/2) -> 7/12; B (7/8, 1/2, class 2 in neither: left out) -> 11/16;
#   their mean 61/96 = 0.63542 is not the split's mIoU.
SPEC = LabelSpec((0, 1, 2), ignore=255)


def test_matrix_miou_and_pixel_accuracy_by_hand():
    a = confusion_matrix(PRED_A, REF_A, [0, 1, 2], ignore=255)
    b = confusion_matrix(PRED_B, REF_B, [0, 1, 2], ignore=255)
    assert a.tolist() == MATRIX_A and b.tolist() == MATRIX_B
    total = a + b
    np.testing.assert_allclose(iou_per_class(total), [3 / 4, 2 / 3, 1 / 2])
    assert mean_iou(total) == pytest.approx(23 / 36)
    assert mean_iou(total, skip_background=True) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert pixel_accuracy(total) == pytest.approx(14 / 17)
    assert np.isnan(iou_per_class(b)[2]) and mean_iou(b) == pytest.approx(11 / 16)  # Cityscapes: NaN skipped


def test_the_split_miou_is_not_the_mean_of_per_image_mious():
    block = dataset_scores([confusion_matrix(p, r, [0, 1, 2], ignore=255) for p, r in
                            ((PRED_A, REF_A), (PRED_B, REF_B))], [0, 1, 2], {1: "a", 2: "b"})
    assert block["mean_iou"] == pytest.approx(23 / 36)
    assert block["mean_of_image_mean_iou"] == pytest.approx((7 / 12 + 11 / 16) / 2)  # 61/96
    assert block["mean_iou"] - block["mean_of_image_mean_iou"] == pytest.approx(23 / 36 - 61 / 96)  # 0.00347
    assert block["names"] == ["background", "a", "b"] and block["confusion_matrix"] == [[9, 2, 0], [0, 4, 0], [1, 0, 1]]


def test_a_value_that_is_no_class_counts_as_background_and_shapes_must_agree():
    # reference 1 1, prediction 0 9: the 9 is background, so both pixels are class 1 predicted 0
    assert confusion_matrix(np.array([0, 9]), np.array([1, 1]), [0, 1]).tolist() == [[0, 0], [2, 0]]
    with pytest.raises(ValueError, match=r"prediction shape \(2,\) differs from reference shape \(3,\)"):
        confusion_matrix(np.zeros(2), np.zeros(3), [0, 1])


def _write(folder, name, array):
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array.T.astype(np.uint8)), str(folder / name))


def test_evaluate_prints_and_writes_the_dataset_block_beside_its_tables(tmp_path, capsys):
    for name, pred, ref in (("a", PRED_A, REF_A), ("b", PRED_B, REF_B)):
        _write(tmp_path / "pred", f"{name}.png", pred)
        _write(tmp_path / "ref" / "labels", f"{name}.png", ref)
    (tmp_path / "ref" / "dataset.json").write_text(json.dumps(  # nnU-Net v2 labels with an ignore label
        {"labels": {"background": 0, "one": 1, "two": 2, "ignore": 255}, "channel_names": {"0": "x"}}))
    targets, scores = score_folders(tmp_path / "pred", tmp_path / "ref" / "labels", spec=SPEC)
    assert dataset_block(targets, scores)["mean_iou"] == pytest.approx(23 / 36)
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref" / "labels"),
                 "--out", str(tmp_path / "m.csv")]) == 0
    out = capsys.readouterr().out
    assert "mean IoU 0.6389" in out and "pixel accuracy 0.8235" in out and "one 0.6667" in out
    with open(tmp_path / "m.csv", newline="") as handle:  # the per-case table keeps its rows
        assert {r["case"] for r in csv.DictReader(handle)} == {"a", "b", "mean"}
    with open(tmp_path / "m_dataset.csv", newline="") as handle:  # the split's block beside it
        rows = list(csv.DictReader(handle))
    assert [(r["label"], float(r["iou"])) for r in rows[:3]] == [("0", 0.75), ("1", pytest.approx(2 / 3)), ("2", 0.5)]
    assert float(rows[3]["iou"]) == pytest.approx(23 / 36) and float(rows[3]["pixel_accuracy"]) == pytest.approx(14 / 17)
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref" / "labels"),
                 "--out", str(tmp_path / "s.json")]) == 0
    assert "dataset" not in json.loads((tmp_path / "s.json").read_text())  # nnU-Net's summary.json, as it is
    block = json.loads((tmp_path / "s_dataset.json").read_text())
    assert block["mean_iou"] == pytest.approx(23 / 36) and block["iou"]["2"] == 0.5
    assert block["confusion_matrix"] == [[9, 2, 0], [0, 4, 0], [1, 0, 1]]


def test_cross_validation_report_shows_the_miou_of_the_folds_summed_matrices(tmp_path):
    from medseg.evaluation.confusion import folds_block
    from medseg.evaluation.report import write_report

    spec = LabelSpec((0, 1, 4), ("background", "one", "four"))  # class indices 0, 1, 2 are values 0, 1, 4
    block = folds_block([{"confusion": MATRIX_A}, {"confusion": MATRIX_B}], spec)  # fold 0 = image A, fold 1 = B
    assert block["iou"] == {0: 0.75, 1: pytest.approx(2 / 3), 4: 0.5} and block["mean_iou"] == pytest.approx(23 / 36)
    assert folds_block([{"confusion": MATRIX_A}, {"confusion": None}], spec) is None  # a fold of regions
    rows = [{"fold": 0, "case": "a", "label": 1, "dice": 0.5}]
    written = write_report(tmp_path, rows, plots=False, dataset=block)
    report = written[-1].read_text()
    assert "Mean IoU 0.6389" in report and "pixel accuracy 0.8235" in report and "| four | 0.5 |" in report
    assert json.loads((tmp_path / "dataset.json").read_text())["mean_iou"] == pytest.approx(23 / 36)
