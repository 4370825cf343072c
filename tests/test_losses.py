"""Tests of medseg.losses against values worked out apart from the code under test.

References: the papers' formulas written out in NumPy below, brute-force distances (every
voxel to every other), a Lovász extension evaluated from its set-function definition, numbers
worked out by hand on a 1 x 7 row, and MONAI's losses where their conventions match ours.
"""

from __future__ import annotations

import monai.losses as ml
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_cases import SHAPES, C, make_batch

from medseg.losses import (
    BoundaryLoss,
    CrossEntropyLoss,
    DiceLoss,
    DistancePenalizedCELoss,
    FocalLoss,
    GeneralizedDiceLoss,
    HausdorffDTLoss,
    JaccardLoss,
    LovaszSoftmaxLoss,
    SensitivitySpecificityLoss,
    TopKLoss,
    TverskyLoss,
)

# ---- NumPy references -------------------------------------------------------------------------


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def onehot(y: np.ndarray, n: int = C) -> np.ndarray:
    return np.stack([(y == c) for c in range(n)], 1).astype(np.float64)


def region_terms(logits, labels, include_background=True, batch=False):
    p, g = softmax(logits.numpy().astype(np.float64)), onehot(labels.numpy())
    if not include_background:
        p, g = p[:, 1:], g[:, 1:]
    axes = tuple(range(2, p.ndim))
    if batch:
        axes = (0, *axes)
    return p, g, axes


def brute_distance(src: np.ndarray, dst: np.ndarray, spacing) -> np.ndarray:
    """For each voxel of ``src``, the Euclidean distance to the nearest voxel of ``dst``."""
    spacing = np.ones(src.ndim) if spacing is None else np.asarray(spacing)
    points = np.argwhere(np.ones_like(src)) * spacing
    targets = np.argwhere(dst) * spacing
    d = np.sqrt(((points[:, None] - targets[None]) ** 2).sum(-1)).min(1)
    return np.where(src, d.reshape(src.shape), 0.0)


def ref_signed(mask, spacing=None):
    if not mask.any() or mask.all():
        return np.zeros(mask.shape)
    step = 1.0 if spacing is None else min(spacing)
    return brute_distance(~mask, mask, spacing) - brute_distance(mask, ~mask, spacing) + step * mask


def ref_unsigned(mask, spacing=None):
    if not mask.any() or mask.all():
        return np.zeros(mask.shape)
    return brute_distance(~mask, mask, spacing) + brute_distance(mask, ~mask, spacing)


def lovasz_by_definition(errors: np.ndarray, truth: np.ndarray) -> float:
    """Lovász extension of Delta(M) = |M| / |G u M| at ``errors``, from the set function."""
    ground = set(np.flatnonzero(truth))

    def delta(m: set) -> float:
        union = ground | m
        return len(m) / len(union) if union else 0.0

    order = np.argsort(-errors, kind="stable")
    total, chosen = 0.0, set()
    for i in order:
        before = delta(chosen)
        chosen.add(int(i))
        total += errors[i] * (delta(chosen) - before)
    return total


# ---- region losses ----------------------------------------------------------------------------


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("use_batch", [False, True])
def test_region_losses_match_formulas(batch, include_background, use_batch):
    logits, labels = batch
    p, g, axes = region_terms(logits, labels, include_background, use_batch)
    s = 1e-5
    tp, sp, sg = (p * g).sum(axes), p.sum(axes), g.sum(axes)
    fp, fn = (p * (1 - g)).sum(axes), ((1 - p) * g).sum(axes)
    expected = {
        DiceLoss: 1 - (2 * tp + s) / (sp + sg + s),
        JaccardLoss: 1 - (tp + s) / (sp + sg - tp + s),
        TverskyLoss: 1 - (tp + s) / (tp + 0.3 * fp + 0.7 * fn + s),
    }
    sq = (g - p) ** 2
    sens = (sq * g).sum(axes) / (g.sum(axes) + s)
    spec = (sq * (1 - g)).sum(axes) / ((1 - g).sum(axes) + s)
    expected[SensitivitySpecificityLoss] = 0.05 * sens + 0.95 * spec
    for cls, values in expected.items():
        loss = cls(include_background=include_background, batch=use_batch)(logits, labels)
        assert loss.item() == pytest.approx(values.mean(), rel=1e-5), cls.__name__


@pytest.mark.parametrize("use_batch", [False, True])
def test_generalized_dice_matches_sudre_with_absent_class(batch, use_batch):
    logits, labels = batch
    p, g, axes = region_terms(logits, labels, True, use_batch)
    vol = g.sum(axes)
    with np.errstate(divide="ignore"):
        w = 1.0 / vol**2
    finite_max = np.where(np.isinf(w), 0, w).max(-1, keepdims=True)
    w = np.where(np.isinf(w), finite_max, w)  # absent class: the largest weight of the sample
    assert np.isfinite(w).all() and (use_batch or (vol == 0).any())
    ratio = 2 * (w * (p * g).sum(axes)).sum(-1) / (w * (p.sum(axes) + vol)).sum(-1)
    loss = GeneralizedDiceLoss(batch=use_batch)(logits, labels)
    assert loss.item() == pytest.approx(np.mean(1 - ratio), rel=1e-4)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("use_batch", [False, True])
def test_dice_family_matches_monai(batch, include_background, use_batch):
    """MONAI conventions: softmax + one-hot inside, mean over classes and samples."""
    logits, labels = batch
    kw = dict(
        softmax=True, to_onehot_y=True, include_background=include_background, batch=use_batch
    )
    target = labels[:, None]
    pairs = [
        (DiceLoss(include_background=include_background, batch=use_batch), ml.DiceLoss(**kw)),
        (
            TverskyLoss(0.3, 0.7, include_background=include_background, batch=use_batch),
            ml.TverskyLoss(alpha=0.3, beta=0.7, **kw),
        ),
    ]
    if (
        include_background
    ):  # MONAI's GDL has no smooth-free 0/0 guard when a sample is all background
        # MONAI does not normalise the weights, so the two agree exactly only without smoothing.
        pairs.append(
            (
                GeneralizedDiceLoss(smooth=0.0, batch=use_batch),
                ml.GeneralizedDiceLoss(smooth_nr=0.0, smooth_dr=0.0, **kw),
            )
        )
    for ours, theirs in pairs:
        assert ours(logits, labels).item() == pytest.approx(theirs(logits, target).item(), rel=1e-5)


def test_generalized_dice_smooth_stays_negligible_on_large_volumes():
    """Normalised weights: a 64^3 patch with a large class scores like smooth=0 does."""
    torch.manual_seed(0)
    logits, labels = torch.randn(1, 2, 64, 64, 64), torch.randint(0, 2, (1, 64, 64, 64))
    ours, exact = (
        GeneralizedDiceLoss()(logits, labels),
        GeneralizedDiceLoss(smooth=0.0)(logits, labels),
    )
    assert ours.item() == pytest.approx(exact.item(), rel=1e-4)


def test_perfect_prediction_scores_zero():
    labels = torch.tensor([[[0, 1, 2], [2, 1, 0]]])
    logits = 50.0 * F.one_hot(labels, C).permute(0, 3, 1, 2).float()
    for cls in (DiceLoss, JaccardLoss, TverskyLoss, GeneralizedDiceLoss, LovaszSoftmaxLoss):
        assert cls()(logits, labels).item() == pytest.approx(0.0, abs=1e-5), cls.__name__


# ---- voxel-wise losses ------------------------------------------------------------------------


def test_cross_entropy_weighted_mean(batch):
    logits, labels = batch
    w = np.array([0.2, 1.0, 3.0])
    logp = np.log(softmax(logits.numpy().astype(np.float64)))
    ce = -np.take_along_axis(logp, labels.numpy()[:, None], 1)[:, 0]
    wy = w[labels.numpy()]
    expected = (wy * ce).sum() / wy.sum()
    assert CrossEntropyLoss(weight=w.tolist())(logits, labels).item() == pytest.approx(
        expected, rel=1e-5
    )
    assert CrossEntropyLoss()(logits, labels).item() == pytest.approx(ce.mean(), rel=1e-5)


@pytest.mark.parametrize("alpha", [None, 0.25, [0.1, 0.5, 0.4]])
def test_focal_matches_lin_formula_and_monai(batch, alpha):
    logits, labels = batch
    p = softmax(logits.numpy().astype(np.float64))
    py = np.take_along_axis(p, labels.numpy()[:, None], 1)[:, 0]
    if alpha is None:
        a = np.ones(C)
    elif isinstance(alpha, float):
        a = np.array([1 - alpha, alpha, alpha])
    else:
        a = np.array(alpha)
    expected = np.mean(-a[labels.numpy()] * (1 - py) ** 2 * np.log(py))
    loss = FocalLoss(gamma=2.0, alpha=alpha)(logits, labels)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # MONAI averages over the C channels too: ours = C * theirs
    theirs = ml.FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0, alpha=alpha)(
        logits, labels[:, None]
    )
    assert loss.item() == pytest.approx(C * theirs.item(), rel=1e-5)


def test_focal_gamma_zero_is_cross_entropy(batch):
    logits, labels = batch
    assert FocalLoss(gamma=0.0)(logits, labels).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6
    )


@pytest.mark.parametrize("k", [10.0, 33.0, 100.0, 0.01])
def test_topk_mean_of_hardest_voxels(batch, k):
    logits, labels = batch
    logp = np.log(softmax(logits.numpy().astype(np.float64)))
    ce = -np.take_along_axis(logp, labels.numpy()[:, None], 1).ravel()
    n = max(1, int(ce.size * k / 100))
    expected = np.sort(ce)[::-1][:n].mean()
    assert TopKLoss(k=k)(logits, labels).item() == pytest.approx(expected, rel=1e-5)


ROW = torch.tensor([[[0, 0, 0, 1, 1, 1, 1]]])  # (B=1, 1, 7): a 2D sample one row high


def test_dpce_weights_worked_by_hand():
    # region 0: depth [3, 2, 1] (max 3): phi = (3 - d) / 2 = [0, .5, 1]
    # region 1: depth [1, 2, 3, 4] (max 4): phi = (4 - d) / 3 = [1, 2/3, 1/3, 0]
    expected = np.array([[1, 1.5, 2, 2, 5 / 3, 4 / 3, 1]], dtype=np.float32)
    weight = DistancePenalizedCELoss().precompute(ROW[0].numpy(), 2)["penalty_weight"]
    np.testing.assert_allclose(weight, expected, rtol=1e-6)
    logits = torch.randn(1, 2, 1, 7)
    ce = F.cross_entropy(logits, ROW, reduction="none")
    assert DistancePenalizedCELoss()(logits, ROW).item() == pytest.approx(
        (torch.from_numpy(expected) * ce).mean().item(), rel=1e-6
    )
    # one label only: no border, plain cross-entropy
    zeros = torch.zeros_like(ROW)
    assert DistancePenalizedCELoss()(logits, zeros).item() == pytest.approx(
        F.cross_entropy(logits, zeros).item(), rel=1e-6
    )


# ---- distance losses --------------------------------------------------------------------------


def test_signed_distance_worked_by_hand():
    maps = BoundaryLoss().precompute(ROW[0].numpy(), 2)["signed_distance"]
    np.testing.assert_allclose(maps[1], [[3, 2, 1, 0, -1, -2, -3]])
    np.testing.assert_allclose(maps[0], [[-2, -1, 0, 1, 2, 3, 4]])
    # spacing (1, 0.5): distances halve; the inside step is the smallest spacing
    maps = BoundaryLoss().precompute(ROW[0].numpy(), 2, spacing=(1.0, 0.5))["signed_distance"]
    np.testing.assert_allclose(maps[1], [[1.5, 1, 0.5, 0, -0.5, -1, -1.5]])
    # an absent class (2) and a class filling the sample get zeros
    maps = BoundaryLoss().precompute(np.ones((2, 3), dtype=np.int64), 3)["signed_distance"]
    assert not maps.any()


@pytest.mark.parametrize("spacing", [None, (1.0, 2.0, 0.5)])
def test_boundary_matches_brute_force(spacing):
    logits, labels = make_batch(SHAPES["3d"])
    p, g = softmax(logits.numpy().astype(np.float64)), onehot(labels.numpy()) > 0
    sdm = np.array([[ref_signed(g[b, c], spacing) for c in range(C)] for b in range(2)])
    extras = {} if spacing is None else {"spacing": torch.tensor([spacing, spacing])}
    for include_background, start in ((False, 1), (True, 0)):
        loss = BoundaryLoss(include_background=include_background)(logits, labels, **extras)
        assert loss.item() == pytest.approx((p * sdm)[:, start:].mean(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("include_background", [False, True])
def test_boundary_matches_monai(batch, include_background):
    logits, labels = batch
    theirs = ml.BoundaryLoss(softmax=True, to_onehot_y=True, include_background=include_background)
    ours = BoundaryLoss(include_background=include_background)
    assert ours(logits, labels).item() == pytest.approx(
        theirs(logits, labels[:, None]).item(), rel=1e-5
    )


@pytest.mark.parametrize("spacing", [None, (2.0, 1.0, 0.5)])
def test_hausdorff_matches_brute_force(spacing):
    logits, labels = make_batch(SHAPES["3d"], seed=3)
    p, g = softmax(logits.numpy().astype(np.float64)), onehot(labels.numpy())
    dg = np.array([[ref_unsigned(g[b, c] > 0, spacing) for c in range(C)] for b in range(2)])
    dp = np.array([[ref_unsigned(p[b, c] > 0.5, spacing) for c in range(C)] for b in range(2)])
    terms = (p - g) ** 2 * (dg**2 + dp**2)
    extras = {} if spacing is None else {"spacing": torch.tensor([spacing, spacing])}
    loss = HausdorffDTLoss(alpha=2.0)(logits, labels, **extras)
    assert loss.item() == pytest.approx(terms[:, 1:].mean(), rel=1e-5)


@pytest.mark.parametrize("include_background", [False, True])
def test_hausdorff_matches_monai(batch, include_background):
    logits, labels = batch
    theirs = ml.HausdorffDTLoss(
        alpha=1.5, softmax=True, to_onehot_y=True, include_background=include_background
    )
    ours = HausdorffDTLoss(alpha=1.5, include_background=include_background)
    assert ours(logits, labels).item() == pytest.approx(
        theirs(logits, labels[:, None]).item(), rel=1e-5
    )


# ---- Lovász -----------------------------------------------------------------------------------


def test_lovasz_at_hard_prediction_is_one_minus_iou():
    labels = torch.tensor([[[0, 0, 1, 1], [2, 2, 1, 0]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 0, 0]]])
    logits = 60.0 * F.one_hot(pred, C).permute(0, 3, 1, 2).float()
    ious = [2 / 5, 2 / 4, 1 / 2]  # class 0: {0,1,7}&{0,5,6,7}; 1: {1,2,3}&{2,3,6}; 2: {4}&{4,5}
    loss = LovaszSoftmaxLoss()(logits, labels)
    assert loss.item() == pytest.approx(np.mean([1 - i for i in ious]), abs=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all", [1, 2]])
def test_lovasz_matches_set_function_definition(batch, per_image, classes):
    logits, labels = batch
    p, g = softmax(logits.numpy().astype(np.float64)), onehot(labels.numpy())
    chosen = range(C) if isinstance(classes, str) else classes
    groups = [(p[b : b + 1], g[b : b + 1]) for b in range(2)] if per_image else [(p, g)]
    means = []
    for gp, gg in groups:
        values = []
        for c in chosen:
            truth = gg[:, c].ravel()
            if classes == "present" and not truth.any():
                continue
            values.append(lovasz_by_definition(np.abs(truth - gp[:, c].ravel()), truth))
        means.append(np.mean(values))
    loss = LovaszSoftmaxLoss(classes=classes, per_image=per_image)(logits, labels)
    assert loss.item() == pytest.approx(np.mean(means), rel=1e-5)
