"""The IoU-balanced losses (Wu et al.) against the formulas worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medseg.losses import LOSSES, create_loss, loss_config, loss_from_config
from medseg.losses.iou_balanced import (
    IoUBalancedClassificationLoss,
    IoUBalancedLocalisationLoss,
    iou_balanced_classification_loss,
    iou_balanced_localisation_loss,
)

LN3 = math.log(3.0)


def _three_anchors():
    """A: positive, IoU 0.9, p = (1/2, 1/2) -> CE ln 2; B: positive, IoU 0.6, p = (3/4, 1/4) ->
    CE ln 4; C: negative, p = (3/4, 1/4) -> CE ln 4/3."""
    logits = torch.tensor([[0.0, 0.0], [LN3, 0.0], [LN3, 0.0]], dtype=torch.float64, requires_grad=True)
    ious = torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64, requires_grad=True)
    return logits, torch.tensor([1, 1, 0]), ious


def test_softmax_classification_by_hand():
    logits, labels, ious = _three_anchors()
    loss = iou_balanced_classification_loss(logits, labels, ious, eta=1.5)
    ce_a, ce_b, ce_c = math.log(2), math.log(4), math.log(4 / 3)
    z = (ce_a + ce_b) / (0.9**1.5 * ce_a + 0.6**1.5 * ce_b)
    w_a, w_b = 0.9**1.5 * z, 0.6**1.5 * z
    assert w_a > 1 > w_b  # the well-localised positive is up-weighted
    expected = (w_a * ce_a + w_b * ce_b + ce_c) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert loss.item() == pytest.approx((ce_a + ce_b + ce_c) / 3, abs=1e-12)  # positives' total unchanged
    loss.backward()
    # d CE / d logits = softmax - one-hot, scaled by the detached weight and the mean's 1/3
    expected_grad = torch.tensor([[0.5 * w_a, -0.5 * w_a], [0.75 * w_b, -0.75 * w_b], [-0.25, 0.25]], dtype=torch.float64) / 3
    assert torch.allclose(logits.grad, expected_grad, atol=1e-12)
    assert ious.grad is None  # no gradient into the IoU weights


def test_sigmoid_classification_by_hand():
    # 2 foreground classes; zero logits: every entry's BCE is ln 2, sigmoid - target = 1/2 or -1/2
    logits = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 2, 0])
    ious = torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64)
    loss = iou_balanced_classification_loss(logits, labels, ious, eta=1.5, form="sigmoid")
    ln2 = math.log(2)
    z = 2 * ln2 / (0.9**1.5 * ln2 + 0.6**1.5 * ln2)
    w_a, w_b = 0.9**1.5 * z, 0.6**1.5 * z
    assert loss.item() == pytest.approx((w_a * ln2 + w_b * ln2 + 4 * ln2) / 2, abs=1e-12)  # / 2 positives
    loss.backward()
    expected_grad = torch.tensor([[-0.5 * w_a, 0.5], [0.5, -0.5 * w_b], [0.5, 0.5]], dtype=torch.float64) / 2
    assert torch.allclose(logits.grad, expected_grad, atol=1e-12)


def test_sigmoid_focal_form():
    logits = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    got = iou_balanced_classification_loss(logits, torch.tensor([1]), torch.tensor([0.7]), eta=0.0, form="sigmoid",
                                           gamma=2.0, alpha=0.25)
    p = torch.sigmoid(logits)[0]
    expected = 0.25 * (1 - p[0]) ** 2 * -math.log(p[0]) + 0.75 * p[1] ** 2 * -math.log(1 - p[1])
    assert got.item() == pytest.approx(float(expected), abs=1e-12)


def test_eta_zero_is_plain_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(10, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 0, 2, -1, 1, 0])
    ious = torch.rand(10)
    loss = iou_balanced_classification_loss(logits, labels, ious, eta=0.0)
    plain = F.cross_entropy(logits, labels, ignore_index=-1)
    assert torch.allclose(loss, plain, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, logits)
    (plain_grad,) = torch.autograd.grad(plain, logits)
    assert torch.allclose(grad, plain_grad, atol=1e-7)


def test_localisation_by_hand():
    pred = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0.5, 0, 0, 0], [2.0, 0, 0, -1.0], [0.0, 0, 0, 0]], dtype=torch.float64)
    ious = torch.tensor([0.81, 0.64, 0.5], dtype=torch.float64, requires_grad=True)
    loss = iou_balanced_localisation_loss(pred, target, ious, lam=1.5, beta=1.0)
    # smooth L1 (beta 1): 0.5 * 0.5^2 = 0.125; (2 - 0.5) + (1 - 0.5) = 2; 0
    # weights 0.81^1.5 = 0.729, 0.64^1.5 = 0.512; no renormalisation; mean over 3 boxes
    assert loss.item() == pytest.approx((0.729 * 0.125 + 0.512 * 2.0) / 3, abs=1e-12)
    loss.backward()
    expected_grad = torch.zeros(3, 4, dtype=torch.float64)
    expected_grad[0, 0] = -0.729 * 0.5 / 3  # d/dp 0.5 (p - t)^2 at p - t = -0.5
    expected_grad[1, 0], expected_grad[1, 3] = -0.512 / 3, 0.512 / 3
    assert torch.allclose(pred.grad, expected_grad, atol=1e-12)
    assert ious.grad is None
    beta_ninth = iou_balanced_localisation_loss(torch.zeros(1, 4), torch.tensor([[0.1, 0.2, 0, 0]]), torch.tensor([1.0]))
    assert beta_ninth.item() == pytest.approx(0.5 * 0.01 * 9 + (0.2 - 0.5 / 9), abs=1e-6)
    assert iou_balanced_localisation_loss(pred, target, ious, lam=0.0, beta=1.0).item() == pytest.approx(2.125 / 3)


def test_empty_and_registry():
    empty = torch.zeros(0, 3, requires_grad=True)
    assert iou_balanced_classification_loss(empty, torch.zeros(0, dtype=torch.long), torch.zeros(0)).item() == 0
    assert iou_balanced_localisation_loss(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0)).item() == 0
    loss = create_loss("iou_balanced_ce", eta=1.0, form="sigmoid")
    assert isinstance(loss, IoUBalancedClassificationLoss) and loss.eta == 1.0 and loss.form == "sigmoid"
    assert isinstance(create_loss("iou_balanced_smooth_l1"), IoUBalancedLocalisationLoss)
    assert loss_from_config(loss_config(loss)).form == "sigmoid"
    assert "iou_balanced_ce" not in LOSSES  # LOSSES holds the (logits, label map) losses only
    logits, labels, ious = _three_anchors()
    assert loss(logits[:, 1:], labels, ious).item() > 0


def test_errors():
    with pytest.raises(ValueError, match="eta"):
        IoUBalancedClassificationLoss(eta=-1)
    with pytest.raises(ValueError, match="form"):
        IoUBalancedClassificationLoss(form="softmx")
    with pytest.raises(ValueError, match="target values"):
        iou_balanced_classification_loss(torch.zeros(2, 2), torch.tensor([0, 2]), torch.ones(2))
    with pytest.raises(ValueError, match="ious"):
        iou_balanced_localisation_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.ones(3))
    with pytest.raises(ValueError, match="beta"):
        IoUBalancedLocalisationLoss(beta=0)
