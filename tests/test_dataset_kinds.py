"""Every dataset kind users bring, built from the real sample cases, trained briefly, predicted
and scored: the right case count, channel count, label values, ignore label and plan.

The variants are derived from data_samples/ (MSD Task04 hippocampus, CC-BY-SA 4.0; HC18, CC BY
4.0: see data_samples/README.md): renamed, relabelled, given a second channel, colour, thick
slices or mixed slice spacings.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import medseg
from medseg.cli import main
from tests.conftest import SAMPLES

pytestmark = pytest.mark.slow

HIPPO = sorted((SAMPLES / "hippocampus" / "imagesTr").glob("*.nii.gz"))


def _hippo(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = nib.load(HIPPO[i])
    label = nib.load(SAMPLES / "hippocampus" / "labelsTr" / HIPPO[i].name)
    return np.asarray(image.dataobj), np.asarray(label.dataobj), image.affine


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def _nnunet(root: Path, meta: dict, n: int, relabel=None, channels: int = 1, spacing=None) -> Path:
    """An nnU-Net v2 raw folder (no training list, CASE_000c images, CASE labels)."""
    for i in range(n):
        image, label, affine = _hippo(i)
        if spacing is not None:
            affine = np.diag([*spacing, 1.0])
        case = f"hippo_{i:03d}"
        for c in range(channels):
            _save(image if c == 0 else (image.max() - image), affine, root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        _save((relabel(label, i) if relabel else label).astype(np.uint8), affine, root / "labelsTr" / f"{case}.nii.gz")
    meta = {"channel_names": {str(c): f"MR{c}" for c in range(channels)}, "numTraining": n,
            "file_ending": ".nii.gz", **meta}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


# the planned pipeline with a small patch, batch and network, so that a brief training is seconds
SMALL_3D = {"patch_size": (24, 32, 24), "batch_size": 2, "features": (8, 16, 32, 64)}
SMALL_2D = {"batch_size": 4, "features": (8, 16, 32, 64, 128, 256)}


def _pipeline(data, **kwargs) -> medseg.Pipeline:
    plan = medseg.planning.plan_dataset(data if isinstance(data, medseg.io.Dataset) else medseg.io.open_dataset(data),
                                        spatial_dims=kwargs.get("spatial_dims"), device="cpu")
    small = SMALL_2D if plan.spatial_dims == 2 else SMALL_3D
    small = {**small, "features": small["features"][: len(plan.features)]}
    return medseg.Pipeline(data, plan=small, device="cpu", training=medseg.TrainingConfig(workers=0), **kwargs)


def _brief(pipe: medseg.Pipeline, epochs: int = 2, steps: int = 3) -> None:
    pipe.fit(epochs=epochs, iterations_per_epoch=steps, val_fraction=0.2)


def _written_values(folder: Path) -> set[int]:
    values: set[int] = set()
    for path in folder.iterdir():
        values |= set(np.unique(np.asarray(nib.load(path).dataobj)).tolist())
    return values


def test_four_digit_case_names_are_cases_not_channels(tmp_path):
    for i in range(8):
        image, label, affine = _hippo(i)
        _save(image, affine, tmp_path / "images" / f"amos_{i + 1:04d}.nii.gz")
        _save(label, affine, tmp_path / "labels" / f"amos_{i + 1:04d}.nii.gz")
    data = medseg.io.open_dataset(tmp_path)
    assert len(data) == 8 and data.case_ids[0] == "amos_0001"
    pipe = _pipeline(data)
    assert pipe.plan.in_channels == 1
    _brief(pipe)
    written = pipe.predict(tmp_path / "images", output_dir=tmp_path / "pred")
    assert sorted(written) == [f"amos_{i + 1:04d}" for i in range(8)]
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "labels"), "--labels", "1,2"]) == 0


def test_rgb_images_have_three_channels(tmp_path):
    for path in sorted((SAMPLES / "hc18" / "images").glob("*.png"))[:8]:
        grey = np.asarray(Image.open(path).resize((200, 135)))
        rgb = np.stack([grey, (grey * 0.8).astype(np.uint8), 255 - grey], axis=-1)
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(rgb).save(tmp_path / "images" / path.name)
        mask = Image.open(SAMPLES / "hc18" / "masks" / f"{path.stem}_mask.png").resize((200, 135), Image.NEAREST)
        mask.save(tmp_path / "masks" / f"{path.stem}_mask.png")
    pipe = _pipeline(medseg.io.open_dataset(tmp_path))
    assert pipe.plan.in_channels == 3 and pipe.plan.spatial_dims == 2
    _brief(pipe)
    labels = pipe.predict(tmp_path / "images")
    assert len(labels) == 8 and all(set(np.unique(v).tolist()) <= {0, 1} for v in labels.values())
    # nnU-Net names a one-file RGB case CASE_0000.png: still one case of three channels
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "scan_0000.png").write_bytes(next((tmp_path / "images").iterdir()).read_bytes())
    assert list(pipe.predict(tmp_path / "new")) == ["scan"]


def test_two_channels_declared_in_dataset_json(tmp_path):
    root = _nnunet(tmp_path / "two", {"labels": {"background": 0, "anterior": 1, "posterior": 2}}, 8, channels=2)
    data = medseg.io.open_dataset(root)
    assert len(data) == 8 and data.load("hippo_000").image.shape[0] == 2
    pipe = _pipeline(data)
    assert pipe.plan.in_channels == 2 and pipe.network(
        __import__("torch").zeros(1, 2, *pipe.plan.patch_size)).shape[1] == 3
    _brief(pipe)
    written = pipe.predict(root / "imagesTr", output_dir=tmp_path / "pred")
    assert len(written) == 8  # _0000 + _0001 grouped into one case each


def _brats_like(label: np.ndarray, i: int) -> np.ndarray:
    """0/1/2 -> 0/1/2/4: posterior becomes 4, the anterior's lower half becomes 2."""
    out = label.copy()
    out[label == 2] = 4
    anterior = label == 1
    cut = int(np.median(np.nonzero(anterior)[0])) if anterior.any() else 0
    lower = np.zeros_like(anterior)
    lower[:cut] = True
    out[anterior & lower] = 2
    return out


def test_non_contiguous_labels_train_on_four_classes_and_write_back_their_values(tmp_path):
    root = _nnunet(tmp_path / "brats", {"labels": {"background": 0, "a": 1, "b": 2, "c": 4}}, 10, _brats_like)
    pipe = _pipeline(medseg.io.open_dataset(root))
    assert pipe.plan.num_classes == 4 and pipe.plan.label_spec.values == (0, 1, 2, 4)
    _brief(pipe, epochs=5, steps=10)
    pipe.predict(root / "imagesTr", output_dir=tmp_path / "pred")
    values = _written_values(tmp_path / "pred")
    assert values <= {0, 1, 2, 4} and 4 in values and 3 not in values
    # the same variant without declared classes: the values found make the classes
    folder = tmp_path / "plain"
    for case in sorted((root / "imagesTr").iterdir())[:6]:
        name = case.name.replace("_0000", "")
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        (folder / "images" / name).write_bytes(case.read_bytes())
        (folder / "labels" / name).write_bytes((root / "labelsTr" / name).read_bytes())
    plain = medseg.planning.plan_dataset(medseg.io.open_dataset(folder), device="cpu")
    assert plain.num_classes == 4 and plain.label_spec.values == (0, 1, 2, 4)


def _with_ignore(label: np.ndarray, i: int) -> np.ndarray:
    out = label.copy()
    out[:, :, :6] = 3  # an unannotated slab
    return out


def test_nnunet_v2_ignore_label_is_never_predicted(tmp_path):
    meta = {"labels": {"background": 0, "anterior": 1, "posterior": 2, "ignore": 3}}
    root = _nnunet(tmp_path / "ign", meta, 8, _with_ignore)
    data = medseg.io.open_dataset(root)
    assert data.label_spec.ignore == 3
    assert (data.load("hippo_000").label[:, :, :6] == medseg.io.IGNORE_INDEX).all()
    pipe = _pipeline(data)
    assert pipe.plan.num_classes == 3
    _brief(pipe)
    pipe.predict(root / "imagesTr", output_dir=tmp_path / "pred")
    assert 3 not in _written_values(tmp_path / "pred")


def test_region_based_dataset_json_trains_sigmoid_regions(tmp_path):
    meta = {"labels": {"background": 0, "hippocampus": [1, 2], "posterior": 2}, "regions_class_order": [1, 2]}
    root = _nnunet(tmp_path / "reg", meta, 8)
    data = medseg.io.open_dataset(root)
    assert data.label_spec.regions == ((1, 2), (2,))
    pipe = _pipeline(data)
    assert pipe.plan.out_channels == 2
    _brief(pipe)
    pipe.predict(root / "imagesTr", output_dir=tmp_path / "pred")
    assert _written_values(tmp_path / "pred") <= {0, 1, 2}


def test_thick_slices_are_pooled_per_axis(tmp_path):
    root = _nnunet(tmp_path / "thick", {"labels": {"background": 0, "a": 1, "b": 2}}, 6, spacing=(0.6, 0.6, 3.6))
    plan = medseg.planning.plan_dataset(medseg.io.open_dataset(root), device="cpu")
    first, last = plan.pool_kernels[0], plan.pool_kernels[-1]
    assert first[2] == 1 and first[0] == first[1] == 2  # the 3.6 mm axis is not pooled at first
    assert plan.conv_kernels[0][2] == 1 and plan.conv_kernels[0][0] == 3
    assert all(p % int(np.prod([k[a] for k in plan.pool_kernels])) == 0 for a, p in enumerate(plan.patch_size))
    assert last is not None


def test_2d_network_on_mixed_slice_spacings_keeps_each_case_s_slices(tmp_path):
    for i in range(6):
        image, label, _ = _hippo(i)
        affine = np.diag([1.0, 1.0, 1.5 if i % 2 else 3.0, 1.0])
        _save(image, affine, tmp_path / "images" / f"case{i}.nii.gz")
        _save(label, affine, tmp_path / "labels" / f"case{i}.nii.gz")
    pipe = _pipeline(medseg.io.open_dataset(tmp_path), spatial_dims=2)
    assert pipe.plan.slice_axis == 2
    prepared = medseg.preprocessing.preprocess(pipe.data.load("case1"), pipe.preprocessing)
    assert prepared.image.shape[3] >= _hippo(1)[0].shape[2]  # no slice of the 1.5 mm case lost
    _brief(pipe)
    labels = pipe.predict(tmp_path / "images" / "case1.nii.gz")["case1"]
    assert labels.shape == _hippo(1)[0].shape
