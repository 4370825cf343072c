"""evaluate_instances: folders of instance predictions scored against instance datasets, by hand
and against the metrics computed directly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import DataError
from medseg.evaluation.average_precision import coco_ap
from medseg.evaluation.instance_folders import evaluate_instances
from medseg.evaluation.instance_metrics import instance_dice, matching
from medseg.instances.encoding import decode
from medseg.io import (
    FolderDataset,
    Geometry,
    MSDDataset,
    as_instances,
    write_instances,
    write_label_file,
)
from tests.conftest import hippocampus_subset

# --- evaluate_instances: folders of predictions against instance datasets ------------------------



def _png(array_xy: np.ndarray, path: Path) -> None:
    write_label_file(array_xy.astype(np.uint8), Geometry.from_spacing(array_xy.shape), path)


def _nuclei(root: Path) -> FolderDataset:
    """2D instance maps with class sidecars (values 2 and 5): a = ids 3 (class 2), 8 (class 5),
    touching, one at the border; b = ids 1 (class 5), 2 (class 2); c = empty."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    a, b = np.zeros((7, 5), int), np.zeros((7, 5), int)
    a[0:3, 0:2], a[3:5, 0:2] = 3, 8
    b[1:3, 1:4], b[5:7, 3:5] = 1, 2
    for case, label in (("a", a), ("b", b), ("c", np.zeros((7, 5), int))):
        _png(label * 20 + 10, root / "images" / f"{case}.png")
        _png(label, root / "labels" / f"{case}.png")
    (root / "labels" / "a.json").write_text(json.dumps({"3": 2, "8": 5}))
    (root / "labels" / "b.json").write_text(json.dumps({"1": 5, "2": 2}))
    return FolderDataset(root)


def test_evaluate_instances_2d_by_hand(tmp_path):
    data = as_instances(_nuclei(tmp_path / "nuclei"))
    out = tmp_path / "pred"
    # a: the reference itself, through write_instances (scores 0.9 for id 3, 0.8 for id 8)
    write_instances(data.load("a").label, data.load("a").geometry, out, "a", data.semantic_spec,
                    scores={1: 0.9, 2: 0.8})
    # b: both objects exact, but the second (reference class 2) predicted as class 5
    b = np.zeros((7, 5), int)
    b[1:3, 1:4], b[5:7, 3:5] = 1, 2
    _png(b, out / "b.png")
    (out / "b.json").write_text(json.dumps({"instances": [{"id": 1, "class": 5, "score": 1.0},
                                                          {"id": 2, "class": 5, "score": 0.95}]}))
    # c: one false positive of class 1, which no reference has (score 1: no score in its sidecar);
    # without the sidecar it could take no class, as the references have two
    c = np.zeros((7, 5), int)
    c[6, 4] = 4
    _png(c, out / "c.png")
    (out / "c.json").write_text(json.dumps({"4": 1}))
    result = evaluate_instances(out, tmp_path / "nuclei", output=tmp_path / "scores")
    rows = {row["case"]: row for row in result["cases"]}
    assert result["mode"] == "map" and result["classes"] == {2: "class_2", 5: "class_5"}
    assert (rows["a"]["tp"], rows["a"]["fp"], rows["a"]["fn"], rows["a"]["panoptic_quality"]) == (2, 0, 0, 1.0)
    assert (rows["b"]["tp"], rows["b"]["fp"], rows["b"]["fn"]) == (1, 1, 1)  # the class 5 / class 2 pair
    assert rows["b"]["accuracy"] == pytest.approx(1 / 3) and rows["b"]["instance_dice"] == 1.0  # classless
    assert (rows["c"]["fp"], rows["c"]["accuracy"]) == (1, 0.0) and math.isnan(rows["c"]["recall"])
    pooled = result["summary"]["pooled"][0.5]  # TP 3, FP 2, FN 1, every match IoU 1
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (3, 2, 1)
    assert pooled["accuracy"] == 0.5 and pooled["panoptic_quality"] == pytest.approx(3 / 4.5)
    # COCO, class 2: a's TP (0.9) only, 2 references -> precision 1 up to recall 0.5 (51 of 101
    # points). Class 5: b1 TP (1.0), b2 FP (0.95), a8 TP (0.8) -> precision 1 to recall 0.5,
    # then 2/3 to recall 1 (50 points). c's class 1 has no reference: left out.
    coco = result["summary"]["coco"]
    assert coco["per_class"][2]["AP"] == pytest.approx(51 / 101)
    assert coco["per_class"][5]["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert coco["AP"] == pytest.approx((51 + 51 + 50 * 2 / 3) / 202) and coco["AP75"] == coco["AP"]
    assert math.isnan(coco["per_class"][1]["AP"])
    assert result["summary"]["detection"]["box_AP10"] == pytest.approx(coco["AP"])  # IoU 1 everywhere
    # the files: a row per case then the mean, and the JSON of everything
    table = (tmp_path / "scores" / "instances.csv").read_text().splitlines()
    assert table[0].split(",")[:4] == ["case", "n_pred", "n_ref", "tp"] and table[-1].startswith("mean,")
    assert len(table) == 5 and "accuracy@0.5" in table[0]
    written = json.loads((tmp_path / "scores" / "instances.json").read_text())
    assert written["summary"]["pooled"]["0.5"]["tp"] == 3 and written["cases"][2]["recall"] == "nan"


def test_evaluate_instances_3d_components_against_direct_metrics(tmp_path):
    root = hippocampus_subset(tmp_path / "hippo")
    data = as_instances(MSDDataset(root))
    spec, out = data.semantic_spec, tmp_path / "pred"
    first, second = (data.load(case) for case in data.case_ids)
    write_instances(first.label, first.geometry, out, first.id, spec)  # perfect
    dropped = np.where(second.label == second.label.max(), 0, second.label)  # its last instance missed
    write_instances(dropped, second.geometry, out, second.id, spec, scores={1: 0.7})
    result = evaluate_instances(out, root)
    assert result["mode"] == "components"
    perfect, missed = result["cases"]
    assert perfect["accuracy"] == 1.0 and perfect["panoptic_quality"] == 1.0 and perfect["fn"] == 0
    assert (missed["tp"], missed["fp"], missed["fn"]) == (missed["n_ref"] - 1, 0, 1)
    # the same numbers computed directly from the arrays
    ref_map, classes = decode(second.label, 3)
    pred_map, pred_classes = decode(dropped, 3)
    direct = matching(pred_map, ref_map, (0.5,), pred_classes, classes)[0.5]
    assert missed["accuracy"] == direct["accuracy"] and missed["instance_dice"] == instance_dice(pred_map, ref_map)
    first_map, first_classes = decode(first.label, 3)
    cases = [(first_map, None, first_classes, first_map, first_classes),
             (pred_map, {i: 0.7 if i == 1 else 1.0 for i in pred_classes}, pred_classes, ref_map, classes)]
    assert 0 < result["summary"]["coco"]["AP"] == pytest.approx(coco_ap(cases)["AP"], abs=1e-12)
    assert result["summary"]["coco"]["AP"] < 1
    # a folder of label maps with dataset.json beside it reads the same
    again = evaluate_instances(out, root / "labelsTr")
    assert again["mode"] == "components" and again["cases"] == result["cases"]


def test_evaluate_instances_missing_predictions(tmp_path):
    root = hippocampus_subset(tmp_path / "hippo")
    data = as_instances(MSDDataset(root))
    sample = data.load("hippocampus_001")
    write_instances(sample.label, sample.geometry, tmp_path / "pred", "hippocampus_001", data.semantic_spec)
    with pytest.raises(DataError, match=r"no prediction for 1 of the 2 reference case\(s\) \['hippocampus_003'\]"):
        evaluate_instances(tmp_path / "pred", root)
    result = evaluate_instances(tmp_path / "pred", root, missing="empty")
    empty = result["cases"][1]
    assert empty["case"] == "hippocampus_003" and empty["tp"] == 0 and empty["fn"] == empty["n_ref"] > 0
    assert empty["prediction"] is None and empty["instance_dice"] == 0.0
