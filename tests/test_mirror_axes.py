"""Mirroring only along axes where the classes have no fixed order: the planner's rule on the
bundled hippocampus cases and on variants of them (thick slices, mixed orientations, one class, too
few cases), the augmentation's flip axes and mirroring TTA along the planned axes.

The hippocampus cases are MSD Task04 (CC-BY-SA 4.0, see data_samples/README.md)."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from test_planning import HIPPOCAMPUS, _copy_cases, _thick

from medseg import Pipeline
from medseg.inference import InferenceConfig, predict_probabilities
from medseg.io import open_dataset
from medseg.planning import plan_dataset
from medseg.sampling.augmentation import Augmentation


def _ordered_by_scipy(root, share: float = 0.95) -> set[int]:
    """Axes along which the anterior and posterior centroids (SciPy's centre of mass) keep one
    order in ``share`` of the cases: the rule, computed independently of medseg."""
    differences = []
    for path in sorted((root / "labelsTr").glob("*.nii.gz")):
        label = np.asanyarray(nib.load(str(path)).dataobj)
        if {1, 2} <= set(np.unique(label).tolist()):
            first, second = ndimage.center_of_mass(np.ones(label.shape), label, [1, 2])
            differences.append(np.subtract(first, second))
    differences = np.asarray(differences)
    shares = np.maximum((differences > 0).mean(0), (differences < 0).mean(0))
    return {int(a) for a in np.flatnonzero(shares >= share)}


def test_the_hippocampus_is_not_mirrored_along_its_long_axes():
    ordered = _ordered_by_scipy(HIPPOCAMPUS)
    assert ordered == {1, 2}  # the head lies before the tail along axes 1 and 2 in every case
    plan = plan_dataset(open_dataset(HIPPOCAMPUS))
    assert plan.mirror_axes == (0,)
    assert "mirror_axes     (0,) (classes keep one order along axis 1, 2)" in str(plan)
    assert plan.to_dict()["mirror_axes"] == [0]
    assert plan_dataset(open_dataset(HIPPOCAMPUS), spatial_dims=2).mirror_axes == (0,)  # slices across axis 2


def test_variants_of_the_hippocampus(tmp_path):
    thick = _copy_cases(tmp_path / "thick", 12, _thick, in_plane=0.6, thick=3.6)
    assert _ordered_by_scipy(thick) == {1, 2}
    assert plan_dataset(open_dataset(thick)).mirror_axes == (0,)

    calls = itertools.count()

    def every_other_case_flipped(data, order):  # called for a case's image, then its label
        return np.flip(data, 1) if next(calls) // 2 % 2 else data

    mixed = _copy_cases(tmp_path / "mixed", 12, every_other_case_flipped)
    assert _ordered_by_scipy(mixed) == {2}
    assert plan_dataset(open_dataset(mixed)).mirror_axes == (0, 1)

    one_class = _copy_cases(tmp_path / "one", 12, lambda data, order: (data > 0).astype(data.dtype) if order == 0 else data)
    assert plan_dataset(open_dataset(one_class)).mirror_axes is None  # class 2 is never seen with class 1
    few = _copy_cases(tmp_path / "few", 9)
    assert plan_dataset(open_dataset(few)).mirror_axes is None  # nine cases are too few to tell


def test_flip_axes_restrict_the_flips_and_leave_every_other_draw_alone():
    everywhere, some = Augmentation(p_affine=0.5, p_noise=0.5), Augmentation(p_affine=0.5, p_noise=0.5, flip_axes=(0,))
    flipped = set()
    for seed in range(40):
        a = everywhere.draw(np.random.default_rng(seed), 3)
        b = some.draw(np.random.default_rng(seed), 3)
        assert b["flip"] == [axis for axis in a["flip"] if axis == 0]
        assert {k: v for k, v in a.items() if k != "flip"} == {k: v for k, v in b.items() if k != "flip"}
        flipped.update(b["flip"])
    assert flipped == {0}


def test_mirroring_tta_averages_only_the_planned_axes():
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 3, 3, padding=1)  # not mirror-symmetric: each axis changes the output
    image = np.random.default_rng(0).normal(size=(1, 8, 10, 12)).astype(np.float32)
    x = torch.from_numpy(image)[None]
    with torch.no_grad():
        plain = torch.softmax(network(x), 1)
        flipped = torch.softmax(network(x.flip(2)), 1).flip(2)  # spatial axis 0
    expected = ((plain + flipped) / 2)[0].numpy()
    config = InferenceConfig(mirror=True)
    got = predict_probabilities(network, image, roi_size=(8, 10, 12), config=config, mirror_axes=(0,))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    every = predict_probabilities(network, image, roi_size=(8, 10, 12), config=config)
    assert np.abs(every - expected).max() > 1e-3


def test_a_pipeline_trains_and_predicts_with_the_planned_axes():
    pipe = Pipeline(str(HIPPOCAMPUS), device="cpu")
    assert pipe.plan.mirror_axes == (0,)
    assert pipe.training_augmentation("auto").flip_axes == (0,)
    assert pipe.training_augmentation() == pipe.training_augmentation("auto")  # training.augmentation
    assert pipe.training_augmentation("auto").rotation == 30.0  # the 3D preset's
    half_turns = pipe.training_augmentation("2d")
    assert half_turns.flip_axes == (0,) and half_turns.rotation == 30.0  # the 2D preset turns 180 degrees
    assert pipe.training_augmentation({"flip_axes": [0, 1, 2]}).flip_axes == (0, 1, 2)  # a settings file may ask for all
