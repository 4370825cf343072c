"""Largest-component postprocessing chosen per class on the validation cases (nnU-Net's rule)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from medseg import InferenceConfig, Pipeline
from medseg.inference import to_label_values
from medseg.io import LabelSpec


def _reference() -> np.ndarray:
    label = np.zeros((24, 24), np.uint8)
    label[2:5, 2:5] = 1  # class 1: one 3x3 square
    label[10:12, 2:4] = 2  # class 2: two 2x2 squares, apart
    label[10:12, 18:20] = 2
    return label


def _prediction() -> np.ndarray:
    label = _reference()
    label[20, 20] = 1  # a spurious class-1 voxel far from the square
    return label


def test_to_label_values_cleans_only_the_classes_named():
    spec = LabelSpec((0, 1, 2))
    probabilities = np.eye(3, dtype=np.float32)[_prediction()].transpose(2, 0, 1)
    both = to_label_values(probabilities, spec, largest_component=True)
    only_1 = to_label_values(probabilities, spec, largest_component=(1,))
    assert both[20, 20] == 0 and (both == 2).sum() == 4  # one class-2 square removed too
    assert only_1[20, 20] == 0 and (only_1 == 2).sum() == 8 and (only_1 == 1).sum() == 9
    with pytest.raises(ValueError, match=r"\[3\] are not among the scored classes \[1, 2\]"):
        to_label_values(probabilities, spec, largest_component=(3,))


def test_largest_component_is_chosen_per_class(tmp_path, monkeypatch):
    """Cleaning class 1 removes a false voxel (Dice 18/19 -> 1); cleaning class 2 would drop one
    of its two true squares (Dice 1 -> 2/3): only class 1 is cleaned."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for case in ("a", "b"):
        sitk.WriteImage(sitk.GetImageFromArray((_reference() * 80).astype(np.uint8)), str(tmp_path / "images" / f"{case}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(_reference()), str(tmp_path / "masks" / f"{case}_mask.png"))
    pipe = Pipeline(str(tmp_path), architecture={"name": "unet", "features": [4, 8]}, device="cpu")
    predicted = pipe.data.load("a").label.copy()  # the reference as read (axes as medseg reads PNGs)
    predicted[20, 20] = 1
    probabilities = np.eye(3, dtype=np.float32)[predicted].transpose(2, 0, 1)
    monkeypatch.setattr(pipe, "_network_output", lambda sample: (probabilities, None))
    with pytest.raises(ValueError, match="give case_ids"):  # no split yet
        pipe.choose_postprocessing()
    assert pipe.choose_postprocessing(["a", "b"]) is pipe.inference
    assert pipe.inference.largest_component == (1,)
    saved = json.loads(json.dumps(pipe.inference.to_dict()))
    assert saved["largest_component"] == [1] and InferenceConfig(**saved) == pipe.inference
    labels = pipe.predict_case("a")
    assert labels[20, 20] == 0 and (labels == 2).sum() == 8
