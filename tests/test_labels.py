"""Label values end to end: a dataset labelled 0/1/4 with an ignore label 3 trains on class
indices 0..2 and every prediction path writes 0/1/4 back, never 2, 3 or the ignore value; the
ignore label is never sampled, trained on, scored or predicted."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

import medseg
from medseg.architectures import UNet
from medseg.cli import main
from medseg.evaluation.cross_validation import predict_fold
from medseg.evaluation.scoring import score_prediction
from medseg.io import IGNORE_INDEX, LabelSpec, read_image_file
from medseg.preprocessing import invert_labels, preprocess
from tests.conftest import SAMPLES

SPEC = LabelSpec((0, 1, 4), ("background", "anterior", "posterior"), ignore=3)
IGNORED_SLICES = 3  # the first slices along the last axis of every label file hold the ignore value


def _relabel(source, target) -> None:
    image = nib.load(source)
    label = np.asarray(image.dataobj).astype(np.uint8)
    label[label == 2] = 4
    label[..., :IGNORED_SLICES] = 3
    nib.save(nib.Nifti1Image(label, image.affine), target)


@pytest.fixture(scope="module")
def relabelled(tmp_path_factory):
    """12 hippocampus cases, posterior relabelled 2 -> 4, a slab of each label ignored (value 3)."""
    root = tmp_path_factory.mktemp("relabelled")
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir()
    names = sorted(p.name for p in (SAMPLES / "hippocampus" / "labelsTr").glob("*.nii.gz"))[:12]
    for name in names:
        shutil.copy(SAMPLES / "hippocampus" / "imagesTr" / name, root / "imagesTr" / name)
        _relabel(SAMPLES / "hippocampus" / "labelsTr" / name, root / "labelsTr" / name)
    for name in names[-2:]:
        shutil.copy(SAMPLES / "hippocampus" / "imagesTr" / name, root / "imagesTs" / name)
    manifest = {"name": "relabelled", "modality": {"0": "MRI"},
                "labels": {"0": "background", "1": "anterior", "4": "posterior"},
                "training": [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in names]}
    (root / "dataset.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def trained(relabelled):
    data = medseg.MSDDataset(relabelled).with_label_spec(SPEC)
    torch.manual_seed(0)  # the network is built here, not by the Pipeline: seed it the same in any test order
    pipe = medseg.Pipeline(data, spatial_dims=2, architecture=UNet(2, 1, 3, features=(8, 16, 32)),
                           sampler=medseg.sampling.PatchSampler(patch_size=(48, 32)), device="cpu",
                           training=medseg.TrainingConfig(workers=0, seed=0, learning_rate=3e-3),
                           inference=medseg.InferenceConfig(largest_component=False))
    ids = data.case_ids
    pipe.fit(ids[:10], ids[10:], epochs=4, iterations_per_epoch=8)
    return pipe


def test_the_plan_trains_three_contiguous_classes(trained):
    assert trained.plan.label_spec == SPEC
    assert trained.plan.out_channels == 3 and trained.network.eval()(torch.zeros(1, 1, 48, 32)).shape[1] == 3
    assert all(np.isfinite(epoch["loss"]) for epoch in trained.history)  # ignored voxels train on nothing


def test_predictions_are_the_dataset_values(trained):
    case = trained.split["val"][0]
    sample = trained.data.load(case)
    predicted = trained.predict_case(case)
    prepared = preprocess(sample.replace(label=None), trained.preprocessing)
    indices = invert_labels(trained.predict_probabilities(prepared.image), prepared)
    assert set(np.unique(indices)) == {0, 1, 2}  # the network's classes...
    assert set(np.unique(predicted)) == {0, 1, 4}  # ...written as the dataset's values
    np.testing.assert_array_equal(predicted, SPEC.decode(indices))
    np.testing.assert_array_equal(trained.predict_sample(sample), predicted)


def test_written_predictions_hold_dataset_values_and_never_the_ignore_value(trained, relabelled, tmp_path):
    written = trained.predict(relabelled / "imagesTs", tmp_path / "out")
    assert sorted(written) == sorted(trained.split["val"])
    for case, path in written.items():
        array, geometry = read_image_file(path)
        assert set(np.unique(array)) <= {0, 1, 4} and 4 in array and 3 not in array
        assert geometry.same_grid(trained.data.load(case).geometry)
        np.testing.assert_array_equal(array[0], trained.predict_case(case))
    with pytest.raises(ValueError, match="ignore value 3"):
        trained.write_prediction(np.full((2, 2, 2), 3), written[case], tmp_path / "bad.nii.gz")


def test_evaluate_scores_the_dataset_classes_where_the_reference_is_not_ignored(trained, relabelled):
    scores = trained.evaluate()
    for case, per_value in scores.items():
        assert sorted(per_value) == [1, 4]
        prediction = trained.predict_case(case)
        reference = np.asarray(nib.load(relabelled / "labelsTr" / f"{case}.nii.gz").dataobj)
        kept = reference != 3
        assert not kept.all()
        for value in (1, 4):
            p, r = (prediction == value) & kept, (reference == value) & kept
            assert per_value[value]["dice"] == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))
        # whatever is predicted at ignored voxels counts for nothing
        changed = np.where(kept, prediction, 4)
        label = trained.data.load(case).label
        assert score_prediction(changed, label, SPEC) == score_prediction(prediction, label, SPEC)


def test_cross_validation_and_the_cli_write_through_the_same_path(trained, relabelled, tmp_path):
    val = trained.split["val"]
    rows, files, _ = predict_fold(trained, val, tmp_path / "fold", 0)
    assert sorted({row["label"] for row in rows}) == [1, 4]
    for case in val:
        array = read_image_file(tmp_path / "fold" / files[case])[0][0]
        np.testing.assert_array_equal(array, trained.predict_case(case))
    trained.save(tmp_path / "run")
    assert main(["predict", str(tmp_path / "run"), str(relabelled), "--split", "val",
                 "--out", str(tmp_path / "cli")]) == 0
    for case in val:
        cli = read_image_file(tmp_path / "cli" / f"{case}.nii.gz")[0][0]
        np.testing.assert_array_equal(cli, read_image_file(tmp_path / "fold" / files[case])[0][0])


def test_ignored_voxels_are_cached_but_never_sampled_as_foreground(trained):
    cases = trained.preprocessed_cases().build(trained.split["train"][:3])
    for case in trained.split["train"][:3]:
        label = np.asarray(cases.label(case))
        foreground = cases.foreground(case)
        assert (label == IGNORE_INDEX).any()
        assert sorted(foreground) == [1, 2]
        for cls, coords in foreground.items():
            assert np.all(label[tuple(coords.T)] == cls)


def test_region_and_class_losses_do_not_mix(relabelled):
    data = medseg.MSDDataset(relabelled).with_label_spec(SPEC)
    with pytest.raises(ValueError, match="trains sigmoid regions, but the plan's labels are classes"):
        medseg.Pipeline(data, loss="region_dice+region_bce", device="cpu")


def test_data_whose_declared_labels_differ_from_the_plan_are_refused(trained, relabelled):
    # relabelled/dataset.json declares 0/1/4 without the ignore label the run was trained with
    with pytest.raises(medseg.DataError, match="differ from the pipeline's plan"):
        medseg.Pipeline(medseg.MSDDataset(relabelled), plan=trained.plan, device="cpu")


def test_test_cases_are_predicted_and_written_by_id(trained, relabelled, tmp_path):
    import copy

    data = medseg.MSDDataset(relabelled).with_label_spec(SPEC)
    image = sorted((relabelled / "imagesTs").iterdir())[0]
    data.test_cases = {"unseen_case": medseg.io.CaseFiles((image,))}
    pipe = copy.copy(trained)
    pipe.data = data
    written = pipe.predict_cases(["unseen_case"], tmp_path)
    assert written["unseen_case"] == tmp_path / "unseen_case.nii.gz"
    np.testing.assert_array_equal(read_image_file(written["unseen_case"])[0][0], trained.predict(image)[image.name[:-7]])


def test_a_dataset_without_background_scores_and_samples_class_0():
    spec = LabelSpec((0, 1, 2), ("road", "car", "sky"), ignore=255, background=False)
    assert spec.scored == {0: "road", 1: "car", 2: "sky"} and spec.scored_values == (0, 1, 2)
    assert LabelSpec.from_dict(spec.to_dict()) == spec
    plain = LabelSpec((0, 1), ("background", "car"))
    assert "background" not in plain.to_dict() and plain.scored == {1: "car"}  # saved plans keep their digest
    reference = spec.encode(np.array([[0, 0, 1, 255], [2, 0, 1, 1]]))
    prediction = np.array([[0, 1, 1, 2], [2, 0, 0, 1]])  # dataset values; the ignored pixel predicted 2
    scores = score_prediction(prediction, reference, spec)
    # road: reference {(0,0),(0,1),(1,1)}, predicted {(0,0),(1,1),(1,2)}: 2 shared -> 2*2/(3+3)
    assert scores[0]["dice"] == pytest.approx(4 / 6)
    # car: reference {(0,2),(1,2),(1,3)}, predicted {(0,1),(0,2),(1,3)}: 2 shared -> 4/6; sky: 1 of 1
    assert scores[1]["dice"] == pytest.approx(4 / 6) and scores[2]["dice"] == 1.0
    assert set(score_prediction(prediction, plain.encode(np.array([[0, 0, 1, 1], [1, 0, 1, 1]])), plain)) == {1}


def test_foreground_locations_include_class_0_only_without_background():
    from medseg.preprocessing.cache import _foreground

    label = np.array([[0, 0, 1], [-1, 2, 2]])
    assert sorted(_foreground(label, seed=0)) == ["class_1", "class_2"]
    found = _foreground(label, seed=0, first=0)
    assert sorted(found) == ["class_0", "class_1", "class_2"]
    assert found["class_0"].tolist() == [[0, 0], [0, 1]]  # the ignored voxel is no location

