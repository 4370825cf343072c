"""PASCAL VOC 2012, Cityscapes and CamVid folders read as they ship, trained, predicted in their own
files and scored as the plain folder they came from.

The folders are HC18 images and masks (data_samples/hc18, CC BY 4.0) rewritten in each layout by
tests/format_folders.py: the head is VOC "person" (15), Cityscapes "car" (id 26, trainId 13) on
"road" (id 7, trainId 0), CamVid "Car" on "Sky", with a void band along its contour, at three
image sizes.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from medseg.cli import main
from medseg.errors import DataError
from medseg.evaluation import folders
from medseg.io import Geometry, Sample, open_dataset
from medseg.io.formats import detect_format, format_names
from medseg.io.formats.palettes import CAMVID_32, id_to_train_id, train_id_to_id, voc_colormap
from medseg.planning import plan_dataset
from medseg.preprocessing import RGBNormalize, ZScore, create_step
from tests.format_folders import hc18_cases, write_camvid, write_cityscapes, write_plain, write_voc

WRITERS = {"voc": write_voc, "cityscapes": write_cityscapes, "camvid": write_camvid}
HEAD = {"voc": 15, "cityscapes": 13, "camvid": 8}  # the head's class value in each format
BACKGROUND = {"voc": 0, "cityscapes": 0, "camvid": 0}  # VOC background, Cityscapes road, CamVid Sky


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The plain folder and the three format folders of the same 8 cases."""
    root = tmp_path_factory.mktemp("formats")
    cases = hc18_cases(n=8)
    folders_ = {name: write(root / name, cases) for name, write in WRITERS.items()}
    folders_["plain"] = write_plain(root / "plain", cases)
    return cases, folders_


def _source_of(data, cases) -> dict[str, tuple]:
    """{case id of the format: the HC18 case it came from}, matched by image content."""
    out = {}
    for case in data.case_ids:
        image = data.load(case).image[0].T
        out[case] = next(c for c in cases if c[1].shape == image.shape and np.abs(c[1] - image).mean() < 3)
    return out


# --- reading -----------------------------------------------------------------------------------


def test_each_layout_is_detected_and_reads_classes_void_and_split(built):
    cases, roots = built
    assert {"voc", "cityscapes", "camvid"} <= set(format_names())
    assert detect_format(roots["plain"]) is None
    for name in WRITERS:
        assert detect_format(roots[name]) == name
        data = open_dataset(roots[name])
        assert data.label_spec.ignore == 255 and data.modality == ("R", "G", "B")
        for case, (_, grey, head, void) in _source_of(data, cases).items():
            sample = data.load(case)
            assert sample.image.shape == (3, *grey.T.shape)
            label = sample.label.T
            assert np.array_equal(label == -1, void)  # the void band is the ignore index
            assert np.array_equal(label == HEAD[name], head & ~void)
            assert np.array_equal(label == BACKGROUND[name], ~head & ~void)
    voc = open_dataset(roots["voc"])
    sets = voc.root / "ImageSets" / "Segmentation"
    assert voc.official_split == {s: (sets / f"{s}.txt").read_text().split() for s in ("train", "val")}
    assert voc.label_spec.names[15] == "person" and len(voc.label_spec.names) == 21
    assert voc.instances(voc.case_ids[0])[1] == {1: 15}
    city = open_dataset(roots["cityscapes"])
    assert [len(city.official_split[s]) for s in ("train", "val")] == [6, 2] and city.evaluation_cases[0].startswith(
        "frankfurt_")
    instances, classes = city.instances(city.case_ids[0])
    assert classes == {1: 13} and set(np.unique(instances)) == {0, 1}
    camvid = open_dataset(roots["camvid"])
    assert camvid.evaluation == "test" and len(camvid.official_split["test"]) == 2
    # road and Sky are classes, not a background: scored; VOC and COCO have a background
    assert 0 in city.label_spec.scored and 0 in camvid.label_spec.scored and 0 not in voc.label_spec.scored


def test_cityscapes_ids_map_to_train_ids_as_labels_py():
    # cityscapesScripts labels.py: trainId of ids 0..33, 255 ignored; license plate (-1) ignored
    expected = [255] * 7 + [0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                            255, 255, 16, 17, 18]
    assert id_to_train_id(np.arange(34)).tolist() == expected
    assert id_to_train_id(np.array([-1, 34, 255])).tolist() == [255, 255, 255]
    assert train_id_to_id(np.arange(19)).tolist() == [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
                                                      31, 32, 33]


def test_voc_colormap_is_the_devkits():
    cmap = voc_colormap()
    assert cmap[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert cmap[15].tolist() == [192, 128, 128] and cmap[255].tolist() == [224, 224, 192]


def test_layout_errors_name_the_file_and_the_fix(built, tmp_path):
    cases, _ = built
    voc = write_voc(tmp_path / "voc", cases[:3])
    (voc / "JPEGImages" / "2007_000002.jpg").unlink()
    with pytest.raises(DataError, match=r"2007_000002\.jpg"):
        open_dataset(voc)
    camvid = write_camvid(tmp_path / "camvid", cases[:3])
    label = next((camvid / "train_labels").glob("*_L.png"))
    Image.new("RGB", Image.open(label).size, (1, 2, 3)).save(label)
    data = open_dataset(camvid)
    with pytest.raises(DataError, match=r"\(1, 2, 3\).*class_dict\.csv"):
        data.load(data.official_split["train"][0])
    with pytest.raises(ValueError, match="fixed classes"):
        open_dataset(camvid, classes={1: "head"})
    assert main(["plan", str(camvid), "--format", "voc"]) == 2
    assert main(["plan", str(camvid), "--format", "pascal"]) == 2


# --- predictions in the format's own files, scored as the plain folder ------------------------------


def _shifted(head: np.ndarray, by: int = 3) -> np.ndarray:
    return np.roll(head, by, axis=1)


def _dice(pred: np.ndarray, ref: np.ndarray, keep: np.ndarray) -> float:
    pred, ref = pred & keep, ref & keep
    return 2 * float((pred & ref).sum()) / float(pred.sum() + ref.sum())


@pytest.mark.parametrize("name", list(WRITERS))
def test_predictions_in_own_files_score_as_the_plain_folder(built, tmp_path, name):
    cases, roots = built
    data = open_dataset(roots[name])
    sources = _source_of(data, cases)
    expected = {}
    for case in data.evaluation_cases:
        _, grey, head, void = sources[case]
        values = np.where(_shifted(head), HEAD[name], BACKGROUND[name]).T
        written = data.write_prediction(values, Geometry.from_spacing(values.shape), tmp_path / "pred", case)
        image = Image.open(written)
        if name == "voc":  # a palette PNG with the devkit's colours
            assert image.mode == "P" and image.getpalette()[: 3 * 256] == voc_colormap().ravel().tolist()
            assert written.name == f"{case}.png"
        elif name == "cityscapes":  # label ids, named as evalPixelLevelSemanticLabeling finds them
            assert image.mode == "L" and set(np.unique(np.asarray(image))) == {7, 26}
            assert written.name == f"{case}_leftImg8bit.png"
        else:  # colours from class_dict.csv
            colours = {tuple(c) for c in np.asarray(image.convert("RGB")).reshape(-1, 3)}
            assert colours == {(64, 0, 128), (128, 128, 128)} and colours <= set(CAMVID_32)
        plain = np.where(_shifted(head), 1, 0).astype(np.uint8)
        Image.fromarray(np.repeat(plain[..., None], 3, axis=2)[..., 0]).save(
            (tmp_path / "plain_pred").mkdir(exist_ok=True) or tmp_path / "plain_pred" / f"{sources[case][0]}.png")
        expected[sources[case][0]] = _dice(_shifted(head), head, ~void)
    labels, spec, _ = folders.resolve_classes(None, None, roots[name])
    format_rows = folders.evaluate_folders(tmp_path / "pred", roots[name], labels=labels, spec=spec)
    format_dice = {sources[r["case"]][0]: r["dice"] for r in format_rows if r["label"] == HEAD[name]}
    labels, spec, _ = folders.resolve_classes(None, None, roots["plain"] / "labelsTr")
    plain_rows = folders.evaluate_folders(tmp_path / "plain_pred", roots["plain"] / "labelsTr", labels=labels,
                                          spec=spec, cases=sorted(expected))
    plain_dice = {r["case"]: r["dice"] for r in plain_rows if r["label"] == 1}
    assert format_dice == pytest.approx(plain_dice, abs=1e-12)
    assert format_dice == pytest.approx(expected, abs=1e-12)  # by hand, the void band left out
    assert all(0.5 < d < 0.99 for d in expected.values())


# --- RGB normalisation and the natural-image plan -------------------------------------------------


def test_rgb_normalize_uses_imagenet_statistics_or_the_image():
    image = np.array([255.0, 0.0, 128.0], np.float32).reshape(3, 1, 1) * np.ones((3, 2, 3), np.float32)
    sample = Sample("a", image, Geometry.from_spacing((2, 3)))
    out = RGBNormalize()(sample).image[:, 0, 0]
    assert out.tolist() == pytest.approx([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225],
                                         rel=1e-6)
    image[:, 1] += np.array([10.0, 20.0, 30.0]).reshape(3, 1)
    varied = Sample("b", image, Geometry.from_spacing((2, 3)))
    assert np.allclose(RGBNormalize(statistics="image")(varied).image, ZScore()(varied).image)
    assert isinstance(create_step(**RGBNormalize().config()), RGBNormalize)
    with pytest.raises(ValueError, match="statistics='grey'"):
        RGBNormalize(statistics="grey")


def test_natural_plan_keeps_pixels_whatever_the_dpi(built, tmp_path):
    cases, roots = built
    camvid = write_camvid(tmp_path / "camvid", cases)
    for path in (camvid / "train").glob("*.png"):  # a DPI in some files must not resample them
        Image.open(path).save(path, dpi=(300, 300))
    grey = next((camvid / "val").glob("*.png"))  # a grey photograph among colour ones reads as RGB
    Image.open(grey).convert("L").save(grey)
    data = open_dataset(camvid)
    assert data.load(grey.stem).image.shape[0] == 3
    plan = plan_dataset(data, device="cpu")
    sizes = [data.load(c).image.shape[1:] for c in data.case_ids]
    assert plan.target_spacing == (1.0, 1.0) and plan.median_shape == tuple(np.median(sizes, axis=0).astype(int))
    assert plan.normalization == "imagenet" and plan.augmentation == "natural" and plan.in_channels == 3
    strides = [int(np.prod([k[a] for k in plan.pool_kernels])) for a in range(2)]
    assert all(p % s == 0 and p >= m for p, s, m in zip(plan.patch_size, strides, plan.median_shape))
    assert plan.batch_size >= 2
    from medseg import Pipeline

    pipe = Pipeline(data, device="cpu")
    assert [s.name for s in pipe.preprocessing] == ["rgb", "pad"]  # no crop, no resampling
    assert pipe.training_augmentation("auto").scale == (0.5, 2.0)
    changed = pipe.training_augmentation({"p_flip": 0.0})  # a settings mapping changes the plan's preset
    assert changed.scale == (0.5, 2.0) and changed.p_flip == 0.0
    assert pipe.split_cases() == (data.official_split["train"], data.official_split["val"])  # the format's split
    train, val = pipe.split_cases(val_fraction=0.5)  # unless a share is asked for
    assert sorted(train + val) == sorted(data.case_ids) and len(val) == 4


# --- the command line, without options ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WRITERS))
def test_train_predict_evaluate_on_each_layout(built, tmp_path, name, capsys):
    _, roots = built
    run, pred = tmp_path / "run", tmp_path / "pred"
    steps = ["--epochs", "1", "--iterations-per-epoch", "2", "--patch-size", "96,96", "--batch-size", "2",
             "--workers", "0"]
    if name == "cityscapes":
        steps += ["--architecture", "deeplabv3plus"]
    assert main(["train", str(roots[name]), "--out", str(run), *steps]) == 0
    data = open_dataset(roots[name])
    saved = json.loads((run / "pipeline.json").read_text())
    assert saved["split"] == {"train": data.official_split["train"], "val": data.official_split["val"]}
    assert saved["plan"]["normalization"] == "imagenet"
    assert main(["predict", str(run), str(roots[name]), "--out", str(pred)]) == 0
    assert sorted(p.name for p in pred.iterdir()) == sorted(data.prediction_name(c) for c in data.evaluation_cases)
    for file in pred.iterdir():
        values = data.read_values(file)
        assert values.shape == Image.open(data.cases[file.name.split("_leftImg8bit")[0].removesuffix(".png")
                                                     .removesuffix("_L")].label).size[::-1]
        assert set(np.unique(values)) <= set(range(data.label_spec.num_classes))
    capsys.readouterr()
    assert main(["evaluate", str(pred), str(roots[name]), "--out", str(tmp_path / "m.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert set(data.evaluation_cases) <= {r["case"] for r in rows}


def test_camvid_reads_the_32_class_label_colors_txt(built, tmp_path):
    cases, _ = built
    camvid = write_camvid(tmp_path / "camvid", cases[:3])
    lines = "".join(f"{r} {g} {b}\t{name}\n" for (r, g, b), name in CAMVID_32.items())
    (camvid / "class_dict.csv").unlink()
    (camvid / "label_colors.txt").write_text(lines)
    data = open_dataset(camvid)
    label = data.load(data.official_split["train"][0]).label
    assert set(np.unique(label)) == {-1, 0, 8}  # Void, Sky, Car
    assert data.label_spec.names == ("Sky", "Building", "Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence",
                                     "Car", "Pedestrian", "Bicyclist")


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_cv_report_overlays_read_predictions_in_the_formats_values(built, tmp_path, name):
    """The report's overlays read each fold's written prediction back through the format (VOC
    palette indices, Cityscapes trainIds, CamVid colours -> class values), not as a raw image."""
    from medseg.evaluation.cv_report import _overlays

    data = open_dataset(built[1][name])
    chosen = data.official_split["val"][:2]
    expected, rows, files = {}, [], {}
    for number, case in enumerate(chosen):
        sample = data.load(case)
        values = data.label_spec.decode(np.clip(sample.label, 0, None))  # the reference, void -> background
        expected[case] = values
        path = data.write_prediction(values, sample.geometry, tmp_path / "fold_0" / "predictions", case)
        files[case] = path.relative_to(tmp_path / "fold_0").as_posix()
        rows.append({"case": case, "label": HEAD[name], "dice": 0.5 + number / 4})
    overlays = _overlays(data, [{"fold": 0, "rows": rows, "predictions": files}], tmp_path, 2)
    assert sorted(overlays) == sorted(chosen)
    for case in chosen:
        assert set(np.unique(overlays[case].prediction)) == {BACKGROUND[name], HEAD[name]}
        assert np.array_equal(overlays[case].prediction, expected[case])


def test_natural_images_pad_labels_with_the_ignore_index(built):
    """A photograph padded up to the patch: the padding is ignored, not trained as background."""
    from medseg import Pipeline
    from medseg.io.labels import IGNORE_INDEX

    pipe = Pipeline(open_dataset(built[1]["voc"]))
    assert pipe.plan.normalization == "imagenet" and pipe.plan.label_spec.ignore == 255
    assert pipe.default_steps()[-1].config()["label_fill"] == IGNORE_INDEX
