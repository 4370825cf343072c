"""Datasets as users bring them: which files are cases and channels, what label values mean,
nnU-Net v2's dataset.json read and written, and safe case ids.

Every variant is built in tmp_path from data_samples/ (MSD Task04 hippocampus, CC-BY-SA 4.0;
HC18, CC BY 4.0): renamed, relabelled, given a second channel, saved as colour or as arrays.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medseg.errors import DataError
from medseg.io import (
    CaseFiles,
    Dataset,
    FolderDataset,
    Geometry,
    LabelSpec,
    MSDDataset,
    find_images,
    open_dataset,
    output_suffix,
    read_image_file,
    write_dataset_json,
    write_label_file,
)
from medseg.planning import plan_dataset
from tests.conftest import SAMPLES

HIPPO = sorted((SAMPLES / "hippocampus" / "imagesTr").glob("*.nii.gz"))
HC18 = sorted((SAMPLES / "hc18" / "images").glob("*.png"))


def _hippo(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = nib.load(HIPPO[i])
    label = nib.load(SAMPLES / "hippocampus" / "labelsTr" / HIPPO[i].name)
    return np.asarray(image.dataobj), np.asarray(label.dataobj).astype(np.uint8), image.affine


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _pairs(root: Path, names: list[str], relabel=None, image_dir="images", label_dir="labels") -> Path:
    for i, name in enumerate(names):
        image, label, affine = _hippo(i)
        _save(image, affine, root / image_dir / f"{name}.nii.gz")
        _save(relabel(label) if relabel else label, affine, root / label_dir / f"{name}.nii.gz")
    return root


def _nnunet(root: Path, n: int, meta: dict, channels: int = 1, relabel=None) -> Path:
    """An nnU-Net v2 raw folder: no training list, imagesTr/CASE_000c + labelsTr/CASE."""
    for i in range(n):
        image, label, affine = _hippo(i)
        for c in range(channels):
            _save(image + 100 * c, affine, root / "imagesTr" / f"hippo_{i:03d}_{c:04d}.nii.gz")
        _save(relabel(label) if relabel else label, affine, root / "labelsTr" / f"hippo_{i:03d}.nii.gz")
    meta = {"channel_names": {str(c): f"MR{c}" for c in range(channels)}, "numTraining": n,
            "file_ending": ".nii.gz", **meta}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


# -- cases and channels -------------------------------------------------------------------------
def test_four_digit_names_are_cases_unless_channels_are_declared(tmp_path):
    root = _pairs(tmp_path / "amos", ["amos_0001", "amos_0004", "amos_0007"])
    data = open_dataset(root)
    assert data.case_ids == ["amos_0001", "amos_0004", "amos_0007"] and data.channels is None
    assert data.load("amos_0004").image.shape == (1, *_hippo(1)[0].shape)
    assert list(find_images(root / "images")) == ["amos_0001", "amos_0004", "amos_0007"]
    assert list(find_images(root / "images", channels=1)) == ["amos_0001", "amos_0004", "amos_0007"]
    pngs = tmp_path / "png"
    pngs.mkdir()
    for i, path in enumerate(HC18[:3]):
        shutil.copy(path, pngs / f"img_{i + 1:04d}.png")
    assert list(find_images(pngs)) == ["img_0001", "img_0002", "img_0003"]
    assert list(find_images(pngs, channels=3)) == ["img_0001", "img_0002", "img_0003"]  # RGB plan: no groups


def test_nnunet_single_channel_names_drop_0000_to_match_labels(tmp_path):
    root = _nnunet(tmp_path / "v2", 3, {"labels": {"background": 0, "anterior": 1, "posterior": 2}})
    _save(_hippo(4)[0], _hippo(4)[2], root / "imagesTs" / "hippo_900_0000.nii.gz")
    data = open_dataset(root)
    assert data.case_ids == ["hippo_000", "hippo_001", "hippo_002"] and list(data.test_cases) == ["hippo_900"]
    np.testing.assert_array_equal(data.load("hippo_001").label, _hippo(1)[1])
    assert data.load("hippo_900").label is None
    # the same files as a folder pair: one declared channel reads _0000 as the channel
    pair = tmp_path / "pair"
    shutil.copytree(root / "imagesTr", pair / "images")
    shutil.copytree(root / "labelsTr", pair / "labels")
    assert FolderDataset(pair, modality="MRI").case_ids == ["hippo_000", "hippo_001", "hippo_002"]
    with pytest.raises(DataError, match=r"no label for 3 image.*modality='MRI'"):
        FolderDataset(pair)


def test_two_declared_channels_group_files_and_must_be_complete(tmp_path):
    root = tmp_path / "mm"
    for i, case in enumerate(["case", "other"]):
        image, label, affine = _hippo(i)
        _save(image, affine, root / "images" / f"{case}_0000.nii.gz")
        _save(image.astype(np.float32) * 2 + 1, affine, root / "images" / f"{case}_0001.nii.gz")
        _save(label, affine, root / "labels" / f"{case}.nii.gz")
    for modality in ("T1,T2", ["T1", "T2"]):
        data = FolderDataset(root, modality=modality, classes={0: "bg", 1: "anterior", 2: "posterior"})
        assert data.case_ids == ["case", "other"] and data.modality == ("T1", "T2") and data.channels == 2
    sample = data.load("case")
    np.testing.assert_array_equal(sample.image[1], _hippo(0)[0].astype(np.float32) * 2 + 1)
    np.testing.assert_array_equal(sample.label, _hippo(0)[1])
    (root / "images" / "other_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case 'other' has channel files other_0000\.nii\.gz; 2 channels"):
        FolderDataset(root, modality="T1,T2")
    with pytest.raises(DataError, match=r"case 'case' has 2 channel\(s\), the dataset declares 1"):
        Dataset({"case": CaseFiles(tuple(sorted((root / "images").glob("case_*"))))}, modality="CT").load("case")


def test_pipeline_predict_groups_files_by_the_plans_channels(tmp_path):
    from medseg import Pipeline

    root = tmp_path / "mm"
    image, label, affine = _hippo(0)
    for case in ("a", "b"):
        _save(image, affine, root / "images" / f"{case}_0000.nii.gz")
        _save(image + 5, affine, root / "images" / f"{case}_0001.nii.gz")
        _save(label, affine, root / "labels" / f"{case}.nii.gz")
    pipe = Pipeline(FolderDataset(root, modality="T1,T2"), device="cpu")
    assert pipe.plan.in_channels == 2
    written = pipe.predict(root / "images", tmp_path / "pred")
    assert sorted(written) == ["a", "b"] and sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        "a.nii.gz", "b.nii.gz"]  # nnU-Net's names: CASE<file_ending>
    assert nib.load(tmp_path / "pred" / "a.nii.gz").shape == image.shape


def test_rgb_and_rgba_pngs_are_three_channels_and_rgb_masks_one(tmp_path):
    for path in HC18[:3]:
        grey = np.asarray(Image.open(path).resize((60, 40)))
        rgb = np.stack([grey, grey // 2, 255 - grey], axis=-1)
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(rgb).save(tmp_path / "images" / path.name)
        mask = np.asarray(Image.open(SAMPLES / "hc18" / "masks" / f"{path.stem}_mask.png").resize((60, 40)))
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.stack([mask] * 3, axis=-1)).save(tmp_path / "masks" / f"{path.stem}_mask.png")
    rgba = np.concatenate([rgb, np.full((40, 60, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "images" / HC18[2].name)  # the last one as RGBA
    data = FolderDataset(tmp_path)
    for case in data.case_ids:
        sample = data.load(case)
        assert sample.image.shape == (3, 60, 40) and sample.label.shape == (60, 40)
    np.testing.assert_array_equal(sample.image, np.transpose(rgb, (2, 1, 0)).astype(np.float32))
    assert set(np.unique(sample.label).tolist()) == {0, 1}


def test_grey_with_alpha_png_is_one_channel(tmp_path):
    grey = np.asarray(Image.open(HC18[0]).resize((30, 20)))
    alpha = np.full_like(grey, 255)
    alpha[0, 0] = 0
    Image.fromarray(np.stack([grey, alpha], axis=-1), mode="LA").save(tmp_path / "la.png")  # SimpleITK refuses LA
    with pytest.warns(UserWarning, match=r"la\.png: transparency \(alpha channel\) dropped"):
        data, geometry = read_image_file(tmp_path / "la.png")
    np.testing.assert_array_equal(data, grey.T[None])
    np.testing.assert_array_equal(geometry.affine, read_image_file(HC18[0])[1].affine)  # SimpleITK's grid


def test_ct_folder_pair_gets_ct_normalisation(tmp_path):
    root = _pairs(tmp_path / "ct", ["a", "b", "c"])
    data = open_dataset(root, modality="CT", classes={"0": "background", "1": "anterior", "2": "posterior"})
    assert data.modality == ("CT",) and data.labels == {0: "background", 1: "anterior", 2: "posterior"}
    plan = plan_dataset(data)
    assert plan.normalization == "ct" and plan.num_classes == 3


def test_explicit_classes_and_modality_win_over_dataset_json_with_a_warning(tmp_path):
    root = tmp_path / "hippo"
    shutil.copytree(SAMPLES / "hippocampus", root)
    with pytest.warns(UserWarning, match=r"dataset\.json: classes=.* replaces"):
        data = MSDDataset(root, classes={0: "background", 1: "head", 2: "tail"})
    assert data.label_spec.names == ("background", "head", "tail") and data.modality == ("MRI",)
    with pytest.warns(UserWarning, match=r"modality=\('T1',\) replaces"):
        assert open_dataset(root, modality="T1").modality == ("T1",)


def test_empty_test_folder_and_unknown_label_folder(tmp_path):
    root = tmp_path / "hippo"
    shutil.copytree(SAMPLES / "hippocampus", root)
    (root / "imagesTs").mkdir()
    assert len(open_dataset(root)) == 30 and open_dataset(root).test_cases == {}
    pair = _pairs(tmp_path / "pair", ["a", "b"], label_dir="gt")
    with pytest.raises(DataError, match=r"no label folder \(looked for labels/, masks/; it holds gt/\); pass labels="):
        open_dataset(pair)
    assert FolderDataset(pair, labels="gt").cases["b"].label == pair / "gt" / "b.nii.gz"


def test_numpy_folder_with_classes(tmp_path):
    for i, case in enumerate(["a", "b"]):
        image, label, _ = _hippo(i)
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "labels").mkdir(exist_ok=True)
        np.save(tmp_path / "images" / f"{case}.npy", image)
        np.savez(tmp_path / "labels" / f"{case}.npz", image=label * 2, spacing=np.ones(3))
    data = FolderDataset(tmp_path, classes={0: "background", 2: "anterior", 4: "posterior"})
    sample = data.load("b")
    np.testing.assert_array_equal(sample.image[0], _hippo(1)[0])
    np.testing.assert_array_equal(sample.label, _hippo(1)[1])  # 0/2/4 -> 0/1/2


# -- label values -------------------------------------------------------------------------------
def _brats_like(label: np.ndarray) -> np.ndarray:
    """0/1/2 -> 0/1/2/4: posterior becomes 4, the lower half of the anterior 2."""
    out = label.copy()
    out[label == 2] = 4
    out[(label == 1) & (np.arange(label.shape[0]) < label.shape[0] // 2)[:, None, None]] = 2
    return out


@pytest.mark.parametrize("relabel, values", [(lambda x: np.where(x == 2, 4, x), (0, 1, 4)),
                                             (lambda x: x * 2, (0, 2, 4)), (_brats_like, (0, 1, 2, 4))])
def test_non_contiguous_values_load_as_class_indices_and_decode_back(tmp_path, relabel, values):
    root = _pairs(tmp_path / "pairs", ["a", "b", "c"], relabel)
    data = open_dataset(root)
    plan = plan_dataset(data)
    assert plan.num_classes == len(values) and plan.label_spec.values == values  # no phantom class
    data = data.with_label_spec(plan.label_spec)
    for i, case in enumerate(data.case_ids):
        label = data.load(case).label
        assert set(np.unique(label).tolist()) == set(range(len(values)))
        np.testing.assert_array_equal(plan.label_spec.decode(label), relabel(_hippo(i)[1]))
    names = {str(v): f"c{v}" for v in values}  # declared in an MSD v1 dataset.json: the same classes
    meta = {"labels": names, "modality": {"0": "MRI"},
            "training": [{"image": f"./images/{c}.nii.gz", "label": f"./labels/{c}.nii.gz"} for c in "abc"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    declared = open_dataset(root)
    assert declared.label_spec.values == values and declared.label_spec.names == tuple(names.values())
    np.testing.assert_array_equal(declared.label_spec.decode(declared.load("c").label), relabel(_hippo(2)[1]))


def test_nnunet_v2_ignore_label_and_file_ending(tmp_path):
    root = _nnunet(tmp_path / "ign", 3, {"labels": {"background": 0, "tumor": 1, "ignore": 2}})
    _save(_hippo(5)[0], _hippo(5)[2], root / "imagesTr" / "stray_0000.nii")  # not the file_ending
    data = open_dataset(root)
    assert data.label_spec == LabelSpec((0, 1), ("background", "tumor"), ignore=2)
    assert data.case_ids == ["hippo_000", "hippo_001", "hippo_002"]
    label = data.load("hippo_000").label
    np.testing.assert_array_equal(label, np.where(_hippo(0)[1] == 2, -1, _hippo(0)[1].astype(int)))
    with pytest.warns(UserWarning, match=r"numTraining is 4, found 3"):
        meta = json.loads((root / "dataset.json").read_text())
        (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 4}))
        open_dataset(root)


def test_nnunet_v2_region_labels(tmp_path):
    labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}
    brats = lambda x: np.where(_brats_like(x) == 4, 3, _brats_like(x))  # noqa: E731  0/1/2/3
    root = _nnunet(tmp_path / "reg", 2, {"labels": labels, "regions_class_order": [1, 2, 3]}, relabel=brats)
    spec = open_dataset(root).label_spec
    assert spec.values == (0, 1, 2, 3) and spec.regions == ((1, 2, 3), (2, 3), (3,))
    assert spec.region_names == ("whole tumor", "tumor core", "enhancing tumor")
    assert spec.regions_class_order == (1, 2, 3) and spec.out_channels == 3
    label = open_dataset(root).load("hippo_001").label
    np.testing.assert_array_equal(label, brats(_hippo(1)[1]))  # values 0..3 are their own indices
    meta = json.loads((root / "dataset.json").read_text())
    del meta["regions_class_order"]
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"dataset\.json: region-based labels .* need \"regions_class_order\""):
        open_dataset(root)


@pytest.mark.parametrize("spec", [
    LabelSpec((0, 1, 2, 4), ("background", "edema", "necrosis", "enhancing"), ignore=7),
    LabelSpec((0, 1, 2, 3), ("background", "class_1", "class_2", "enhancing"), regions=((1, 2, 3), (2, 3), (3,)),
              region_names=("whole", "core", "enhancing"), regions_class_order=(1, 2, 3)),
])
def test_write_dataset_json_round_trips_through_msd_dataset(tmp_path, spec):
    root = _nnunet(tmp_path / "rt", 2, {}, channels=2)
    path = write_dataset_json(spec, root, channel_names=["T2", "ADC"], num_training=2)
    meta = json.loads(path.read_text())
    assert meta["channel_names"] == {"0": "T2", "1": "ADC"} and meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == 2 and (meta["labels"].get("ignore") == 7 or spec.ignore is None)
    data = MSDDataset(root)
    assert data.label_spec == spec and data.modality == ("T2", "ADC") and data.case_ids == ["hippo_000", "hippo_001"]
    again = write_dataset_json(data, tmp_path / "copy")  # from the dataset itself
    assert json.loads(again.read_text()) == meta


def test_predictions_are_named_with_the_file_ending(tmp_path):
    for ending in (".nii.gz", ".nii", ".mha", ".nrrd", ".png", ".tif", ".bmp"):
        assert output_suffix(f"case_0000{ending}") == ending
    assert output_suffix("case.jpg") == ".png" and output_suffix("case.mhd") == ".mha"  # lossy; two files
    label = np.asarray(Image.open(SAMPLES / "hc18" / "masks" / "001_HC_mask.png")).T // 255
    for ending in (".tif", ".bmp"):
        written = write_label_file(label, Geometry.from_spacing(label.shape), tmp_path / f"case{ending}")
        np.testing.assert_array_equal(read_image_file(written)[0][0], label)


# -- case ids -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["../x", "a/b", "a\\b", ".hidden", "a\0b", "", "a..b"])
def test_unsafe_case_ids_are_refused(case):
    files = CaseFiles((HIPPO[0],))
    with pytest.raises(DataError, match="case id"):
        Dataset({case: files})


def test_unsafe_id_from_dataset_json_and_unknown_case(tmp_path):
    root = tmp_path / "bad"
    _save(_hippo(0)[0], _hippo(0)[2], root / "imagesTr" / "..nii.gz")
    _save(_hippo(0)[1], _hippo(0)[2], root / "labelsTr" / "..nii.gz")
    meta = {"labels": {"0": "bg", "1": "a", "2": "p"}, "modality": {"0": "MRI"},
            "training": [{"image": "./imagesTr/..nii.gz", "label": "./labelsTr/..nii.gz"}]}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"dataset\.json: case id '\.' starts with a dot"):
        open_dataset(root)
    data = MSDDataset(SAMPLES / "hippocampus")
    with pytest.raises(DataError, match=r"no case 'nope'; the dataset has 30 cases, e\.g\. \['hippocampus_001'"):
        data.load("nope")
