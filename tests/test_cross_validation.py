"""Cross-validation end to end on tiny 2D disks: folds, predictions, report values, resume."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import medseg
import medseg.pipeline
from medseg.evaluation import compute_metrics
from medseg.evaluation.cross_validation import cross_validate
from medseg.io import read_image_file
from tests.conftest import disk_images

FOLDS = 3


def _write_png(array: np.ndarray, path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: tiny convolutions run several times slower on a loaded, shared CPU
    when threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    """12 images of 6 subjects (``s<k>_0``, ``s<k>_1``) with their disk masks."""
    root = tmp_path_factory.mktemp("cv-disks")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i, (image, label) in enumerate(disk_images(12, seed=3)):
        _write_png(image, root / "images" / f"s{i // 2}_{i % 2}.png")
        _write_png(label, root / "masks" / f"s{i // 2}_{i % 2}_mask.png")
    return root


def _pipeline(root, *, group_pattern: str | None = r"^(s\d+)_", patch=(48, 48), loss=None, workers=0,
              features=(8, 16)) -> medseg.Pipeline:
    data = medseg.FolderDataset(root, group_pattern=group_pattern)
    architecture = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                    "features": list(features)}
    return medseg.Pipeline(data, architecture=architecture, device="cpu", loss=loss,
                           training=medseg.TrainingConfig(workers=workers, seed=0),
                           sampler=medseg.sampling.PatchSampler(patch_size=patch))


@pytest.fixture(scope="module")
def finished(disks, tmp_path_factory):
    """A finished 3-fold run: (pipeline, output folder, summary)."""
    pipe = _pipeline(disks)
    out = tmp_path_factory.mktemp("cv-run")
    summary = cross_validate(pipe, FOLDS, output_dir=out, epochs=1, iterations_per_epoch=2)
    return pipe, out, summary


def _count_training(monkeypatch, fail: bool = False) -> list[dict]:
    """Record each call of the training loop (its checkpoint and resume flag)."""
    calls: list[dict] = []
    real = medseg.pipeline.train

    def counted(*args, **kwargs):
        if fail:
            raise AssertionError("training ran although nothing was left to train")
        checkpoint = kwargs["checkpoint"]
        calls.append({"checkpoint": checkpoint, "resume": kwargs["resume"],
                      "existed": checkpoint.is_file()})
        return real(*args, **kwargs)

    monkeypatch.setattr(medseg.pipeline, "train", counted)
    return calls


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_each_case_is_validated_once_with_its_subject(finished):
    pipe, out, summary = finished
    cv = json.loads((out / "cv.json").read_text())
    assert (cv["folds"], cv["seed"], cv["groups"]) == (FOLDS, 0, True)
    predicted = {}
    for k, split in enumerate(cv["splits"]):
        assert sorted(split["train"] + split["val"]) == sorted(pipe.data.case_ids)
        files = sorted(p.name for p in (out / f"fold_{k}" / "predictions").iterdir())
        assert files == sorted(f"{case}.png" for case in split["val"])
        predicted.update(dict.fromkeys(split["val"], k))
    assert sorted(predicted) == sorted(pipe.data.case_ids)  # every case, in one fold only
    assert sum(len(split["val"]) for split in cv["splits"]) == 12
    for subject in range(6):  # both images of a subject in the same fold
        assert predicted[f"s{subject}_0"] == predicted[f"s{subject}_1"]
    assert summary["folds"] == FOLDS and summary["cases"] == 12


def test_report_values_are_the_metrics_of_the_written_predictions(finished):
    pipe, out, summary = finished
    report = out / "report"
    rows = _read_csv(report / "metrics.csv")
    assert len(rows) == 12  # one row per case for the single foreground label
    fold_of = {row["case"]: int(row["fold"]) for row in rows}
    for row in rows:
        case = row["case"]
        sample = pipe.data.load(case)
        prediction = read_image_file(out / f"fold_{fold_of[case]}" / "predictions" / f"{case}.png")[0][0]
        assert prediction.shape == sample.label.shape == (48, 64)
        expected = compute_metrics(prediction, sample.label, spacing=sample.geometry.spacing,
                                   labels=[1])[1]
        assert int(row["label"]) == 1
        for metric, value in expected.items():
            np.testing.assert_allclose(float(row[metric]), value, rtol=1e-12, equal_nan=True)
    dice = [float(row["dice"]) for row in rows]
    assert summary["mean_dice"][1] == pytest.approx(np.mean(dice), rel=1e-12)
    for k in range(FOLDS):
        in_fold = [float(row["dice"]) for row in rows if int(row["fold"]) == k]
        assert summary["fold_mean_dice"][k][1] == pytest.approx(np.mean(in_fold), rel=1e-12)
    summary_rows = {(r["label"], r["metric"]): r for r in _read_csv(report / "summary.csv")}
    assert float(summary_rows[("1", "dice")]["mean"]) == pytest.approx(np.mean(dice), rel=1e-12)
    assert summary["report"] == report / "report.md"
    text = (report / "report.md").read_text()
    assert text.startswith("# 3-fold cross-validation") and "12 cases, 3 folds." in text
    assert (report / "boxplot_dice.png").stat().st_size > 0
    assert (report / "training_curves.png").stat().st_size > 0
    ranked = sorted(dice)
    overlays = sorted(report.glob("overlay_*.png"))
    assert len(overlays) == len({ranked[0], ranked[5], ranked[-1]})  # worst, median, best


def test_fold_records_hold_the_training_history(finished):
    _, out, _ = finished
    for k in range(FOLDS):
        record = json.loads((out / f"fold_{k}" / "metrics.json").read_text())
        checkpoint = torch.load(out / f"fold_{k}" / "checkpoint.pt", weights_only=True)
        assert record["fold"] == k and record["seed"] == k
        assert [entry["epoch"] for entry in record["history"]] == [1]
        assert record["history"] == checkpoint["history"]
        assert record["history"][0]["steps"] == 2
        assert 0.0 <= record["history"][0]["val_dice"] <= 1.0


def test_a_finished_run_is_not_trained_again(finished, monkeypatch):
    pipe, out, summary = finished
    _count_training(monkeypatch, fail=True)
    again = cross_validate(pipe, FOLDS, output_dir=out, epochs=1, iterations_per_epoch=2)
    assert again == summary


@pytest.mark.parametrize(("change", "match"), [({"folds": 4}, "'folds': 3"), ({"seed": 1}, "'seed': 0"),
                                               ({"groups": False}, "'groups': True")])
def test_a_run_made_with_other_settings_is_refused(finished, monkeypatch, change, match):
    pipe, out, _ = finished
    _count_training(monkeypatch, fail=True)
    options = {"folds": FOLDS, "output_dir": out, "epochs": 1, "iterations_per_epoch": 2, **change}
    with pytest.raises(ValueError, match=match):
        cross_validate(pipe, **options)


def test_bad_overlay_count_is_refused(finished, tmp_path):
    pipe, _, _ = finished
    with pytest.raises(ValueError, match="overlays must be 0, 1, 2 or 3"):
        cross_validate(pipe, FOLDS, output_dir=tmp_path, overlays=5)


def test_the_folder_loads_as_an_ensemble_of_the_folds(finished, disks):
    _, out, _ = finished
    loaded = medseg.Pipeline.load(out)
    networks = [loaded.network, *loaded.ensemble]
    assert len(networks) == FOLDS
    for k, network in enumerate(networks):
        saved = torch.load(out / f"fold_{k}" / "model.pt", weights_only=True)["model"]
        for name, value in network.state_dict().items():
            torch.testing.assert_close(value.cpu(), saved[name], rtol=0, atol=0)
    predictions = loaded.predict(disks / "images")
    assert len(predictions) == 12
    for labels in predictions.values():
        assert labels.shape == (48, 64) and set(np.unique(labels)) <= {0, 1}


def test_a_killed_run_resumes_where_it_stopped(disks, tmp_path, monkeypatch):
    out = tmp_path / "cv"
    calls: list[int] = []
    real = medseg.pipeline.train

    def killed_in_fold_1_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # fold 1: Ctrl-C during epoch 2, after epoch 1 was checkpointed
            validate, epochs_validated = kwargs["validate"], []

            def interrupted():
                epochs_validated.append(1)
                if len(epochs_validated) == 2:
                    raise KeyboardInterrupt
                return validate()

            kwargs["validate"] = interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(medseg.pipeline, "train", killed_in_fold_1_epoch_2)
    options = {"output_dir": out, "epochs": 2, "iterations_per_epoch": 2}
    with pytest.raises(KeyboardInterrupt):
        cross_validate(_pipeline(disks), FOLDS, **options)
    assert (out / "fold_0" / "metrics.json").is_file()
    assert not (out / "fold_1" / "metrics.json").exists() and not (out / "fold_2").exists()
    before = torch.load(out / "fold_1" / "checkpoint.pt", weights_only=True)
    assert before["epoch"] == 1
    fold_0 = {name: (out / "fold_0" / name).stat().st_mtime_ns
              for name in ("checkpoint.pt", "model.pt", "metrics.json", "pipeline.json")}

    rerun = _count_training(monkeypatch)
    summary = cross_validate(_pipeline(disks), FOLDS, **options)
    assert [call["checkpoint"].parent.name for call in rerun] == ["fold_1", "fold_2"]
    assert rerun[0]["resume"] and rerun[0]["existed"]  # fold 1 continued its checkpoint
    assert fold_0 == {name: (out / "fold_0" / name).stat().st_mtime_ns for name in fold_0}
    history = json.loads((out / "fold_1" / "metrics.json").read_text())["history"]
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert history[0] == before["history"][0]  # epoch 1 kept, not trained again
    for k in range(FOLDS):
        assert (out / f"fold_{k}" / "metrics.json").is_file()
        assert (out / f"fold_{k}" / "model.pt").is_file()
    assert summary["folds"] == FOLDS and summary["cases"] == 12
    assert math.isfinite(summary["mean_dice"][1])
    assert len(_read_csv(out / "report" / "metrics.csv")) == 12


# --- settings kept in cv.json; unfinished folds -------------------------------------------------


def test_cv_json_keeps_the_settings_and_their_digest(finished):
    _, out, _ = finished
    cv = json.loads((out / "cv.json").read_text())
    settings = cv["settings"]
    assert settings["fit"] == {"epochs": 1, "iterations_per_epoch": 2, "time_limit": None}
    assert (settings["folds"], settings["seed"], settings["groups"]["subjects"]) == (FOLDS, 0, 6)
    assert settings["plan"]["patch_size"] == [48, 48] and settings["architecture"]["features"] == [8, 16]
    assert "history" not in settings and "split" not in settings and "workers" not in settings["training"]
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    assert cv["settings_digest"] == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(("pipeline", "options", "match"), [
    ({}, {"epochs": 2}, r"fit\.epochs: 1 in cv\.json, 2 now"),
    ({}, {"time_limit": 60.0}, r"fit\.time_limit: null in cv\.json, 60\.0 now"),
    ({"loss": "focal"}, {}, r"loss: .* in cv\.json, \"focal\" now"),
    ({"patch": (32, 32)}, {}, r"plan\.patch_size: \[48, 48\] in cv\.json, \[32, 32\] now"),
    ({"features": (8, 24)}, {}, r"architecture\.features: \[8, 16\] in cv\.json, \[8, 24\] now"),
    ({"group_pattern": None}, {}, r"groups\.subjects: 6 in cv\.json, 12 now"),
])
def test_a_rerun_with_other_settings_is_refused_naming_them(finished, disks, monkeypatch, pipeline, options, match):
    _, out, _ = finished
    _count_training(monkeypatch, fail=True)
    before = (out / "cv.json").read_text()
    with pytest.raises(ValueError, match=match):
        cross_validate(_pipeline(disks, **pipeline), FOLDS, output_dir=out,
                       **{"epochs": 1, "iterations_per_epoch": 2, **options})
    assert (out / "cv.json").read_text() == before


def test_settings_that_change_no_result_may_differ(finished, disks, monkeypatch):
    pipe, out, summary = finished
    _count_training(monkeypatch, fail=True)
    again = cross_validate(_pipeline(disks, workers=2), FOLDS, output_dir=out, epochs=1, iterations_per_epoch=2)
    assert again == summary


def test_a_cv_json_without_settings_resumes_with_a_warning(finished, disks, tmp_path, monkeypatch):
    _, out, summary = finished
    old = tmp_path / "old"
    shutil.copytree(out, old)
    cv = json.loads((old / "cv.json").read_text())
    del cv["settings"], cv["settings_digest"]
    (old / "cv.json").write_text(json.dumps(cv))
    _count_training(monkeypatch, fail=True)
    with pytest.warns(UserWarning, match="written before cross-validation kept its settings"):
        again = cross_validate(_pipeline(disks), FOLDS, output_dir=old, epochs=1, iterations_per_epoch=2)
    assert again["mean_dice"] == summary["mean_dice"]
    assert "settings_digest" in json.loads((old / "cv.json").read_text())  # recorded now
    with pytest.raises(ValueError, match="fit.epochs"):  # and checked from then on
        cross_validate(_pipeline(disks), FOLDS, output_dir=old, epochs=3, iterations_per_epoch=2)


def test_unfinished_folds_load_with_a_warning_naming_them(finished, tmp_path):
    _, out, _ = finished
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    (partial / "fold_1" / "metrics.json").unlink()  # fold 1 still predicting
    (partial / "fold_2" / "model.pt").unlink()      # fold 2 still training
    with pytest.warns(UserWarning, match=r"folds \[1, 2\] of 3 have not finished.*holds folds \[0\] only"):
        loaded = medseg.Pipeline.load(partial)
    assert loaded.ensemble == []
    saved = torch.load(out / "fold_0" / "model.pt", weights_only=True)["model"]
    for name, value in loaded.network.state_dict().items():
        torch.testing.assert_close(value.cpu(), saved[name], rtol=0, atol=0)
    (partial / "fold_0" / "metrics.json").unlink()
    with pytest.raises(medseg.errors.DataError, match="no fold of this cross-validation has finished"):
        medseg.Pipeline.load(partial)
