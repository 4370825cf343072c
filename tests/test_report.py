"""Tests of medseg.evaluation.report: tables read back numerically, valid PNGs, links, atomicity."""

from __future__ import annotations

import csv
import json
import math
import re
import struct
import sys

import numpy as np
import pytest

from medseg.evaluation import plots as plots_module
from medseg.evaluation import report as report_module
from medseg.evaluation.metrics import METRIC_NAMES, compute_metrics, metrics_to_rows
from medseg.evaluation.plots import label_title
from medseg.evaluation.report import OverlayCase, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_case(rng: np.random.Generator, shape, shift: int):
    """A box reference, a prediction shifted by ``shift`` along axis 0, and a noisy image."""
    reference = np.zeros(shape, dtype=np.int64)
    box = tuple(slice(n // 4, 3 * n // 4) for n in shape)
    reference[box] = 1
    reference[(slice(box[0].start, box[0].start + 2), *box[1:])] = 2  # a label-2 rim
    prediction = np.roll(reference, shift, axis=0)
    image = reference * 100.0 + rng.normal(0, 10, size=shape)
    return image.astype(np.float32), reference, prediction


@pytest.fixture(scope="module")
def evaluation():
    """Rows of six 3D cases in two folds (case c5 with a missing label 2), overlays, histories."""
    rng = np.random.default_rng(0)
    rows, overlays = [], {}
    for i in range(6):
        image, reference, prediction = make_case(rng, (16, 14, 8), shift=i)
        if i == 5:
            prediction[prediction == 2] = 0  # label 2 missing: infinite distances, NaN precision
        metrics = compute_metrics(prediction, reference, spacing=(1.0, 1.0, 2.0))
        rows += metrics_to_rows(metrics, case=f"c{i}", fold=i % 2)
        overlays[f"c{i}"] = OverlayCase(image[None], reference, prediction)
    histories = [
        [{"epoch": e, "loss": 1.0 / (e + 1), "val_dice": 0.5 + 0.04 * e} for e in range(10)],
        [{"epoch": e, "loss": 1.2 / (e + 1)} for e in range(8)],  # no validation entries
    ]
    return rows, overlays, histories


@pytest.fixture(scope="module")
def written(evaluation, tmp_path_factory):
    rows, overlays, histories = evaluation
    folder = tmp_path_factory.mktemp("report")
    paths = write_report(folder, rows, histories=histories, overlays=overlays, title="Test run")
    return folder, paths


def as_float(text: str) -> float:
    return float(text)  # 'nan', 'inf' parse too


def from_json(value) -> float:
    assert value is not None, "non-finite values are written as 'nan'/'inf', never null"
    return float(value)  # 'nan', 'inf' parse too


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


def test_all_files_written_and_no_temporaries(written):
    folder, paths = written
    names = {p.name for p in paths}
    expected = {"metrics.csv", "metrics.json", "summary.csv", "summary.json", "report.md"}
    expected |= {f"boxplot_{m}.png" for m in METRIC_NAMES} | {"training_curves.png"}
    expected |= {"overlay_c0.png", "overlay_c5.png", "overlay_c3.png"}  # best, worst, median
    assert names == expected
    assert paths[-1].name == "report.md"
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)  # no *.tmp left behind


def test_metrics_csv_and_json_match_rows(written, evaluation):
    folder, _ = written
    rows = evaluation[0]
    with open(folder / "metrics.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["fold", "case", "label", *METRIC_NAMES]
    loaded = json.loads((folder / "metrics.json").read_text())
    assert len(table) == len(loaded) == len(rows)
    for row, line, record in zip(rows, table, loaded, strict=True):
        assert (line["case"], int(line["label"]), int(line["fold"])) == (
            row["case"],
            row["label"],
            row["fold"],
        )
        assert (record["case"], record["label"], record["fold"]) == (
            row["case"],
            row["label"],
            row["fold"],
        )
        for name in METRIC_NAMES:
            assert same(as_float(line[name]), row[name]), name
            assert same(from_json(record[name]), row[name]), name
    worst = [r for r in loaded if r["case"] == "c5" and r["label"] == 2][0]
    assert worst["hd"] == "inf" and worst["precision"] == "nan"  # as the CSV: 'inf', 'nan'


def test_summary_matches_numpy(written, evaluation):
    folder, _ = written
    rows = evaluation[0]
    with open(folder / "summary.csv", newline="") as handle:
        table = {(int(r["label"]), r["metric"]): r for r in csv.DictReader(handle)}
    summary = json.loads((folder / "summary.json").read_text())
    assert sorted(summary) == ["1", "2"]
    for label in (1, 2):
        for name in METRIC_NAMES:
            values = np.array([r[name] for r in rows if r["label"] == label], dtype=float)
            finite = values[np.isfinite(values)]
            expected = {
                "mean": np.mean(finite),
                "std": np.std(finite),
                "median": np.median(finite),
                "n": finite.size,
                "n_nan": np.isnan(values).sum(),
                "n_inf": np.isinf(values).sum(),
            }
            for key, value in expected.items():
                assert as_float(table[label, name][key]) == pytest.approx(value), (label, name)
                assert from_json(summary[str(label)][name][key]) == pytest.approx(value)
    assert summary["2"]["hd"]["n_inf"] == 1 and summary["2"]["precision"]["n_nan"] == 1


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_pngs_are_valid(written):
    folder, paths = written
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) == len(METRIC_NAMES) + 1 + 3
    for path in pngs:
        assert path.stat().st_size > 1000
        width, height = png_size(path)
        assert width > 100 and height > 100


def test_report_md_links_every_file(written):
    folder, paths = written
    text = (folder / "report.md").read_text()
    assert text.startswith("# Test run")
    links = set(re.findall(r"\]\(([^)]+)\)", text))
    assert links == {p.name for p in paths if p.name != "report.md"}
    assert all((folder / link).is_file() for link in links)
    assert "worst case" in text and "median case" in text and "best case" in text
    assert "| 1 | dice |" in text


def test_overlay_selection_by_mean_dice(evaluation):
    rows = evaluation[0]
    chosen = report_module._select_overlays(rows, ["c0", "c1", "c2", "c3", "c4", "c5"])
    assert [(case, roles) for case, roles, _ in chosen] == [
        ("c5", "worst"),
        ("c3", "median"),  # ascending c5 c4 c3 c2 c1 c0, lower median
        ("c0", "best"),
    ]
    one = report_module._select_overlays(rows, ["c3"])
    assert [(case, roles) for case, roles, _ in one] == [("c3", "worst/median/best")]
    with pytest.warns(UserWarning, match="no Dice"):
        assert report_module._select_overlays(rows, ["unknown"]) == []


def test_pick_slice_and_2d_overlay(tmp_path):
    reference = np.zeros((6, 6, 5), dtype=np.int64)
    reference[1:3, 1:3, 1] = 1
    reference[1:5, 1:5, 3] = 1
    assert plots_module._pick_slice(reference, reference) == 3
    assert plots_module._pick_slice(np.zeros_like(reference), reference) == 3
    assert plots_module._pick_slice(np.zeros_like(reference), np.zeros_like(reference)) == 2
    rng = np.random.default_rng(1)
    image, ref2d, pred2d = make_case(rng, (20, 24), shift=1)
    rows = metrics_to_rows(compute_metrics(pred2d, ref2d), case="flat/2d", fold=None)
    paths = write_report(tmp_path, rows, overlays={"flat/2d": (image, ref2d, pred2d)})
    overlay = tmp_path / "overlay_flat_2d.png"
    assert overlay in paths and png_size(overlay)[0] > 100
    assert "training_curves.png" not in {p.name for p in paths}


def test_tables_only_without_plots(tmp_path):
    rows = [{"case": "a", "label": 1, "dice": 0.5, "extra": "x"}]
    paths = write_report(tmp_path, rows, plots=False)
    assert [p.name for p in paths] == [
        "metrics.csv",
        "metrics.json",
        "summary.csv",
        "summary.json",
        "report.md",
    ]
    header = (tmp_path / "metrics.csv").read_text().splitlines()
    assert header == ["fold,case,label,dice,extra", ",a,1,0.5,x"]


def test_rewrites_existing_report(tmp_path):
    write_report(tmp_path, [{"case": "a", "label": 1, "dice": 0.5}], plots=False)
    write_report(tmp_path, [{"case": "a", "label": 1, "dice": 0.25}], plots=False)
    assert json.loads((tmp_path / "summary.json").read_text())["1"]["dice"]["mean"] == 0.25


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")

    def failing(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        report_module._atomic_write(target, failing)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"medseg\[report\]"):
        write_report(tmp_path, [{"case": "a", "label": 1, "dice": 0.5}])
    assert list(tmp_path.iterdir()) == []  # nothing written before the failure


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rows": []}, "rows is empty"),
        ({"rows": [{"label": 1, "dice": 1.0}]}, r"lacks \['case'\]"),
        (
            {
                "rows": [{"case": "a", "label": 1, "dice": 1.0}],
                "overlays": {"a": (np.zeros((4, 4)), np.zeros((4, 5)), np.zeros((4, 4)))},
            },
            "overlay 'a'.*same|share one",
        ),
    ],
)
def test_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_report(tmp_path, **kwargs)


def test_class_names_label_the_report_but_not_the_tables(evaluation, tmp_path):
    rows = evaluation[0]
    write_report(tmp_path, rows, plots=False, label_names=["background", "Anterior", "Posterior"])
    text = (tmp_path / "report.md").read_text()
    assert "| Anterior (1) | dice |" in text and "| Posterior (2) | dice |" in text
    assert "| 1 | dice |" not in text
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert {row["label"] for row in csv.DictReader(f)} == {"1", "2"}
    assert label_title(2, {2: "Posterior"}) == "Posterior (2)" and label_title(3, {2: "Posterior"}) == "label 3"


def test_one_encoding_for_non_finite_values_in_every_table(tmp_path):
    from medseg.evaluation.folders import write_metrics_csv
    from medseg.evaluation.tables import from_json, to_json

    rows = [{"case": "a", "label": 1, "dice": 0.0, "precision": math.nan, "hd": math.inf},
            {"case": "b", "label": 1, "dice": 0.5, "precision": 0.25, "hd": 2.0}]
    write_report(tmp_path / "report", rows, plots=False)
    record = json.loads((tmp_path / "report" / "metrics.json").read_text())[0]
    assert (record["precision"], record["hd"]) == ("nan", "inf")
    assert from_json(record)["hd"] == math.inf and math.isnan(from_json(record)["precision"])
    assert to_json({"x": -math.inf, 2: np.float32(0.5), "t": (1, 2)}) == {"x": "-inf", "2": 0.5, "t": [1, 2]}
    with open(tmp_path / "report" / "metrics.csv", newline="") as handle:
        report_cells = list(csv.DictReader(handle))[0]
    write_metrics_csv(rows, tmp_path / "folders.csv")
    with open(tmp_path / "folders.csv", newline="") as handle:
        folder_rows = list(csv.DictReader(handle))
    for cells in (report_cells, folder_rows[0]):
        assert (cells["precision"], cells["hd"]) == ("nan", "inf")
    mean = folder_rows[-1]  # finite values only, as summary.csv: the inf HD is counted, not averaged
    assert mean["case"] == "mean" and float(mean["hd"]) == 2.0 and float(mean["precision"]) == 0.25
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())["1"]["hd"]
    assert (summary["mean"], summary["n_inf"]) == (2.0, 1)
    write_report(tmp_path / "report", [*rows, {"case": "a", "label": 2, "dice": 0.0, "hd": math.inf}], plots=False)
    assert "| 2 | hd | nan | nan | nan | 0 | 0 | 1 |" in (tmp_path / "report" / "report.md").read_text()
