"""Instance labels: the encoding by hand, connected components against SciPy and by hand,
instance datasets (maps with JSON/CSV class sidecars, an MSD folder's components, COCO), instance
predictions written and read back (NIfTI geometry, PNG + a COCO JSON that pycocotools opens),
and encoded labels past int16 through the preprocessing cache and augmentation.

Data: small generated maps (touching objects, objects at the border, empty images) and two
cases of data_samples/hippocampus (CC-BY-SA 4.0).
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg.errors import DataError
from medseg.instances.encoding import class_map, components, decode, encode, label_dtype
from medseg.io import (
    FolderDataset,
    Geometry,
    InstanceDataset,
    LabelSpec,
    MSDDataset,
    Sample,
    as_instances,
    open_dataset,
    read_image_file,
    read_instances,
    write_instances,
    write_label_file,
)
from medseg.io.datasets import CaseFiles, Dataset
from medseg.preprocessing.cache import PreprocessedCases
from medseg.sampling.augmentation import Augmentation
from tests.conftest import hippocampus_subset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools


# --- the encoding ---------------------------------------------------------------------------------


def test_encode_decode_by_hand_with_three_classes():
    ids = np.array([[0, 7, 7], [9, 9, -1], [0, 12, 0]])
    # ids 7, 9, 12 -> instances 1, 2, 3; value = (n - 1) * (K - 1) + c with K = 3
    encoded = encode(ids, {7: 2, 9: 1, 12: 2, 99: 1}, 3)  # an id absent from the map is ignored
    assert encoded.dtype == np.int32
    assert encoded.tolist() == [[0, 2, 2], [3, 3, -1], [0, 6, 0]]
    instances, classes = decode(encoded, 3)
    assert instances.tolist() == [[0, 1, 1], [2, 2, -1], [0, 3, 0]] and classes == {1: 2, 2: 1, 3: 2}
    assert class_map(encoded, 3).tolist() == [[0, 2, 2], [1, 1, -1], [0, 2, 0]]
    # one foreground class: the encoded map is the (renumbered) instance map
    assert encode(ids, None, 2).tolist() == [[0, 1, 1], [2, 2, -1], [0, 3, 0]]
    assert not encode(np.zeros((4, 3, 2), np.uint8), None, 3).any()  # an empty image
    # a patch that lost instance 1: decoding renumbers without gaps
    patch, patch_classes = decode(np.array([0, 6, 3]), 3)
    assert patch.tolist() == [0, 2, 1] and patch_classes == {1: 1, 2: 2}


def test_encode_names_bad_classes():
    with pytest.raises(ValueError, match=r"class indices \[3\]"):
        encode(np.array([0, 1, 2]), {1: 1, 2: 3}, 3)
    with pytest.raises(ValueError, match=r"ids \[2\]"):
        encode(np.array([0, 1, 2]), {1: 1}, 3)
    with pytest.raises(ValueError, match="K >= 2"):
        encode(np.array([0, 1]), None, 1)
    with pytest.raises(ValueError, match=r"\[-3\]"):
        encode(np.array([0, -3]), None, 2)


def test_label_dtype_by_largest_absolute_value():
    assert label_dtype(np.array([-1, 127])) == np.int8
    assert label_dtype(np.array([0, 128])) == np.int16
    assert label_dtype(np.array([0, 40000])) == np.int32


# --- connected components -------------------------------------------------------------------------


def test_diagonal_squares_are_one_instance_full_and_two_face():
    semantic = np.zeros((6, 6), np.int8)
    semantic[0:2, 0:2] = 1  # at the border
    semantic[2:4, 2:4] = 1  # touches the first at a corner only
    semantic[4:6, 0:2] = 2  # touches the second at a corner, another class
    full, face = components(semantic, 3), components(semantic, 3, "face")
    expected_full = np.zeros((6, 6), int)
    expected_full[0:2, 0:2] = expected_full[2:4, 2:4] = 1  # instance 1, class 1
    expected_full[4:6, 0:2] = 4  # instance 2, class 2: (2 - 1) * 2 + 2
    assert full.tolist() == expected_full.tolist()
    expected_face = expected_full.copy()
    expected_face[2:4, 2:4] = 3  # instance 2, class 1
    expected_face[4:6, 0:2] = 6  # instance 3, class 2
    assert face.tolist() == expected_face.tolist()
    assert not components(np.zeros((3, 4), np.int8), 3).any()
    with pytest.raises(ValueError, match="'edge'"):
        components(semantic, 3, "edge")


@pytest.mark.parametrize("connectivity, rank", [("full", 3), ("face", 1)])
def test_components_match_scipy_in_3d_and_keep_ignore(connectivity, rank):
    rng = np.random.default_rng(0)
    semantic = rng.choice([0, 0, 0, 1, 2], size=(9, 8, 7)).astype(np.int8)
    semantic[0, 0, :] = -1  # ignored voxels stay ignored
    encoded = components(semantic, 3, connectivity)
    assert np.array_equal(class_map(encoded, 3), semantic)
    instances, classes = decode(encoded, 3)
    structure = ndimage.generate_binary_structure(3, rank)
    for c in (1, 2):
        reference, count = ndimage.label(semantic == c, structure=structure)
        mine = [i for i, k in classes.items() if k == c]
        assert len(mine) == count > 3
        # the same partition: every SciPy component is exactly one of ours
        pairs = {(int(a), int(b)) for a, b in zip(reference[reference > 0], instances[reference > 0])}
        assert len(pairs) == count and len({b for _, b in pairs}) == count


# --- instance datasets ----------------------------------------------------------------------------


def _png(array_xy: np.ndarray, path: Path) -> None:
    write_label_file(array_xy, Geometry.from_spacing(array_xy.shape), path)


def _instance_folder(root: Path) -> Path:
    """Three 2D cases: two touching objects (one at the border) with a JSON sidecar, two with a
    CSV sidecar, and an empty image without one."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    a = np.zeros((7, 5), np.uint8)
    a[0:3, 0:2] = 3  # at the border
    a[3:5, 0:2] = 8  # touches 3
    b = np.zeros((7, 5), np.uint8)
    b[1:3, 1:4], b[5:7, 3:5] = 1, 2
    for case, label in (("a", a), ("b", b), ("c", np.zeros((7, 5), np.uint8))):
        _png((label * 20 + 10).astype(np.uint8), root / "images" / f"{case}.png")
        _png(label, root / "labels" / f"{case}.png")
    (root / "labels" / "a.json").write_text(json.dumps({"3": 2, "8": 5}))
    (root / "labels" / "b.csv").write_text("id,class\n1,5\n2,2\n")
    return root


def test_folder_of_instance_maps_reads_json_and_csv_classes(tmp_path, caplog):
    root = _instance_folder(tmp_path / "nuclei")
    with caplog.at_level(logging.INFO, logger="medseg.io.instances"):
        data = as_instances(FolderDataset(root))
    assert data.mode == "map" and "'map'" in caplog.text and "a.json" in caplog.text
    assert data.label_spec.values == (0, 2, 5) and data.case_ids == ["a", "b", "c"]
    label = data.load("a").label
    expected = np.zeros((7, 5), int)
    expected[0:3, 0:2] = 1  # id 3 -> instance 1, class value 2 -> index 1
    expected[3:5, 0:2] = 4  # id 8 -> instance 2, class value 5 -> index 2: (2 - 1) * 2 + 2
    assert label.dtype == np.int32 and label.tolist() == expected.tolist()
    expected_b = np.zeros((7, 5), int)
    expected_b[1:3, 1:4] = 2  # id 1, class 5 -> index 2, instance 1
    expected_b[5:7, 3:5] = 3  # id 2, class 2 -> index 1, instance 2: 2 + 1
    assert data.load("b").label.tolist() == expected_b.tolist()
    assert not data.load("c").label.any()
    # the view pickles (preprocessing workers) and keeps its classes under a pipeline's spec
    again = pickle.loads(pickle.dumps(data.with_label_spec(data.label_spec)))
    assert np.array_equal(again.load("a").label, label)
    with pytest.raises(DataError, match=r"\[3, 8\].*mode='map'"):  # instance maps read as classes 0, 1
        InstanceDataset(FolderDataset(root, classes=[0, 1]), mode="components").load("a")
    (root / "labels" / "b.csv").write_text("id,class\n1,5\n2,3\n")
    with pytest.raises(DataError, match=r"b\.csv.*\[3\]"):
        data.load("b")


def test_instance_ids_past_int16_and_one_class_without_sidecars(tmp_path, oblique_affine):
    import nibabel as nib

    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    ids = np.zeros((6, 5, 4), np.int32)
    ids[0:2, :, :] = 40000  # at the border; a semantic reader would wrap it to int16
    ids[2:4, 0:2, 0:2] = 5
    nib.save(nib.Nifti1Image(np.ones(ids.shape, np.float32), oblique_affine), tmp_path / "images" / "v.nii.gz")
    nib.save(nib.Nifti1Image(ids, oblique_affine), tmp_path / "labels" / "v.nii.gz")
    data = InstanceDataset(FolderDataset(tmp_path))
    assert data.mode == "map" and data.label_spec == LabelSpec((0, 1), ("background", "object"))
    expected = np.where(ids == 5, 1, np.where(ids == 40000, 2, 0))
    assert data.load("v").label.tolist() == expected.tolist()


def test_msd_folder_with_declared_labels_gives_components(tmp_path, caplog):
    base = MSDDataset(hippocampus_subset(tmp_path / "hippo"))
    with caplog.at_level(logging.INFO, logger="medseg.io.instances"):
        data = as_instances(base)
    assert data.mode == "components" and "declares classes" in caplog.text
    assert data.label_spec == base.label_spec
    for case in data.case_ids:
        semantic, encoded = base.load(case).label, data.load(case).label
        assert np.array_equal(class_map(encoded, 3), semantic)
        _, classes = decode(encoded, 3)
        for c in (1, 2):
            count = ndimage.label(semantic == c, structure=np.ones((3, 3, 3)))[1]
            assert sum(k == c for k in classes.values()) == count >= 1


def test_bordercore_target_is_the_border_core_of_the_encoded_label(tmp_path):
    from medseg.instances.bordercore import bordercore_spec, to_bordercore

    base = MSDDataset(hippocampus_subset(tmp_path / "hippo", cases=("hippocampus_001",)))
    data = as_instances(base, target="bordercore")
    assert data.label_spec == bordercore_spec(base.label_spec) and data.semantic_spec == base.label_spec
    sample = data.load("hippocampus_001")
    encoded = as_instances(base).load("hippocampus_001").label
    assert np.array_equal(sample.label, to_bordercore(encoded, 3, sample.geometry.spacing))
    assert set(np.unique(sample.label).tolist()) == {0, 1, 2, 3}
    # a pipeline re-applies either the semantic classes or the border-core ones it planned
    assert data.with_label_spec(base.label_spec).label_spec == data.label_spec
    assert data.with_label_spec(data.label_spec).semantic_spec == base.label_spec
    assert as_instances(InstanceDataset(base, connectivity="face"), target="bordercore").connectivity == "face"


# --- predictions written and read back ------------------------------------------------------------

SPEC = LabelSpec((0, 2, 5), ("background", "small", "large"))


def test_write_read_instances_3d_keeps_geometry_classes_and_scores(tmp_path, oblique_affine):
    geometry = Geometry(oblique_affine, (6, 5, 4))
    encoded = np.zeros((6, 5, 4), np.int32)
    encoded[0:2, 0:2, 0:2] = 2  # instance 1, class index 2 (value 5), at the border
    encoded[2:4, 0:2, 0:2] = 3  # instance 2, class index 1 (value 2), touching instance 1
    encoded[4, 4, 3] = 5  # instance 3, class index 1
    encoded[5, 0, 0] = -1  # ignored: written as background
    path = write_instances(encoded, geometry, tmp_path / "out", "v", SPEC, scores={1: 0.9, 2: 0.5, 3: 0.25})
    assert path == tmp_path / "out" / "v.nii.gz"
    assert np.allclose(read_image_file(path)[1].affine, oblique_affine)
    instance_map, classes, scores = read_instances(path)
    assert np.array_equal(instance_map, np.maximum(decode(encoded, 3)[0], 0))
    assert classes == {1: 5, 2: 2, 3: 2} and scores == {1: 0.9, 2: 0.5, 3: 0.25}
    record = json.loads((tmp_path / "out" / "v.json").read_text())["instances"][1]
    assert record == {"id": 2, "class": 2, "name": "small", "score": 0.5, "voxels": 8,
                      "box": [2.0, 0.0, 0.0, 4.0, 2.0, 2.0]}
    assert not (tmp_path / "out" / "instances_coco.json").exists()  # 3D: no COCO file


def test_write_read_instances_2d_png_and_coco_json(tmp_path):
    from pycocotools.coco import COCO

    geometry = Geometry.from_spacing((7, 5), (0.5, 0.5))
    encoded = np.zeros((7, 5), np.int32)
    encoded[0:3, 0:2] = 1  # instance 1 of class 1, at the border
    encoded[3:6, 0:2] = 4  # instance 2 of class 2, touching it
    encoded[2:7, 3:5] = 5  # instance 3 of class 1, at two borders
    out = tmp_path / "out"
    write_instances(np.zeros((7, 5), np.int32), geometry, out, "first", SPEC)  # an empty image, kept
    write_instances(encoded[::-1], geometry, out, "case", SPEC, scores={1: 0.3})  # replaced below
    path = write_instances(encoded, geometry, out, "case", SPEC, scores={1: 0.9, 2: 0.8, 3: 0.7})
    instance_map, classes, scores = read_instances(path)
    assert path.name == "case.png" and np.array_equal(instance_map, decode(encoded, 3)[0])
    assert classes == {1: 2, 2: 5, 3: 2} and scores == {1: 0.9, 2: 0.8, 3: 0.7}
    coco = COCO(str(out / "instances_coco.json"))
    assert sorted(img["file_name"] for img in coco.dataset["images"]) == ["case.png", "first.png"]
    image = next(img for img in coco.dataset["images"] if img["file_name"] == "case.png")
    assert (image["height"], image["width"]) == (5, 7)  # COCO's (h, w) of medseg's (x, y)
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
    assert len(annotations) == 3 and len(coco.getAnnIds()) == 3
    for annotation, ident in zip(annotations, (1, 2, 3)):
        assert np.array_equal(coco.annToMask(annotation).T, instance_map == ident)
        assert annotation["category_id"] == classes[ident] and annotation["score"] == scores[ident]
    assert annotations[2]["bbox"] == [2.0, 3.0, 5.0, 2.0] and annotations[2]["area"] == 10.0
    assert {c["id"]: c["name"] for c in coco.dataset["categories"]} == {2: "small", 5: "large"}


def test_written_coco_json_reads_back_as_a_coco_instance_dataset(tmp_path):
    encoded = np.zeros((7, 5), np.int32)
    encoded[0:3, 0:2], encoded[3:6, 0:2], encoded[2:7, 3:5] = 1, 4, 5
    out = tmp_path / "predictions"
    write_instances(encoded, Geometry.from_spacing((7, 5)), out, "case", SPEC)
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    shutil.copy(out / "instances_coco.json", coco / "annotations" / "instances_default.json")
    (coco / "images").mkdir()
    _png(np.full((7, 5), 9, np.uint8), coco / "images" / "case.png")
    data = as_instances(open_dataset(coco))
    assert data.mode == "map"
    label = data.load("case").label
    assert np.array_equal(decode(label, 3)[0], decode(encoded, 3)[0])
    assert np.array_equal(class_map(label, 3), class_map(encoded, 3))


def test_more_than_255_instances_in_2d_go_to_a_16_bit_png(tmp_path):
    encoded = np.arange(20 * 15, dtype=np.int32).reshape(20, 15) + 1  # 300 one-pixel instances
    path = write_instances(encoded, Geometry.from_spacing((20, 15)), tmp_path, "many", LabelSpec((0, 1)))
    instance_map, classes, _ = read_instances(path)
    assert np.array_equal(instance_map, encoded) and set(classes.values()) == {1}


# --- labels past int16 through the cache and augmentation -----------------------------------------


class _OneCase(Dataset):
    """A dataset whose one case carries an encoded label of 40000 (past int16)."""

    def load(self, case_id: str) -> Sample:
        label = np.zeros((6, 5, 4), np.int32)
        label[1:3, 1:3, 1:3] = 40000
        label[0, 0, 0] = -1
        return Sample(case_id, np.ones((1, 6, 5, 4), np.float32), Geometry.from_spacing((6, 5, 4)), label)


def test_cache_and_augmentation_keep_40000(tmp_path):
    data = _OneCase({"x": CaseFiles((tmp_path / "x.npy",))}, root=tmp_path)
    (tmp_path / "x.npy").write_bytes(b"")
    cases = PreprocessedCases(data, [], cache_dir=tmp_path / "cache", workers=1).build()
    cached = np.asarray(cases.label("x"))
    assert cached.dtype == np.int32 and np.array_equal(cached, data.load("x").label)
    assert set(cases.foreground("x")) == {40000}
    label = data.load("x").label[:, :, 1]
    params = {"flip": [0], "rotate": [0.0], "scale": [1.0, 1.0]}
    image, out = Augmentation().apply(np.ones((1, 6, 5), np.float32), label, params, (6, 5))
    assert out.dtype == np.int32 and np.array_equal(out, label[::-1])
