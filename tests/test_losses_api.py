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


# ---- the ignore label: left out of every loss ----------------------------------------------------

IGNORE = -1  # medseg.io.labels.IGNORE_INDEX


def _slab_batch(dims: str, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch whose last two rows of the first spatial axis are ignored, and the same batch with
    those rows cut off (the reference: a loss must not see ignored voxels at all)."""
    spatial = tuple(s + 2 if i == 0 else s for i, s in enumerate(SHAPES[dims]))
    logits, labels = make_batch(spatial, seed=seed)
    labels[:, -2:] = IGNORE
    return logits, labels, logits[:, :, :-2].clone(), labels[:, :-2].clone()


@pytest.mark.parametrize("name", sorted(LOSSES) + COMPOUNDS)
@pytest.mark.parametrize("dims", sorted(SHAPES))
def test_ignored_voxels_add_nothing_to_value_or_gradient(name, dims):
    logits, labels, cropped_logits, cropped_labels = _slab_batch(dims)
    loss = create_loss(name)
    loss.set_epoch(20)
    logits.requires_grad_(True)
    value = loss(logits, labels)
    value.backward()
    expected = loss(cropped_logits, cropped_labels)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6), name
    assert torch.all(logits.grad[:, :, -2:] == 0), name  # exactly zero where ignored
    assert logits.grad[:, :, :-2].abs().sum() > 0, name


@pytest.mark.parametrize("dims", sorted(SHAPES))
def test_ignored_voxels_in_precomputed_maps(dims):
    logits, labels, cropped_logits, cropped_labels = _slab_batch(dims, seed=4)
    loss = create_loss("boundary+hausdorff+dpce", weights=[1.0, 1.0, 1.0])
    per_sample = [loss.precompute(y.numpy(), C) for y in labels]
    extras = {k: torch.from_numpy(np.stack([s[k] for s in per_sample])) for k in per_sample[0]}
    assert np.all(extras["signed_distance"].numpy()[:, :, -2:] == 0)
    assert np.all(extras["target_distance"].numpy()[:, :, -2:] == 0)
    for part in loss.losses:
        fast, reference = part(logits, labels, **extras), part(cropped_logits, cropped_labels)
        assert fast.item() == pytest.approx(reference.item(), rel=1e-5), type(part).__name__


def test_ignore_by_hand_cross_entropy_and_dice():
    logits = torch.tensor([[[2.0, 0.0, -1.0, 5.0]], [[0.0, 1.0, 1.0, -5.0]]]).permute(1, 0, 2)  # (1, 2, 4)
    labels = torch.tensor([[0, 1, IGNORE, IGNORE]])
    p = torch.softmax(logits, dim=1)[0]
    ce = -(torch.log(p[0, 0]) + torch.log(p[1, 1])) / 2
    assert create_loss("ce")(logits, labels).item() == pytest.approx(ce.item(), rel=1e-6)
    weighted = -(0.5 * torch.log(p[0, 0]) + 2.0 * torch.log(p[1, 1])) / 2.5
    assert CrossEntropyLoss(weight=[0.5, 2.0])(logits, labels).item() == pytest.approx(weighted.item(), rel=1e-6)
    dice1 = 1 - (2 * p[1, 1] + 1e-5) / (p[1, 0] + p[1, 1] + 1 + 1e-5)  # class 1 over voxels 0 and 1 only
    dice0 = 1 - (2 * p[0, 0] + 1e-5) / (p[0, 0] + p[0, 1] + 1 + 1e-5)
    assert DiceLoss()(logits, labels).item() == pytest.approx(((dice0 + dice1) / 2).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["ce", "dice+ce", "focal", "topk", "lovasz", "region_dice+region_bce"])
def test_an_all_ignored_batch_is_a_finite_zero_gradient(name):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    value = create_loss(name)(logits, torch.full((2, 4, 4), IGNORE))
    value.backward()
    assert torch.isfinite(value) and torch.all(logits.grad == 0)


def test_ignore_index_matches_io_and_other_negatives_raise():
    from medseg.io.labels import IGNORE_INDEX
    from medseg.losses.base import IGNORE_INDEX as LOSS_IGNORE

    assert LOSS_IGNORE == IGNORE_INDEX == IGNORE
    with pytest.raises(ValueError, match=r"\[0, 2\] \(or -1: ignored\), got \[-2, 1\]"):
        DiceLoss()(torch.randn(1, 3, 2, 2), torch.tensor([[[-2, 0], [1, 1]]]))


# ---- region (sigmoid) losses ----------------------------------------------------------------------


def test_region_losses_by_hand():
    from medseg.losses import RegionBCELoss, RegionDiceLoss, create_region_loss

    regions = [(1, 2), (2,)]
    logits = torch.tensor([[[1.0, -1.0, 2.0, 0.5]], [[-2.0, 0.0, 3.0, 1.0]]]).permute(1, 0, 2)  # (1, 2, 4)
    labels = torch.tensor([[0, 1, 2, IGNORE]])
    masks = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])  # whole, core over the 3 kept voxels
    kept = logits[0, :, :3]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(kept, masks)
    assert RegionBCELoss(regions=regions)(logits, labels).item() == pytest.approx(bce.item(), rel=1e-6)
    p = torch.sigmoid(kept)
    dice = 1 - ((2 * (p * masks).sum(1) + 1e-5) / (p.sum(1) + masks.sum(1) + 1e-5)).mean()
    assert RegionDiceLoss(regions=regions)(logits, labels).item() == pytest.approx(dice.item(), rel=1e-6)
    both = create_region_loss("region_dice+region_bce", regions)
    assert both(logits, labels).item() == pytest.approx((dice + bce).item(), rel=1e-6)
    assert [part.regions for part in both.losses] == [((1, 2), (2,))] * 2


def test_region_losses_refuse_mismatches():
    from medseg.losses import RegionDiceLoss, create_region_loss, loss_activation

    with pytest.raises(ValueError, match=r"\['dice'\] train softmax class outputs.*region_dice\+region_bce"):
        create_region_loss("dice+region_bce", [(1,), (2,)])
    with pytest.raises(ValueError, match="3 channels but the loss has 2 regions"):
        RegionDiceLoss(regions=[(1,), (2,)])(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="regions must be non-empty"):
        RegionDiceLoss(regions=[(0, 1)])
    assert loss_activation(create_loss("region_dice+region_bce")) == "sigmoid"
    assert loss_activation(create_loss("dice+ce")) == "softmax"
    with pytest.raises(ValueError, match="mixes region"):
        loss_activation(create_loss("dice+region_bce"))
