"""Region-based labels (BraTS-like whole / core / enhancing over values 1, 2, 3): one sigmoid
output per region, trained with region Dice + BCE, predicted with a sigmoid, written back with
nnU-Net's rule and scored per region."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

import medseg
from medseg.evaluation.scoring import score_prediction
from medseg.inference import (
    InferenceConfig,
    keep_largest_region_component,
    predict_probabilities,
    to_label_values,
)
from medseg.io import CaseFiles, Dataset, LabelSpec, read_image_file
from medseg.losses import CompoundLoss, RegionBCELoss, RegionDiceLoss

SPEC = LabelSpec((0, 1, 2, 3), ("background", "edema", "necrosis", "enhancing"),
                 regions=((1, 2, 3), (2, 3), (3,)), region_names=("whole", "core", "enhancing"),
                 regions_class_order=(1, 2, 3))
SMALL_PLAN = {"features": (8, 16, 32), "pool_kernels": ((2, 2, 2), (2, 2, 2)), "conv_kernels": ((3, 3, 3),) * 3,
              "patch_size": (24, 24, 24), "batch_size": 2}


def _spheres(rng: np.random.Generator, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Nested spheres: 1 outside radius r2, 2 between r3 and r2, 3 inside r3; intensity by label."""
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"))
    centre = rng.uniform(10, 14, size=3)
    distance = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
    r1 = rng.uniform(8, 10)
    label = np.select([distance < r1 - 4, distance < r1 - 2, distance < r1], [3, 2, 1], 0).astype(np.uint8)
    image = label * 1.0 + rng.normal(0, 0.3, label.shape)
    return image.astype(np.float32), label


@pytest.fixture(scope="module")
def spheres(tmp_path_factory):
    root = tmp_path_factory.mktemp("spheres")
    rng = np.random.default_rng(0)
    cases = {}
    for i in range(12):
        image, label = _spheres(rng)
        paths = root / f"s{i:02d}_image.nii.gz", root / f"s{i:02d}_label.nii.gz"
        nib.save(nib.Nifti1Image(image, np.eye(4)), paths[0])
        nib.save(nib.Nifti1Image(label, np.eye(4)), paths[1])
        cases[f"s{i:02d}"] = CaseFiles((paths[0],), paths[1])
    return Dataset(cases, label_spec=SPEC, root=root)


@pytest.fixture(scope="module")
def trained(spheres):
    pipe = medseg.Pipeline(spheres, plan=SMALL_PLAN, device="cpu",
                           training=medseg.TrainingConfig(workers=0, seed=0, learning_rate=1e-2))
    ids = spheres.case_ids
    pipe.fit(ids[:10], ids[10:], epochs=5, iterations_per_epoch=10)
    return pipe


def test_a_region_plan_builds_r_sigmoid_outputs_and_the_region_loss(trained):
    assert trained.plan.out_channels == 3 and trained.plan.num_classes == 4
    assert trained.network.eval()(torch.zeros(1, 1, 24, 24, 24)).shape[1] == 3
    assert isinstance(trained.loss, CompoundLoss) and trained.loss_spec == "region_dice+region_bce"
    assert [type(part) for part in trained.loss.losses] == [RegionDiceLoss, RegionBCELoss]
    assert all(part.regions == SPEC.regions for part in trained.loss.losses)


def test_regions_train_predict_and_score(trained, tmp_path):
    scores = trained.evaluate()
    for case, per_region in scores.items():
        assert sorted(per_region) == [1, 2, 3]  # whole, core, enhancing, keyed by their written value
        assert all(per_region[k]["dice"] > 0.5 for k in per_region), (case, per_region)
        prediction = trained.predict_case(case)
        assert set(np.unique(prediction)) == {0, 1, 2, 3}
        reference = trained.data.load(case).label  # class indices (== values here)
        whole = prediction > 0
        assert per_region[1]["dice"] == pytest.approx(2 * (whole & (reference > 0)).sum()
                                                      / (whole.sum() + (reference > 0).sum()))
    path = trained.write_prediction(prediction, trained.data.load(case).geometry, tmp_path, case=case)
    np.testing.assert_array_equal(read_image_file(path)[0][0], prediction)


def test_a_saved_region_pipeline_loads_with_its_regions(trained, tmp_path):
    trained.save(tmp_path / "run")
    loaded = medseg.Pipeline.load(tmp_path / "run", device="cpu")
    assert loaded.plan.label_spec == SPEC
    assert all(part.regions == SPEC.regions for part in loaded.loss.losses)
    case = trained.split["val"][0]
    np.testing.assert_array_equal(loaded.predict_case(trained.data.load(case)), trained.predict_case(case))


def test_a_softmax_loss_on_a_region_plan_is_a_clear_error(spheres):
    with pytest.raises(ValueError, match=r"\['dice', 'ce'\] train softmax class outputs.*region_dice\+region_bce"):
        medseg.Pipeline(spheres, plan=SMALL_PLAN, loss="dice+ce", device="cpu")
    with pytest.raises(ValueError, match="trains softmax classes, but the plan's labels are regions"):
        medseg.Pipeline(spheres, plan=SMALL_PLAN, loss=medseg.losses.DiceLoss(), device="cpu")


# ---- the parts, by hand -------------------------------------------------------------------------


class _Fixed(nn.Module):
    """Logits ``(x * scale)`` on two channels: a deterministic 'network' for the predictor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x * 2.0, -x + 0.5], dim=1)


@pytest.mark.parametrize("mirror", [False, True])
def test_the_predictor_applies_a_sigmoid_per_channel(mirror):
    image = np.random.default_rng(0).normal(size=(1, 8, 8, 8)).astype(np.float32)
    config = InferenceConfig(mirror=mirror, mode="constant")
    probabilities = predict_probabilities(_Fixed(), image, roi_size=(8, 8, 8), config=config, activation="sigmoid")
    expected = torch.sigmoid(_Fixed()(torch.from_numpy(image)[None]))[0].numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    softmax = predict_probabilities(_Fixed(), image, roi_size=(8, 8, 8), config=config)
    np.testing.assert_allclose(softmax.sum(0), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="activation"):
        predict_probabilities(_Fixed(), image, roi_size=(8, 8, 8), activation="relu")


def test_region_probabilities_are_written_with_nnunets_rule():
    # voxel: (whole, core, enhancing) probabilities -> value (later regions overwrite earlier)
    probabilities = np.array([[0.9, 0.9, 0.2, 0.9, 0.1], [0.1, 0.8, 0.1, 0.7, 0.6], [0.1, 0.1, 0.1, 0.9, 0.1]])
    assert to_label_values(probabilities, SPEC).tolist() == [1, 2, 0, 3, 2]


def test_largest_component_per_region():
    masks = np.zeros((2, 9), dtype=bool)
    masks[0, [0, 1, 2, 5]] = True
    masks[1, [4, 7, 8]] = True
    kept = keep_largest_region_component(masks)
    assert kept[0].nonzero()[0].tolist() == [0, 1, 2] and kept[1].nonzero()[0].tolist() == [7, 8]
    assert to_label_values(np.array([[0.9] * 3 + [0.1] * 3 + [0.9] * 2, [0.1] * 8, [0.1] * 8]), SPEC,
                           largest_component=True).tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_region_scores_by_hand():
    prediction = np.array([[0, 1, 2, 3, 3, 0]])
    reference = np.array([[0, 1, 3, 3, -1, 1]])  # the fifth voxel is ignored
    spec = LabelSpec(SPEC.values, SPEC.names, ignore=9, regions=SPEC.regions, regions_class_order=(1, 2, 3))
    scores = score_prediction(prediction, reference, spec)
    assert scores[1]["dice"] == pytest.approx(2 * 3 / (3 + 4))  # whole: pred {1,2,3}, ref {1,2,3,5}
    assert scores[2]["dice"] == pytest.approx(1.0)  # core: pred {2,3}, ref {2,3}
    assert scores[3]["dice"] == pytest.approx(2 * 1 / (1 + 2))  # enhancing: pred {3}, ref {2,3}
