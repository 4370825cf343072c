"""Tests of the loss API: target formats, the registry, argument and input checks, compound
losses and their schedules, and the data-loader precompute path against the slow path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loss_cases import COMPOUNDS, SHAPES, C, make_batch

from medseg.losses import (
    LOSSES,
    BoundaryLoss,
    CompoundLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    GeneralizedDiceLoss,
    HausdorffDTLoss,
    LinearSchedule,
    Loss,
    LovaszSoftmaxLoss,
    SensitivitySpecificityLoss,
    TopKLoss,
    TverskyLoss,
    create_loss,
)

# ---- inputs, registry, gradients --------------------------------------------------------------


def test_target_formats_agree(batch):
    logits, labels = batch
    loss = create_loss("dice+ce+boundary", weights=[1.0, 1.0, 1.0])
    reference = loss(logits, labels)
    for target in (labels[:, None], labels.to(torch.uint8), labels.int(), labels.float()):
        assert torch.equal(loss(logits, target), reference)


@pytest.mark.parametrize("name", sorted(LOSSES) + COMPOUNDS)
@pytest.mark.parametrize("dims", sorted(SHAPES))
def test_registry_builds_runs_and_backpropagates(name, dims):
    logits, labels = make_batch(SHAPES[dims], seed=1)
    logits.requires_grad_(True)
    loss = create_loss(name)
    assert isinstance(loss, Loss)
    loss.set_epoch(20)
    value = loss(logits, labels)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"Did you mean 'dice'\?.*Valid choices: boundary, ce, dice"
    ):
        create_loss("dicee")
    with pytest.raises(ValueError, match="Unknown loss name 'nope'"):
        create_loss("dice+nope")
    with pytest.raises(ValueError, match="repeats"):
        create_loss("dice+dice")
    with pytest.raises(ValueError, match=r"arguments \['smooth'\]"):
        create_loss("dice+ce", smooth=1.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        create_loss("dice", alpha=1.0)


def test_create_loss_routes_arguments():
    loss = create_loss(
        "tversky+ce", tversky={"alpha": 0.1, "beta": 0.9}, ce={"weight": [1, 2, 3]}, weights=[2, 1]
    )
    assert loss.losses[0].alpha == 0.1 and loss.losses[1].weight.tolist() == [1, 2, 3]
    assert loss.current_weights() == [2.0, 1.0]
    assert create_loss("Generalized-Dice").__class__ is GeneralizedDiceLoss


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: DiceLoss(smooth=-1.0), "smooth must be >= 0"),
        (lambda: DiceLoss(batch="yes"), "batch must be True or False"),
        (lambda: TverskyLoss(alpha=-0.1), "alpha must be >= 0"),
        (lambda: SensitivitySpecificityLoss(r=1.5), r"r must lie in \[0, 1\]"),
        (lambda: GeneralizedDiceLoss(weight_type="cube"), "weight_type"),
        (lambda: CrossEntropyLoss(weight=[1.0, -1.0]), "weight must hold"),
        (lambda: FocalLoss(alpha=1.5), "alpha must lie"),
        (lambda: FocalLoss(gamma=float("nan")), "gamma must be a finite number"),
        (lambda: TopKLoss(k=0), "k must be > 0"),
        (lambda: TopKLoss(k=150), "percentage"),
        (lambda: HausdorffDTLoss(alpha=0), "alpha must be > 0"),
        (lambda: LovaszSoftmaxLoss(classes="some"), "Unknown classes 'some'"),
        (lambda: LovaszSoftmaxLoss(classes=[-1]), "indices >= 0"),
        (lambda: LinearSchedule(1.0, 0.0, step=0.0), "step must be > 0"),
        (lambda: CompoundLoss([DiceLoss()], [1.0, 2.0]), "one entry per loss"),
        (lambda: DiceLoss().set_epoch(-1), "epoch must be an integer >= 0"),
    ],
)
def test_bad_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_inputs_raise(batch):
    logits, labels = batch
    with pytest.raises(ValueError, match="target shape"):
        DiceLoss()(logits, labels[:, :-1])
    with pytest.raises(ValueError, match=r"target values must lie in \[0, 2\]"):
        DiceLoss()(logits, labels + 1)
    with pytest.raises(ValueError, match="non-integer"):
        DiceLoss()(logits, labels.float() + 0.5)
    with pytest.raises(ValueError, match="weight has 2 entries"):
        CrossEntropyLoss(weight=[1.0, 2.0])(logits, labels)
    with pytest.raises(ValueError, match="classes"):
        LovaszSoftmaxLoss(classes=[3])(logits, labels)
    with pytest.raises(ValueError, match="extra 'signed_distance' must have shape"):
        BoundaryLoss()(logits, labels, signed_distance=torch.zeros(2, C))
    with pytest.raises(ValueError, match="spacing must hold"):
        BoundaryLoss().precompute(labels[0].numpy(), C, spacing=(1.0,))
    with pytest.raises(TypeError):
        DiceLoss() * DiceLoss()


# ---- compound losses and schedules ------------------------------------------------------------


def test_compound_arithmetic_is_the_weighted_sum(batch):
    logits, labels = batch
    dice, ce, focal = DiceLoss(), CrossEntropyLoss(), FocalLoss()
    d, c, f = dice(logits, labels), ce(logits, labels), focal(logits, labels)
    cases = {
        0.5 * dice + ce: 0.5 * d + c,
        dice * 0.5 + ce * 2: 0.5 * d + 2 * c,
        sum([dice, ce, focal]): d + c + f,
        3 * (dice + 0.5 * ce): 3 * (d + 0.5 * c),
        (dice + ce) + (2 * focal): d + c + 2 * f,
    }
    for loss, expected in cases.items():
        assert isinstance(loss, CompoundLoss)
        assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert (0.5 * dice + ce).current_weights() == [0.5, 1.0]


def test_kervadec_schedule_shifts_weight_to_the_boundary_term(batch):
    logits, labels = batch
    loss = create_loss("dice+boundary")
    d, b = DiceLoss()(logits, labels).item(), BoundaryLoss()(logits, labels).item()
    for epoch, a in [(0, 1.0), (10, 0.9), (50, 0.5), (99, 0.01), (500, 0.01)]:
        loss.set_epoch(epoch)
        assert loss.current_weights() == pytest.approx([a, 1 - a])
        assert loss(logits, labels).item() == pytest.approx(a * d + (1 - a) * b, rel=1e-5, abs=1e-7)


def test_set_epoch_reaches_nested_parts():
    inner = CompoundLoss([DiceLoss(), CrossEntropyLoss()], [LinearSchedule(0.0, 1.0, 0.25), 1.0])
    outer = 2 * inner
    outer.set_epoch(2)
    assert inner.epoch == 2 and inner.current_weights() == [0.5, 1.0]
    plain = DiceLoss()
    plain.set_epoch(3)  # a no-op for the value
    assert plain.epoch == 3


# ---- precompute (data-loader) path equals the slow path ---------------------------------------


@pytest.mark.parametrize("dims", sorted(SHAPES))
@pytest.mark.parametrize("spacing", [None, "aniso"])
def test_precomputed_extras_equal_the_slow_path(dims, spacing):
    logits, labels = make_batch(SHAPES[dims], seed=2)
    spacing = None if spacing is None else (0.7, 2.0, 1.3)[: len(SHAPES[dims])]
    loss = create_loss("dice+boundary+hausdorff+dpce", weights=[1.0, 1.0, 1.0, 1.0])
    per_sample = [loss.precompute(y.numpy(), C, spacing) for y in labels]
    assert sorted(per_sample[0]) == [
        "penalty_weight",
        "signed_distance",
        "spacing",
        "target_distance",
    ]
    assert all(a.dtype == np.float32 for a in per_sample[0].values())
    extras = {k: torch.from_numpy(np.stack([s[k] for s in per_sample])) for k in per_sample[0]}
    slow_extras = {} if spacing is None else {"spacing": torch.tensor([spacing] * 2)}
    for part in [*loss.losses, loss]:
        fast, slow = part(logits, labels, **extras), part(logits, labels, **slow_extras)
        assert fast.item() == pytest.approx(slow.item(), rel=1e-6), type(part).__name__
    # plain losses have nothing to precompute and ignore extras
    assert DiceLoss().precompute(labels[0].numpy(), C) == {}
    assert DiceLoss()(logits, labels, **extras) == DiceLoss()(logits, labels)
