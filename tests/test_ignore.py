"""The ignore label (IGNORE_INDEX inside medseg) through the pipeline, with numbers worked out by
hand: never a foreground location to centre a patch on, no part of any loss (changing the
logits of ignored voxels changes no registered loss), no part of any metric, never predicted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from loss_cases import COMPOUNDS, C, make_batch

from medseg.evaluation.confusion import confusion_matrix
from medseg.evaluation.metrics import METRIC_NAMES, compute_metrics
from medseg.inference.postprocess import to_label_values
from medseg.io import IGNORE_INDEX, LabelSpec
from medseg.losses import LOSSES, create_loss
from medseg.preprocessing.cache import _foreground
from medseg.sampling import PatchSampler

# --- sampling ------------------------------------------------------------------------------------


def test_ignored_voxels_are_no_foreground_location_and_no_patch_centre():
    label = np.array([[0, 1, -1, -1],
                      [0, 0, -1, -1],
                      [2, 0, 0, 0],
                      [0, 0, 0, 1]])
    found = _foreground(label, seed=0)
    # class 1 at (0, 1) and (3, 3), class 2 at (2, 0); the four ignored voxels are no class
    assert sorted(found) == ["class_1", "class_2"]
    assert found["class_1"].tolist() == [[0, 1], [3, 3]] and found["class_2"].tolist() == [[2, 0]]
    sampler = PatchSampler(patch_size=(1, 1), foreground_ratio=1.0)
    rng = np.random.default_rng(0)
    locations = {1: found["class_1"], 2: found["class_2"]}
    centres = {sampler.draw_start(label.shape, locations, rng)[0] for _ in range(200)}
    assert centres == {(0, 1), (3, 3), (2, 0)}  # a 1x1 patch starts at its centre: never an ignored voxel
    assert _foreground(np.full((3, 3), -1), seed=0) == {}  # all ignored: only random patches


# --- losses --------------------------------------------------------------------------------------


def test_cross_entropy_and_dice_by_hand():
    # three voxels, two classes; logits (ln 3, 0) give softmax (3/4, 1/4)
    ln3 = math.log(3.0)
    logits = torch.tensor([[[ln3, 0.0, 7.0], [0.0, ln3, -4.0]]])  # (B=1, C=2, 3 voxels)
    labels = torch.tensor([[0, 1, IGNORE_INDEX]])
    # CE over the two kept voxels: each -ln(3/4) = 0.2876821
    assert create_loss("ce")(logits, labels).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    # Dice per class over the kept voxels: class 0 p = (3/4, 1/4), target (1, 0): 2 * 3/4 / (1 + 1) = 3/4;
    # class 1 the same; loss = 1 - mean(3/4, 3/4) = 0.25 (up to the 1e-5 smoothing)
    assert create_loss("dice")(logits, labels).item() == pytest.approx(0.25, abs=1e-5)
    # counted as class 0, the third voxel (p0 = 1 - 1.7e-5) would bring CE to (2 * 0.2877 + 0.0000167) / 3
    counted = create_loss("ce")(logits, torch.tensor([[0, 1, 0]])).item()
    assert counted == pytest.approx((2 * -math.log(0.75) - math.log(torch.softmax(logits, 1)[0, 0, 2].item())) / 3)


@pytest.mark.parametrize("name", sorted(LOSSES) + COMPOUNDS)
def test_changing_the_logits_of_ignored_voxels_changes_no_loss(name):
    logits, labels = make_batch((5, 6), seed=7)
    labels[:, 1:3, 2:5] = IGNORE_INDEX  # a 2x3 block inside each image
    changed = logits.clone()
    changed[:, :, 1:3, 2:5] = torch.randn(2, C, 2, 3, generator=torch.Generator().manual_seed(1)) * 10
    loss = create_loss(name)
    loss.set_epoch(20)
    assert loss(changed, labels).item() == pytest.approx(loss(logits, labels).item(), rel=1e-5, abs=1e-6), name


# --- metrics -------------------------------------------------------------------------------------


def test_whatever_is_predicted_at_ignored_voxels_changes_no_metric():
    reference = np.zeros((12, 12), np.int64)
    reference[3:8, 3:8] = 1
    reference[0:3, 9:12] = 255  # ignored
    prediction = np.zeros_like(reference)
    prediction[4:9, 3:8] = 1
    other = prediction.copy()
    other[0:3, 9:12] = 1  # paint the ignored block
    for metric in METRIC_NAMES:
        a = compute_metrics(prediction, reference, labels=[1], ignore=255)[1][metric]
        b = compute_metrics(other, reference, labels=[1], ignore=255)[1][metric]
        assert a == pytest.approx(b, nan_ok=True), metric
    # by hand: TP 20 (rows 4..7), FP 5 (row 8), FN 5 (row 3), TN 144 - 9 ignored - 30 = 105
    assert compute_metrics(other, reference, labels=[1], ignore=255)[1]["dice"] == pytest.approx(40 / 50)
    matrix = confusion_matrix(other, reference, [0, 1], ignore=255)
    assert matrix.tolist() == [[105, 5], [5, 20]]


# --- prediction ----------------------------------------------------------------------------------


def test_the_ignore_value_is_never_predicted():
    spec = LabelSpec((0, 1, 4), ignore=3)
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(3), size=(6, 7)).transpose(2, 0, 1)  # (3 classes, 6, 7)
    values = to_label_values(probabilities, spec)
    assert set(np.unique(values).tolist()) <= {0, 1, 4}
    # the argmax by hand: channel 2 is the dataset value 4, never 3
    assert np.array_equal(values, np.asarray((0, 1, 4))[probabilities.argmax(0)])
    assert spec.decode(np.array([IGNORE_INDEX, 0, 2])).tolist() == [0, 0, 4]  # an ignore index writes 0
