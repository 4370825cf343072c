"""Instance segmentation through the Pipeline and the CLI: border-core and Mask R-CNN trained,
saved, loaded, predicted (instance maps, sidecars, COCO JSON) and evaluated, in 2D and 3D."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from medseg import Pipeline
from medseg.cli import main
from medseg.instance_tasks import invert_encoded
from medseg.instances.encoding import class_map
from medseg.io import Geometry, Sample, open_dataset, read_image_file
from medseg.io.instances import read_instances
from medseg.preprocessing import CropForeground, Pad, Resample, preprocess
from medseg.training import TrainingConfig
from tests.conftest import SAMPLES

# --- data -----------------------------------------------------------------------------------------


def _touching_discs(rng: np.random.Generator, size=(48, 48)) -> tuple[np.ndarray, np.ndarray]:
    """Two pairs of touching discs (one id each): bright centres fading to the rim, as nuclei."""
    yy, xx = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    image, label = np.zeros(size, np.float32), np.zeros(size, np.uint8)
    for _ in range(2):
        r = rng.uniform(5, 7)
        cy, cx = rng.uniform(r + 1, size[0] - 3 * r - 1), rng.uniform(r + 1, size[1] - r - 1)
        for centre_y in (cy, cy + 2 * r):  # the second disc touches the first
            distance = np.sqrt((yy - centre_y) ** 2 + (xx - cx) ** 2)
            inside = (distance <= r) & (label == 0)
            if inside.any():
                label[inside] = label.max() + 1
                image = np.maximum(image, np.where(distance <= r, 1 - 0.7 * (distance / r) ** 2, 0))
    image = (40 + 180 * image + rng.normal(0, 10, size)).clip(0, 255).astype(np.uint8)
    return image, label


@pytest.fixture(scope="module")
def discs(tmp_path_factory) -> Path:
    """``images/c<i>.png`` and ``labels/c<i>.png`` (instance maps, no sidecar: one class)."""
    root = tmp_path_factory.mktemp("discs")
    rng = np.random.default_rng(0)
    for folder in ("images", "labels"):
        (root / folder).mkdir()
    for i in range(8):
        image, label = _touching_discs(rng)
        sitk.WriteImage(sitk.GetImageFromArray(image), str(root / "images" / f"c{i}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(label), str(root / "labels" / f"c{i}.png"))
    return root


@pytest.fixture(scope="module")
def balls(tmp_path_factory) -> Path:
    """Four 3D hippocampus crops (data_samples) with two touching balls each as instance maps."""
    root = tmp_path_factory.mktemp("balls")
    for folder in ("images", "labels"):
        (root / folder).mkdir()
    zz, yy, xx = np.meshgrid(*(np.arange(20),) * 3, indexing="ij")
    for i, path in enumerate(sorted((SAMPLES / "hippocampus" / "imagesTr").glob("*.nii.gz"))[:4]):
        source = nib.load(path)
        image = np.asarray(source.dataobj, dtype=np.float32)[:20, :20, :20]
        label = np.zeros((20, 20, 20), np.int16)
        for n, centre in enumerate(((7 + i % 2, 10, 10), (13 + i % 2, 10, 10)), 1):
            ball = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= 9
            label[ball & (label == 0)] = n
            image[ball] += 400.0
        nib.save(nib.Nifti1Image(image, source.affine), root / "images" / f"b{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, source.affine), root / "labels" / f"b{i}.nii.gz")
    return root


SMALL_MASKRCNN = {"name": "maskrcnn", "widths": [8, 16, 32], "fpn_channels": 16, "head_width": 32}
FAST = ["--epochs", "1", "--workers", "0", "--device", "cpu", "--no-amp"]


def _train(capsys, data: Path, out: Path, *flags: str) -> str:
    assert main(["train", str(data), "--out", str(out), "--task", "instance", *FAST, *flags]) == 0
    return capsys.readouterr().out


# --- border-core --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bordercore_run(discs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bordercore") / "run"
    code = main(["train", str(discs), "--out", str(out), "--task", "instance", "--architecture", "bordercore",
                 "--iterations-per-epoch", "40", "--lr", "0.01", "--patch-size", "48,48", "--batch-size", "4", "--val-fraction",
                 "0.25", *FAST])
    assert code == 0
    return out


def test_bordercore_cli_train_predict_evaluate(bordercore_run, discs, tmp_path, capsys):
    config = json.loads((bordercore_run / "pipeline.json").read_text())
    assert config["plan"]["task"] == "instance" and config["architecture"]["name"] == "bordercore"
    assert config["plan"]["instances"]["mode"] == "map" and config["plan"]["instances"]["target"] == "bordercore"
    assert config["plan"]["class_names"] == ["background", "core object", "border"]  # K + 1 network classes
    assert main(["predict", str(bordercore_run), str(discs / "images"), "--out", str(tmp_path / "pred")]) == 0
    written = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert written == sorted([f"c{i}{s}" for i in range(8) for s in (".png", ".json")] + ["instances_coco.json"])
    instance_map, classes, scores = read_instances(tmp_path / "pred" / "c0.png")
    assert set(classes.values()) <= {1} and all(0.0 < s <= 1.0 for s in scores.values())  # mean foreground prob.
    # 40 steps separate touching discs: matching accuracy at IoU 0.5 on the held-out cases
    trained = Pipeline.load(bordercore_run, discs, device="cpu")
    untrained = Pipeline.load(bordercore_run, discs, device="cpu", weights=False)
    val = trained.split["val"]
    accuracy = np.mean([s["match_accuracy"] for s in trained.evaluate(val).values()])
    baseline = np.mean([s["match_accuracy"] for s in untrained.evaluate(val).values()])
    assert accuracy >= 0.6 and baseline <= 0.25, (accuracy, baseline)
    capsys.readouterr()
    code = main(["evaluate", str(tmp_path / "pred"), str(discs), "--task", "instance", "--out", str(tmp_path / "ev")])
    assert code == 0 and "coco.AP50" in capsys.readouterr().out
    # the written files score as the pipeline's own evaluation of the same cases does
    summary = json.loads((tmp_path / "ev" / "instances.json").read_text())["summary"]["mean"]
    every = trained.evaluate(trained.data.case_ids)
    assert summary["accuracy"] == pytest.approx(np.mean([s["match_accuracy"] for s in every.values()]))
    assert summary["panoptic_quality"] == pytest.approx(np.mean([s["panoptic_quality"] for s in every.values()]))


def test_bordercore_load_predicts_the_same_map(bordercore_run, discs):
    pipe = Pipeline.load(bordercore_run, discs, device="cpu")
    sample = pipe.data.load("c1")
    before = pipe.predict_case(sample)
    again = Pipeline.load(bordercore_run, device="cpu")  # no data: the task comes from pipeline.json
    assert again.is_instance and again.instance_target == "bordercore"
    np.testing.assert_array_equal(again.predict_case(sample), before)
    assert before.max() >= 2  # instances, not a class map


def test_pipeline_save_load_round_trip(discs, tmp_path):
    pipe = Pipeline(discs, task="instance", architecture="bordercore", plan={"patch_size": (48, 48), "batch_size": 2},
                    training=TrainingConfig(epochs=1, iterations_per_epoch=2, amp=False, workers=0), device="cpu")
    pipe.fit(["c2", "c3"], [])
    sample = pipe.data.load("c0")
    before, scores = pipe.predict_instances(sample)
    pipe.save(tmp_path / "saved")
    loaded = Pipeline.load(tmp_path / "saved", device="cpu")
    after, scores_after = loaded.predict_instances(sample)
    np.testing.assert_array_equal(after, before)
    assert scores_after == pytest.approx(scores)
    assert loaded.plan == pipe.plan and loaded.instance_spec.names == ("background", "object")


# --- Mask R-CNN -----------------------------------------------------------------------------------


def test_maskrcnn_2d_cli(discs, tmp_path, capsys):
    (tmp_path / "net.yaml").write_text(yaml.safe_dump({"architecture": SMALL_MASKRCNN}))
    _train(capsys, discs, tmp_path / "run", "--config", str(tmp_path / "net.yaml"), "--iterations-per-epoch", "2",
           "--patch-size", "48,48", "--batch-size", "2", "--val-fraction", "0.25")
    config = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert config["architecture"]["name"] == "maskrcnn" and config["plan"]["num_classes"] == 2
    assert main(["predict", str(tmp_path / "run"), str(discs / "images"), "--out", str(tmp_path / "pred")]) == 0
    for i in range(8):
        assert (tmp_path / "pred" / f"c{i}.png").is_file() and (tmp_path / "pred" / f"c{i}.json").is_file()
    coco = json.loads((tmp_path / "pred" / "instances_coco.json").read_text())
    assert sorted(image["file_name"] for image in coco["images"]) == sorted(f"c{i}.png" for i in range(8))
    assert [c["id"] for c in coco["categories"]] == [1]
    _, geometry = read_image_file(tmp_path / "pred" / "c3.png")
    np.testing.assert_allclose(geometry.affine, read_image_file(discs / "images" / "c3.png")[1].affine)
    assert main(["evaluate", str(tmp_path / "pred"), str(discs), "--task", "instance"]) == 0


def test_maskrcnn_3d_cli(balls, tmp_path, capsys):
    (tmp_path / "net.yaml").write_text(yaml.safe_dump({"architecture": SMALL_MASKRCNN}))
    _train(capsys, balls, tmp_path / "run", "--config", str(tmp_path / "net.yaml"), "--iterations-per-epoch", "2",
           "--patch-size", "20,20,20", "--batch-size", "1", "--val-fraction", "0.25")
    assert main(["predict", str(tmp_path / "run"), str(balls / "images"), "--out", str(tmp_path / "pred")]) == 0
    for i in range(4):
        written = tmp_path / "pred" / f"b{i}.nii.gz"
        source = nib.load(balls / "images" / f"b{i}.nii.gz")
        np.testing.assert_allclose(nib.load(written).affine, source.affine, atol=1e-5)  # the input's geometry
        assert nib.load(written).shape == source.shape
        assert "instances" in json.loads((tmp_path / "pred" / f"b{i}.json").read_text())
    assert not (tmp_path / "pred" / "instances_coco.json").exists()  # COCO is 2D only
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "pred"), str(balls), "--task", "instance"]) == 0


# --- plumbing -----------------------------------------------------------------------------------


def test_invert_encoded_is_nearest_and_exact():
    """Crop, resample x2 and pad, undone: every value of the map goes back to its own voxels."""
    image = np.zeros((1, 12, 10), np.float32)
    image[0, 2:10, 1:9] = 1.0
    label = np.zeros((12, 10), np.int32)
    label[2:6, 1:5], label[6:10, 1:5], label[2:10, 5:9] = 1, 2, 3
    sample = Sample("s", image, Geometry(np.eye(4), (12, 10)), label)
    steps = [CropForeground(), Resample(spacing=(0.5, 0.5)), Pad(min_shape=(20, 20))]
    prepared = preprocess(sample, steps)
    assert prepared.label.shape == (20, 20)  # the 8 x 8 box, twice as fine, padded
    back = invert_encoded(prepared.label, prepared)
    np.testing.assert_array_equal(back, label)  # no value blended: instance 3 stays 3, no 2.5 between 2 and 3
    assert back.dtype == np.int32


def test_semantic_run_config_unchanged(tmp_path):
    """A semantic plan holds the keys it held before instance tasks existed (and the hippocampus'
    mirror axes, a semantic choice), none of the instance task's."""
    pipe = Pipeline(SAMPLES / "hippocampus", device="cpu")
    plan = pipe.config()["plan"]
    assert sorted(plan) == ['batch_size', 'class_names', 'conv_kernels', 'features', 'in_channels', 'intensity',
                            'labels', 'median_shape', 'mirror_axes', 'normalization', 'num_classes', 'patch_size',
                            'pool_kernels', 'slice_axis', 'spatial_dims', 'target_spacing']
    assert sorted(pipe.config()) == ["architecture", "format", "history", "inference", "loss", "plan",
                                     "preprocessing", "sampler", "split", "training"]
    assert not pipe.is_instance and pipe.instance_target is None and "task" not in str(pipe.plan)


def test_instance_options_need_the_instance_task(discs):
    with pytest.raises(ValueError, match="task='instance'"):
        Pipeline(discs, architecture="bordercore", device="cpu")
    with pytest.raises(ValueError, match="task='semantic' or 'instance'|use 'semantic' or 'instance'"):
        Pipeline(discs, task="panoptic", device="cpu")
    with pytest.raises(ValueError, match="maskrcnn"):
        Pipeline(discs, task="instance", architecture="unet", device="cpu")


def test_cv_instance_report(discs, tmp_path, capsys):
    out = tmp_path / "cv"
    code = main(["cv", str(discs), "--out", str(out), "--task", "instance", "--architecture", "bordercore", "--folds",
                 "2", "--iterations-per-epoch", "3", "--patch-size", "48,48", "--batch-size", "2", *FAST])
    assert code == 0 and "mean Dice object (1)" in capsys.readouterr().out  # the semantic class, not "core object"
    report = (out / "report" / "report.md").read_text()
    assert "## Instances (IoU 0.5, one-to-one matching)" in report
    references = sum(len(np.unique(read_image_file(p)[0])) - 1 for p in (discs / "labels").glob("*.png"))
    row = next(line for line in report.splitlines() if line.startswith("| object (1) |") and "/" in line)
    assert row.rstrip(" |").endswith(f"/ {references}")  # every reference instance of the 8 cases counted once
    header = (out / "report" / "metrics.csv").read_text().splitlines()[0]
    assert "match_accuracy" in header and "panoptic_quality" in header
    assert (out / "fold_0" / "predictions" / "instances_coco.json").is_file()


def test_semantic_classes_as_instances_plan():
    """Hippocampus (classes declared in dataset.json): each component of a class is an instance,
    and border-core plans background, one core per class and the border."""
    pipe = Pipeline(SAMPLES / "hippocampus", task="instance", architecture="bordercore", device="cpu")
    assert pipe.data.mode == "components" and pipe.plan.instances["mode"] == "components"
    assert pipe.plan.num_classes == 4 and pipe.plan.class_names[-1] == "border"
    assert pipe.plan.class_names[1].startswith("core ") and pipe.network.hparams["out_channels"] == 4
    assert pipe.instance_spec.values == (0, 1, 2)
    case = pipe.data.case_ids[0]
    reference = pipe.reference_data().load(case).label  # encoded: value (n - 1) * 2 + c
    semantic = open_dataset(SAMPLES / "hippocampus").with_label_spec(pipe.instance_spec).load(case).label
    np.testing.assert_array_equal(class_map(reference, 3), semantic)  # the classes survive the encoding
    assert len(np.unique(reference[reference > 0])) >= 2


def test_bordercore_borders_survive_the_planned_coarsening(tmp_path):
    """Large images of touching squares: the instance plan coarsens the grid 2x, which would erase
    the one-pixel borders and merge the squares in the training labels; the border is at least
    one voxel of the training grid, so every square comes back from the cached labels."""
    from PIL import Image

    from medseg.instances.bordercore import from_bordercore

    for folder in ("images", "labels"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    label = np.zeros((480, 480), np.uint8)
    n = 0
    for row in range(40, 440, 60):  # rows of 4 squares of 16 x 16 pixels, each touching the next
        for col in range(40, 104, 16):
            n += 1
            label[row:row + 16, col:col + 16] = n
    for case in ("a", "b"):
        Image.fromarray(label).save(tmp_path / "data" / "labels" / f"{case}.png")
        Image.fromarray((40 + 150 * (label > 0)).astype(np.uint8)).save(tmp_path / "data" / "images" / f"{case}.png")
    pipe = Pipeline(tmp_path / "data", task="instance", architecture="bordercore", device="cpu",
                    cache_dir=tmp_path / "cache")
    spacing = pipe.plan.target_spacing
    assert spacing[0] == pytest.approx(2.0)  # 16 pixels / 8: a one-pixel border would not survive
    cached = np.asarray(pipe.preprocessed_cases().build(["a"]).label("a"))
    recovered = from_bordercore(cached, 2, spacing)
    assert len(np.unique(recovered[recovered > 0])) == n == 28


def test_review_and_export_refuse_what_they_cannot_do_for_instances(bordercore_run, discs, tmp_path):
    from medseg.errors import MedsegError
    from medseg.export import export_pipeline
    from medseg.review import init

    with pytest.raises(MedsegError, match="instance run"):
        init(bordercore_run, discs / "images", tmp_path / "review", device="cpu")
    assert not (tmp_path / "review").exists()
    detector = Pipeline(discs, task="instance", architecture=SMALL_MASKRCNN, device="cpu")
    with pytest.raises(MedsegError, match="cannot be exported"):
        export_pipeline(detector, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_maps_without_sidecars_take_the_one_class_of_the_references(discs, tmp_path):
    """Another tool's instance maps (no <case>.json) against references whose one class is valued
    255: scored as that class, not as class 1 matching nothing."""
    from medseg.errors import DataError
    from medseg.evaluation import evaluate_instances

    for folder in ("images", "labels"):
        (tmp_path / "ref" / folder).mkdir(parents=True)
    (tmp_path / "pred").mkdir()
    for i in range(3):
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(discs / "labels" / f"c{i}.png")))
        sitk.WriteImage(sitk.ReadImage(str(discs / "images" / f"c{i}.png")), str(tmp_path / "ref" / "images" / f"c{i}.png"))
        for folder in (tmp_path / "pred", tmp_path / "ref" / "labels"):
            sitk.WriteImage(sitk.GetImageFromArray(label), str(folder / f"c{i}.png"))
        ids = [int(v) for v in np.unique(label) if v]
        (tmp_path / "ref" / "labels" / f"c{i}.json").write_text(json.dumps(dict.fromkeys(map(str, ids), 255)))
    result = evaluate_instances(tmp_path / "pred", tmp_path / "ref", mode="map")
    pooled = result["summary"]["pooled"][0.5]
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (12, 0, 0)  # as class 1 they would be 0, 12, 12
    (tmp_path / "ref" / "labels" / "c0.json").write_text(json.dumps({"1": 255, "2": 7, "3": 255, "4": 7}))
    with pytest.raises(DataError, match="no class sidecar"):
        evaluate_instances(tmp_path / "pred", tmp_path / "ref", mode="map")


def test_keep_scored_drops_the_low_scores_by_hand():
    from medseg.instance_tasks import keep_scored

    encoded = np.array([[1, 2, 3, 4, 0, 5, 6]])  # K = 3: instance n of class c is (n - 1) * 2 + c
    scores = {1: 0.9, 2: 0.3, 3: 0.5}  # instance 1: values 1, 2; instance 2: 3, 4; instance 3: 5, 6
    assert keep_scored(encoded, scores, 0.5, 3).tolist() == [[1, 2, 0, 0, 0, 0, 0]]
    assert keep_scored(encoded, scores, 0.2, 3).tolist() == encoded.tolist()


def test_the_score_threshold_is_chosen_on_the_validation_cases(discs, monkeypatch):
    """A short run's scores stay low: the threshold that gives the best validation matching is
    chosen (ties: the higher), where a fixed 0.5 would write no instance at all."""
    pipe = Pipeline(discs, task="instance", architecture=SMALL_MASKRCNN, device="cpu")
    references = {case: pipe.data.load(case).label for case in ("c0", "c1")}

    class Cases:  # the preprocessed cases fit would hand over: here, the references themselves
        def image(self, case):
            return np.zeros((1, *references[case].shape), np.float32)

        def label(self, case):
            return references[case]

    from medseg.instance_tasks import keep_scored

    calls = iter(["c0", "c1"])  # fit detects each validation case once, in order

    def detect(image, score_threshold=None):  # every true object at 0.3, plus a spurious one at 0.1
        encoded = references[next(calls)].copy()
        n = int(encoded.max())
        encoded[:3, :3] = n + 1
        scores = {**dict.fromkeys(range(1, n + 1), 0.3), n + 1: 0.1}
        kept = {k: v for k, v in scores.items() if v > score_threshold}
        return keep_scored(encoded, scores, score_threshold, 2), kept

    monkeypatch.setattr(pipe, "_detect", detect)
    assert pipe.inference.score_threshold is None
    pipe.choose_postprocessing(["c0", "c1"], cases=Cases())
    assert pipe.inference.score_threshold == 0.2  # 0.1 and 0.2 both drop only the spurious one
    assert pipe.inference.to_dict()["score_threshold"] == 0.2
    assert "score_threshold" not in medseg_inference_defaults()


def medseg_inference_defaults():
    from medseg.inference import InferenceConfig

    return InferenceConfig().to_dict()  # a semantic run's settings are what they were
