"""COCO folders: masks decoded as pycocotools decodes them, read as a dataset, trained on,
predicted as a results JSON that pycocotools loads, and scored as the plain folder they came from.

The COCO folder is built from the 16 HC18 images (CC BY 4.0) at 1/8 size: each head is category
1 "head" (a polygon from rays out of its centroid, an uncompressed RLE or a compressed one), its
inner part category 7 "centre" (overlapping the head: smaller on top), and two crowd regions. The
plain folder it came from holds the same images and the masks pycocotools draws (0, 1 head,
2 centre, 255 crowd).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medseg.cli import main
from medseg.errors import DataError
from medseg.evaluation.folders import score_folders
from medseg.io import IGNORE_INDEX, LabelSpec, open_dataset
from medseg.io.formats.coco import CocoDataset
from medseg.io.formats.coco_masks import area, bbox, decode_polygons, decode_rle, encode_rle

mask_api = pytest.importorskip("pycocotools.mask")  # in the test extra: the independent reference
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2
from pycocotools.coco import COCO  # noqa: E402

HC18 = Path(__file__).resolve().parent.parent / "data_samples" / "hc18"
SIZE = (100, 68)  # HC18's 800 x 540 at 1/8 (w, h)
CROWDED = {"001_HC": "train2017", "014_2HC": "val2017"}


# --- the codec against pycocotools -----------------------------------------------------------------


def test_compressed_counts_by_hand():
    # [[0, 1], [1, 1]] column-major: 0 1 | 1 1 -> runs 1 zero, 3 ones -> characters 48+1, 48+3
    assert encode_rle(np.array([[0, 1], [1, 1]], bool)) == {"size": [2, 2], "counts": "13"}
    # runs 40 = 0b01000 + (1 << 5): low five bits 8 with the continuation bit (8 | 32) + 48 = 'X', then 1 -> '1'
    mask = np.zeros((41, 1), bool)
    mask[40] = True
    assert encode_rle(mask)["counts"] == "X11"
    assert decode_rle({"size": [41, 1], "counts": "X11"}).tolist() == mask.tolist()
    assert area({"size": [2, 2], "counts": [1, 3]}) == 3
    assert bbox(np.array([[0, 0, 0], [0, 1, 1]], bool)) == [1.0, 1.0, 2.0, 1.0]


def test_polygons_and_rle_decode_as_pycocotools_does():
    rng = np.random.default_rng(3)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(2, 40, 2))
        polygons = [list(rng.uniform(-2, max(h, w) + 2, 2 * int(rng.integers(3, 8))).round(int(rng.integers(0, 3))))
                    for _ in range(int(rng.integers(1, 3)))]
        expected = mask_api.decode(mask_api.merge(mask_api.frPyObjects(polygons, h, w))).astype(bool)
        assert np.array_equal(decode_polygons(polygons, h, w), expected), polygons
        mask = rng.random((h, w)) < rng.random()
        theirs = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert encode_rle(mask)["counts"] == theirs["counts"].decode()  # the same string, byte for byte
        assert np.array_equal(mask_api.decode({**encode_rle(mask), "counts": encode_rle(mask)["counts"]}), mask)
        uncompressed = encode_rle(mask, compressed=False)
        assert np.array_equal(mask_api.decode(mask_api.frPyObjects(uncompressed, h, w)).astype(bool), mask)
        assert np.array_equal(decode_rle(theirs), mask) and np.array_equal(decode_rle(uncompressed), mask)
        assert area(theirs) == int(mask_api.area(theirs)) and bbox(mask) == mask_api.toBbox(theirs).tolist()


def test_damaged_rle_and_polygon_name_the_problem():
    with pytest.raises(DataError, match=r"add up to 3 pixels, not 4"):
        decode_rle({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(DataError, match="at least 3 points"):
        decode_polygons([[0, 0, 1, 1]], 4, 4)


# --- the folder ------------------------------------------------------------------------------------


def _head_polygon(head: np.ndarray) -> list[float]:
    """Points where 24 rays out of the centroid leave the head."""
    cy, cx = ndimage.center_of_mass(head)
    points = []
    for angle in np.linspace(0, 2 * np.pi, 24, endpoint=False):
        r = 0.0
        while True:
            y, x = cy + (r + 0.5) * np.sin(angle), cx + (r + 0.5) * np.cos(angle)
            if not (0 <= round(y) < head.shape[0] and 0 <= round(x) < head.shape[1]) or not head[round(y), round(x)]:
                break
            r += 0.5
        points += [round(float(cx + r * np.cos(angle)) + 0.5, 2), round(float(cy + r * np.sin(angle)) + 0.5, 2)]
    return points


def _head_segmentation(i: int, head: np.ndarray):
    if i % 3 == 0:
        return [_head_polygon(head)]
    rle = mask_api.encode(np.asfortranarray(head.astype(np.uint8)))
    if i % 3 == 1:
        return {"size": rle["size"], "counts": encode_rle(head, compressed=False)["counts"]}
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _drawn(segmentation, h: int, w: int) -> np.ndarray:
    """The mask pycocotools draws (COCO.annToMask's rule)."""
    if isinstance(segmentation, list):
        rle = mask_api.merge(mask_api.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation["counts"], list):
        rle = mask_api.frPyObjects(segmentation, h, w)
    else:
        rle = segmentation
    return mask_api.decode(rle).astype(bool)


def build_coco(root: Path, source: Path = HC18, size: tuple[int, int] = SIZE, train: int = 12) -> Path:
    """``root/coco`` (annotations/, train2017/, val2017/) and ``root/plain`` (images/, masks/):
    the first ``train`` images of ``source`` in train2017, the others in val2017."""
    w, h = size
    files, ann_id = {"train2017": ([], []), "val2017": ([], [])}, 0
    for i, path in enumerate(sorted((source / "images").glob("*.png"))):
        case, split = path.stem, "train2017" if i < train else "val2017"
        image = Image.open(path).resize(size, Image.BILINEAR)
        head = np.asarray(Image.open(source / "masks" / f"{case}_mask.png").resize(size, Image.NEAREST)) > 0
        depth = ndimage.distance_transform_edt(head)
        centre = depth > 0.45 * depth.max()
        for folder, mode in ((root / "coco" / split, "RGB"), (root / "plain" / "images", "L")):  # COCO is colour
            folder.mkdir(parents=True, exist_ok=True)
            image.convert(mode).save(folder / f"{case}.png")
        images, annotations = files[split]
        images.append({"id": 100 + i, "file_name": f"{case}.png", "height": h, "width": w})
        objects = [(1, _head_segmentation(i, head), 0), (7, _head_segmentation(i + 1, centre), 0)]
        if case in CROWDED:
            objects.append((1, encode_rle(np.pad(np.ones((10, 20), bool), ((0, h - 10), (0, w - 20))),
                                          compressed=False), 1))
        plain = np.zeros((h, w), np.uint8)
        drawn = [(_drawn(s, h, w), c, crowd) for c, s, crowd in objects]
        for mask, category, _ in sorted([d for d in drawn if not d[2]], key=lambda d: -d[0].sum()):
            plain[mask] = {1: 1, 7: 2}[category]
        for mask, _, _ in (d for d in drawn if d[2]):
            plain[mask] = 255
        (root / "plain" / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(plain).save(root / "plain" / "masks" / f"{case}_mask.png")
        for category, segmentation, crowd in objects:
            ann_id += 1
            annotations.append({"id": ann_id, "image_id": 100 + i, "category_id": category, "iscrowd": crowd,
                                "segmentation": segmentation, "area": float(_drawn(segmentation, h, w).sum()),
                                "bbox": bbox(_drawn(segmentation, h, w))})
    (root / "coco" / "annotations").mkdir(parents=True)
    categories = [{"id": 1, "name": "head", "supercategory": "body"}, {"id": 7, "name": "centre", "supercategory": "body"}]
    for split, (images, annotations) in files.items():
        (root / "coco" / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root / "coco"


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return build_coco(tmp_path_factory.mktemp("coco"))


def _plain_label(coco: Path, case: str) -> np.ndarray:
    return np.asarray(Image.open(coco.parent / "plain" / "masks" / f"{case}_mask.png")).T  # (x, y) as medseg reads


def test_reads_the_folder_as_pycocotools_draws_it(coco):
    data = open_dataset(coco)
    assert isinstance(data, CocoDataset) and len(data) == 16
    assert [len(data.official_split[s]) for s in ("train", "val")] == [12, 4]
    assert data.label_spec == LabelSpec((0, 1, 7), ("background", "head", "centre"), ignore=255)
    for case in data.case_ids:
        sample = data.load(case)
        expected = LabelSpec((0, 1, 2), ignore=255).encode(_plain_label(coco, case))  # 0 1 2, crowd -1
        assert np.array_equal(sample.label, expected), case
        plain = np.asarray(Image.open(coco.parent / "plain" / "images" / f"{case}.png")).T
        assert sample.image.shape == (3, *SIZE) and np.array_equal(sample.image[1], plain)
    crowd = data.load("001_HC").label == IGNORE_INDEX
    assert crowd.sum() == 200 and crowd[:20, :10].all()  # the 20 x 10 crowd box (x, y) is ignored
    objects = data.instances("002_HC")
    assert objects.classes.tolist() == [1, 2] and objects.annotation_ids.tolist() == [4, 5]
    assert np.array_equal(objects.instance_map == 2, data.load("002_HC").label == 2)


def test_overlaps_smaller_on_top_then_later_id_and_crowd_ignored(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "images" / "a.png")
    square = lambda x0, y0, x1, y1: [[x0, y0, x1, y0, x1, y1, x0, y1]]  # noqa: E731
    anns = [(1, 3, square(0, 0, 4, 4), 0), (2, 5, square(2, 2, 5, 5), 0), (3, 3, square(2, 0, 5, 3), 0),
            (4, 5, square(6, 0, 8, 2), 1)]
    (tmp_path / "annotations" / "instances_default.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 6, "width": 8}],
        "categories": [{"id": 3, "name": "b"}, {"id": 5, "name": "c"}],
        "annotations": [{"id": i, "image_id": 1, "category_id": c, "segmentation": s, "iscrowd": k}
                        for i, c, s, k in anns]}))
    data = open_dataset(tmp_path)
    # 16-pixel square (id 1) first; the 9-pixel squares (ids 2, 3) over it, id 3 over id 2; crowd box -> 255
    expected = np.zeros((6, 8), np.uint8)
    expected[0:4, 0:4] = 3
    expected[2:5, 2:5] = 5
    expected[0:3, 2:5] = 3
    expected[0:2, 6:8] = 255
    assert data.reference_values("a").T.tolist() == expected.tolist()
    assert data.official_split == {"default": ["a"]}


def test_train_predict_evaluate_from_the_command_line(coco, tmp_path, capsys):
    run, pred = tmp_path / "run", tmp_path / "pred"
    assert main(["train", str(coco), "--out", str(run), "--epochs", "1", "--iterations-per-epoch", "2",
                 "--patch-size", "32,32", "--batch-size", "2", "--workers", "0", "--device", "cpu",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "label values    [0, 1, 7], ignore 255" in capsys.readouterr().out
    assert main(["predict", str(run), str(coco), "--out", str(pred), "--device", "cpu"]) == 0
    assert main(["evaluate", str(pred), str(coco), "--out", str(tmp_path / "summary.json")]) == 0
    assert "mean IoU" in capsys.readouterr().out
    results = sorted(p.name for p in pred.glob("*.json"))
    assert results == ["segmentations_val2017_results.json"] or "segmentations_train2017_results.json" in results
    ground = COCO(str(coco / "annotations" / "instances_val2017.json"))
    loaded = ground.loadRes(str(pred / "segmentations_val2017_results.json"))  # pycocotools reads it
    assert {a["image_id"] for a in loaded.dataset["annotations"]} <= {112, 113, 114, 115}
    assert all(a["score"] == 1.0 and a["category_id"] in (1, 7) for a in loaded.dataset["annotations"])
    block = json.loads((tmp_path / "summary_dataset.json").read_text())
    assert set(block["iou"]) == {"0", "1", "7"} and block["names"] == ["background", "head", "centre"]
    assert np.sum(block["confusion_matrix"]) == 4 * SIZE[0] * SIZE[1] - 200  # the val crowd box is left out


def test_scores_equal_the_plain_folder_it_came_from(coco, tmp_path):
    data = open_dataset(coco)
    rng = np.random.default_rng(0)
    for case in data.official_split["val"]:  # an imperfect prediction: the reference shifted, a class swapped
        truth = np.clip(data.load(case).label, 0, None)
        values = np.asarray((0, 1, 7))[np.roll(truth, int(rng.integers(1, 4)), axis=0)]
        values[:3, :3] = 7
        data.write_prediction(values, data.load(case).geometry, tmp_path / "coco_pred", case)
        (tmp_path / "png_pred").mkdir(exist_ok=True)  # the same prediction as the plain folder's PNG: 7 -> 2
        Image.fromarray(np.asarray((0, 1, 0, 0, 0, 0, 0, 2), np.uint8)[values].T).save(tmp_path / "png_pred" / f"{case}.png")
    _, coco_scores = score_folders(tmp_path / "coco_pred", coco, spec=data.label_spec, all_metrics=True)
    plain_refs = coco.parent / "plain" / "masks"
    _, plain_scores = score_folders(tmp_path / "png_pred", plain_refs, spec=LabelSpec((0, 1, 2), ignore=255),
                                    cases=data.official_split["val"], all_metrics=True)
    assert [s.case for s in coco_scores] == [s.case for s in plain_scores] == sorted(data.official_split["val"])
    for mine, plain in zip(coco_scores, plain_scores):
        assert [mine.metrics[k] for k in (1, 7)] == [plain.metrics[k] for k in (1, 2)]
        assert np.array_equal(mine.matrix, plain.matrix)
        assert mine.matrix.sum() == SIZE[0] * SIZE[1] - (200 if mine.case in CROWDED else 0)


def test_sharded_writers_all_land_in_the_one_results_file(coco, tmp_path):
    """Two processes (two dataset objects) writing parts of one split in turns: every entry survives."""
    first, second = open_dataset(coco), open_dataset(coco)
    cases = sorted(first.official_split["val"])
    for number, case in enumerate(cases):  # parts interleave: 0, 1, 0, 1
        data = (first, second)[number % 2]
        values = np.asarray((0, 1, 7))[np.clip(data.load(case).label, 0, None)]
        data.write_prediction(values, data.load(case).geometry, tmp_path / "pred", case)
    assert [p.name for p in (tmp_path / "pred").iterdir()] == ["segmentations_val2017_results.json"]  # no lock left
    loaded = COCO(str(coco / "annotations" / "instances_val2017.json")).loadRes(
        str(tmp_path / "pred" / "segmentations_val2017_results.json"))
    assert {a["image_id"] for a in loaded.dataset["annotations"]} == {first.images[c].image_id for c in cases}
    read = first.prediction_values(tmp_path / "pred")
    assert sorted(read) == cases
    for case in cases:
        expected = first.reference_values(case).copy()
        expected[expected == 255] = 0  # the prediction painted crowd pixels as background
        assert np.array_equal(read[case], expected)


def test_cv_report_overlays_read_the_results_json(coco, tmp_path):
    """The report reads a fold's COCO prediction from its results JSON (category ids), not as an image."""
    from medseg.evaluation.cv_report import _overlays

    data = open_dataset(coco)
    chosen = sorted(data.official_split["val"])[:2]
    rows, files, expected = [], {}, {}
    for number, case in enumerate(chosen):
        sample = data.load(case)
        expected[case] = np.asarray((0, 1, 7))[np.clip(sample.label, 0, None)]
        if number == 1:
            expected[case][:] = 0  # all background: no entry in the JSON
        path = data.write_prediction(expected[case], sample.geometry, tmp_path / "fold_0" / "predictions", case)
        files[case] = path.relative_to(tmp_path / "fold_0").as_posix()
        rows.append({"case": case, "label": 1, "dice": 0.5 + number / 4})
    overlays = _overlays(data, [{"fold": 0, "rows": rows, "predictions": files}], tmp_path, 2)
    assert sorted(overlays) == chosen
    for case in chosen:
        assert np.array_equal(overlays[case].prediction, expected[case])
    assert set(np.unique(overlays[chosen[0]].prediction)) == {0, 1, 7}
