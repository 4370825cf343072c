"""Probabilities out: the softmax (region sigmoids) on the input's grid, as ``<case>.npz`` and
NIfTI maps; their argmax is the written label map; a fold ensemble's are the mean of its folds'."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

import medseg
from medseg.architectures import UNet
from medseg.cli import main
from medseg.inference.probabilities import (
    invert_probabilities,
    read_probabilities,
    write_probabilities,
)
from medseg.io import (
    CaseFiles,
    Dataset,
    FolderDataset,
    Geometry,
    LabelSpec,
    MSDDataset,
    Sample,
    read_image_file,
)
from medseg.preprocessing import CropForeground, Pad, Resample, invert, invert_labels, preprocess
from tests.conftest import SAMPLES, write_disk_folder

# hippocampus resampled to 1.3 x 1.0 x 0.8 mm (the samples are 1 mm), so inversion resamples
HIPPO_PLAN = {"features": (8, 16, 32), "pool_kernels": ((2, 2, 2), (2, 2, 2)), "conv_kernels": ((3, 3, 3),) * 3,
              "patch_size": (32, 32, 32), "batch_size": 2, "target_spacing": (1.3, 1.0, 0.8)}
TEST_CASES = ("hippocampus_052", "hippocampus_056")


def _softmax(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    logits = rng.normal(0, 2, shape).astype(np.float32)
    e = np.exp(logits - logits.max(0))
    return e / e.sum(0)


@pytest.fixture(scope="module")
def hippo(tmp_path_factory):
    """A run trained 8 steps on 8 hippocampus samples, saved; 2 other cases as an input folder."""
    root = tmp_path_factory.mktemp("hippo")
    data = MSDDataset(SAMPLES / "hippocampus")
    pipe = medseg.Pipeline(data, plan=HIPPO_PLAN, device="cpu", training=medseg.TrainingConfig(workers=0, seed=0),
                           inference=medseg.InferenceConfig(largest_component=False))
    pipe.fit([c for c in data.case_ids if c not in TEST_CASES][:8], [], epochs=1, iterations_per_epoch=8)
    pipe.save(root / "run")
    (root / "in").mkdir()
    for case in TEST_CASES:
        shutil.copy(SAMPLES / "hippocampus" / "imagesTr" / f"{case}.nii.gz", root / "in")
    return pipe, root


def test_inversion_undoes_crop_and_anisotropic_resampling_channel_by_channel():
    image = np.zeros((1, 20, 18, 6), np.float32)
    image[0, 3:15, 4:16, 1:5] = np.random.default_rng(0).uniform(1, 2, (12, 12, 4))
    sample = Sample("s", image, Geometry.from_spacing((20, 18, 6), (1.0, 1.0, 4.0)))  # 4 mm slices: nearest along z
    prepared = preprocess(sample, [CropForeground(), Resample(spacing=(0.5, 1.5, 2.0)), Pad(min_shape=(26, 8, 8))])
    network = _softmax(np.random.default_rng(1), (3, *prepared.spatial_shape))
    full = invert_probabilities(network, prepared)
    assert full.shape == (3, 20, 18, 6) and full.dtype == np.float32
    np.testing.assert_allclose(full, invert(network, prepared), atol=1e-6)  # the documented inverse
    np.testing.assert_allclose(full.sum(0), 1.0, atol=1e-5)
    assert full.min() >= 0 and full.max() <= 1
    outside = np.ones((20, 18, 6), bool)
    outside[3:15, 4:16, 1:5] = False
    assert (full[0][outside] == 1).all() and (full[1:, outside] == 0).all()  # background outside the crop
    np.testing.assert_array_equal(full.argmax(0), invert_labels(network, prepared))  # the label path's argmax
    regions = invert_probabilities(network, prepared, activation="sigmoid")
    assert (regions[:, outside] == 0).all()  # no region outside the crop
    np.testing.assert_array_equal(regions > 0.5, invert_labels(network, prepared, reduce="threshold"))


def test_saved_probabilities_sum_to_one_and_their_argmax_is_the_written_labels(hippo, tmp_path):
    pipe, root = hippo
    written = pipe.predict(root / "in", tmp_path, probability_maps=True)
    for case in TEST_CASES:
        image = nib.load(root / "in" / f"{case}.nii.gz")
        probabilities, channels, affine = read_probabilities(tmp_path / f"{case}.npz")
        assert probabilities.shape == (3, *image.shape) and probabilities.dtype == np.float32
        assert channels == ("0", "1", "2")
        np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)
        assert probabilities.min() >= 0 and probabilities.max() <= 1
        np.testing.assert_array_equal(affine, image.affine)
        labels = read_image_file(written[case])[0][0]
        np.testing.assert_array_equal(labels, pipe.predict_case(Sample(case, *read_image_file(image.get_filename()))))
        # exact: the labels are the argmax of these very inverted probabilities (measured: 0 voxels
        # differ on 40 held-out cases of /work/shared, at 1 mm and resampled; float16 would flip
        # ~100). Largest-component cleaning, off here, removes voxels from the labels only.
        np.testing.assert_array_equal(probabilities.argmax(0), labels)
        with np.load(tmp_path / f"{case}.npz") as npz:
            assert npz["values"].tolist() == [0, 1, 2] and str(npz["activation"]) == "softmax"
        for c, name in enumerate(channels):
            map_ = nib.load(tmp_path / f"{case}_prob_{name}.nii.gz")
            np.testing.assert_array_equal(map_.affine, image.affine)
            np.testing.assert_array_equal(map_.get_fdata(dtype=np.float32), probabilities[c])


def test_the_command_line_flags(hippo, tmp_path):
    _, root = hippo
    case = TEST_CASES[0]
    run, image = str(root / "run"), str(root / "in" / f"{case}.nii.gz")
    assert main(["predict", run, image, "--out", str(tmp_path / "a"), "--save-probabilities"]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [f"{case}.nii.gz", f"{case}.npz"]
    assert main(["predict", run, image, "--out", str(tmp_path / "b"), "--probability-maps"]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        f"{case}{suffix}" for suffix in (".nii.gz", ".npz", "_prob_0.nii.gz", "_prob_1.nii.gz", "_prob_2.nii.gz")]
    assert main(["predict", run, image, "--out", str(tmp_path / "c")]) == 0
    assert [p.name for p in (tmp_path / "c").iterdir()] == [f"{case}.nii.gz"]


def test_a_fold_ensemble_saves_the_mean_of_its_folds_probabilities(hippo, tmp_path):
    pipe, root = hippo
    folds = [pipe, pipe.fresh(seed=1)]  # the trained run and a newly initialised one: far apart
    for k, member in enumerate(folds):
        member.save(tmp_path / "cv" / f"fold_{k}")
        (tmp_path / "cv" / f"fold_{k}" / "metrics.json").write_text("{}")
    (tmp_path / "cv" / "cv.json").write_text(json.dumps({"folds": 2}))
    ensemble = medseg.Pipeline.load(tmp_path / "cv", device="cpu")
    assert len(ensemble.ensemble) == 1
    case = TEST_CASES[1]
    image = root / "in" / f"{case}.nii.gz"
    ensemble.predict(image, tmp_path / "ens", save_probabilities=True)
    for k in range(2):
        medseg.Pipeline.load(tmp_path / "cv" / f"fold_{k}", device="cpu").predict(
            image, tmp_path / f"fold{k}", save_probabilities=True)
    saved = [read_probabilities(tmp_path / folder / f"{case}.npz")[0] for folder in ("fold0", "fold1", "ens")]
    assert np.abs(saved[0] - saved[1]).max() > 0.1
    np.testing.assert_allclose(saved[2], (saved[0] + saved[1]) / 2, atol=1e-5, rtol=0)
    np.testing.assert_allclose(saved[2].sum(0), 1.0, atol=1e-5)


REGIONS = LabelSpec((0, 1, 2), ("background", "a", "b"), regions=((1, 2), (2,)), region_names=("whole", "inner"),
                    regions_class_order=(1, 2))


def test_a_region_run_writes_sigmoids_and_nothing_outside_the_crop(tmp_path):
    rng = np.random.default_rng(0)
    cases = {}
    for i in range(2):
        image = np.zeros((28, 26, 24), np.float32)
        image[4:22, 3:21, 5:23] = rng.normal(1, 0.3, (18, 18, 18))
        label = np.zeros(image.shape, np.uint8)
        label[8:18, 7:17, 9:19], label[11:15, 10:14, 12:16] = 1, 2
        paths = tmp_path / f"r{i}_image.nii.gz", tmp_path / f"r{i}_label.nii.gz"
        nib.save(nib.Nifti1Image(image, np.diag([1.0, 1.0, 1.5, 1.0])), paths[0])
        nib.save(nib.Nifti1Image(label, np.diag([1.0, 1.0, 1.5, 1.0])), paths[1])
        cases[f"r{i}"] = CaseFiles((paths[0],), paths[1])
    plan = {"features": (4, 8), "pool_kernels": ((2, 2, 2),), "conv_kernels": ((3, 3, 3),) * 2,
            "patch_size": (16, 16, 16), "batch_size": 2}
    pipe = medseg.Pipeline(Dataset(cases, label_spec=REGIONS, root=tmp_path), plan=plan, device="cpu",
                           inference=medseg.InferenceConfig(largest_component=False))
    written = pipe.predict_cases(["r0"], tmp_path / "out", probability_maps=True)
    probabilities, channels, _ = read_probabilities(tmp_path / "out" / "r0.npz")
    assert channels == ("whole", "inner") and probabilities.shape == (2, 28, 26, 24)
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    assert np.abs(probabilities.sum(0) - 1).max() > 0.2  # independent sigmoids, no softmax
    assert (probabilities[:, :4] == 0).all()  # outside the crop: no region
    labels = read_image_file(written["r0"])[0][0]
    np.testing.assert_array_equal(labels, REGIONS.regions_to_values(probabilities))
    assert (tmp_path / "out" / "r0_prob_whole.nii.gz").is_file() and (tmp_path / "out" / "r0_prob_inner.nii.gz").is_file()


def test_a_2d_input_gets_its_probabilities_on_the_pixel_grid(tmp_path):
    disks = write_disk_folder(tmp_path / "disks", 3, seed=0)
    pipe = medseg.Pipeline(FolderDataset(disks), architecture=UNet(2, 1, 2, features=(4, 8)), device="cpu",
                           sampler=medseg.sampling.PatchSampler(patch_size=(32, 32)))
    pipe.predict(disks / "images" / "d0.png", tmp_path / "out", probability_maps=True)
    probabilities, channels, _ = read_probabilities(tmp_path / "out" / "d0.npz")
    assert probabilities.shape == (2, 48, 64) and channels == ("0", "1")
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)
    labels = read_image_file(tmp_path / "out" / "d0.png")[0][0]
    np.testing.assert_array_equal(probabilities.argmax(0), labels)
    assert nib.load(tmp_path / "out" / "d0_prob_1.nii.gz").shape == (48, 64)


def test_bad_requests_are_clear_errors(hippo, tmp_path):
    pipe, root = hippo
    with pytest.raises(ValueError, match="give output_dir"):
        pipe.predict(root / "in", save_probabilities=True)
    with pytest.raises(ValueError, match=r"3 channels \(0, 1, 2\) on the image grid \(4, 4, 4\)"):
        write_probabilities(np.zeros((2, 4, 4, 4)), Geometry.from_spacing((4, 4, 4)), tmp_path / "x", pipe.plan.label_spec)
    with pytest.raises(ValueError, match="needs `probabilities`"):
        pipe.write_prediction(np.zeros((4, 4, 4), np.uint8), Geometry.from_spacing((4, 4, 4)), tmp_path / "x.nii.gz",
                              probability_maps=True)


def test_a_benchmark_folder_saves_probabilities_and_reads_grey_photos_as_rgb(tmp_path):
    """The format path is the one predict-and-write path: a VOC folder's evaluation split gets
    ``<case>.npz`` beside its palette PNGs (argmax = the palette index written), and a grey photo
    given to the colour plan is read as three equal channels."""
    from PIL import Image

    from tests.format_folders import hc18_cases, write_voc

    root = write_voc(tmp_path / "voc", hc18_cases(n=4))
    data = medseg.io.open_dataset(root)
    pipe = medseg.Pipeline(data, plan={"patch_size": (64, 64), "batch_size": 1, "features": (4, 8),
                                             "pool_kernels": (), "conv_kernels": ()})
    written = pipe.predict(root, tmp_path / "pred", save_probabilities=True)
    assert sorted(written) == sorted(data.evaluation_cases)
    for case, path in written.items():
        probabilities = np.load(tmp_path / "pred" / f"{case}.npz")["probabilities"]
        values = np.asarray(data.label_spec.values)[probabilities.argmax(0)]
        assert np.array_equal(values.T, data.read_values(path))  # the palette PNG holds what the npz says
        assert Image.open(path).mode == "P"
    photo = data.load(data.evaluation_cases[0])
    grey = Sample("grey", photo.image[:1], photo.geometry)
    coloured = Sample("grey", np.repeat(photo.image[:1], 3, axis=0), photo.geometry)
    assert np.array_equal(pipe.predict_case(grey), pipe.predict_case(coloured))
