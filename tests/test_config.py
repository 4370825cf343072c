"""Run settings: settings files, their layering under the command line, and what a resumed
run refuses to change; checked through ``medseg ... --print-config``."""

from __future__ import annotations

import json

import pytest
import yaml

from medseg.cli import main
from medseg.config import merge_settings, read_settings, resume_conflicts
from medseg.errors import DataError
from tests.conftest import write_disk_folder


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    root = tmp_path_factory.mktemp("config-disks")
    write_disk_folder(root, 6, seed=11)
    return root


def _printed(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    return yaml.safe_load(capsys.readouterr().out)


# --- files ----------------------------------------------------------------------------------------


def test_a_yaml_and_a_json_file_read_the_same(tmp_path):
    (tmp_path / "a.yaml").write_text("training: {epochs: 7, learning_rate: 0.01}\nloss: dice+ce\n")
    (tmp_path / "a.json").write_text(json.dumps({"training": {"epochs": 7, "learning_rate": 0.01}, "loss": "dice+ce"}))
    expected = {"training": {"epochs": 7, "learning_rate": 0.01}, "loss": "dice+ce"}
    assert read_settings(tmp_path / "a.yaml") == read_settings(tmp_path / "a.json") == expected


def test_a_pipeline_json_is_a_settings_file_without_its_records(tmp_path):
    (tmp_path / "pipeline.json").write_text(json.dumps(
        {"format": "medseg-pipeline/1", "loss": "focal", "split": {"train": ["a"]}, "history": [{"epoch": 1}]}))
    assert read_settings(tmp_path / "pipeline.json") == {"loss": "focal"}


@pytest.mark.parametrize(("text", "match"), [
    ("trainig: {epochs: 3}\n", r"unknown section\(s\) \['trainig'\]"),
    ("training: {epochs: 3, lr: 0.1}\n", r"unknown training setting\(s\) \['lr'\]; valid: amp,"),
    ("plan: {patchsize: [32, 32]}\n", r"unknown plan setting\(s\) \['patchsize'\]"),
    ("sampler: {ratio: 0.5}\n", r"unknown sampler setting\(s\) \['ratio'\]; valid: foreground_ratio"),
    ("training: 3\n", "section 'training' must be a mapping"),
    ("loss: [dice, ce]\n", "loss must be a name"),
    ("- 1\n- 2\n", "expected a mapping of sections"),
])
def test_unknown_or_malformed_settings_are_named(tmp_path, text, match):
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_settings(tmp_path / "s.yaml")


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "s.yaml").write_text("training: {epochs: [\n")
    with pytest.raises(DataError, match=r"s\.yaml: not valid YAML"):
        read_settings(tmp_path / "s.yaml")
    with pytest.raises(DataError, match=r"nowhere\.yaml: settings file not found"):
        read_settings(tmp_path / "nowhere.yaml")


def test_later_layers_win_key_by_key():
    merged = merge_settings({"training": {"epochs": 5, "seed": 1}, "loss": "dice"},
                            {"training": {"seed": 2}, "loss": "focal", "plan": {"batch_size": 3}})
    assert merged == {"training": {"epochs": 5, "seed": 2}, "loss": "focal", "plan": {"batch_size": 3}}


def test_resume_conflicts_are_what_a_running_run_cannot_change():
    saved = {"plan": {"patch_size": [40, 56, 40], "batch_size": 2}, "loss": "dice+ce",
             "architecture": {"name": "unet", "features": [16, 32]}, "training": {"optimizer": "adamw", "epochs": 5},
             "sampler": {"patch_size": [40, 56, 40]}}
    same = {"plan": {"patch_size": (40, 56, 40)}, "loss": "Dice + CE", "architecture": "UNet",
            "training": {"optimizer": "AdamW", "epochs": 9, "time_limit": 60.0}}
    assert resume_conflicts(saved, same) == []  # epochs and time_limit may change
    changed = {"plan": {"batch_size": 4}, "loss": "focal", "architecture": {"name": "unet", "features": [8, 16]},
               "training": {"optimizer": "sgd", "ema": 0.99}, "sampler": {"patch_size": [32, 32, 32]}}
    assert resume_conflicts(saved, changed) == [
        ("plan.batch_size", 2, 4), ("training.optimizer", "adamw", "sgd"), ("training.ema", None, 0.99),
        ("sampler.patch_size", [40, 56, 40], [32, 32, 32]),
        ("architecture", saved["architecture"], {"name": "unet", "features": [8, 16]}), ("loss", "dice+ce", "focal")]


# --- the command line -----------------------------------------------------------------------------


def test_flags_override_the_file_which_overrides_the_plan(disks, tmp_path, capsys):
    (tmp_path / "s.yaml").write_text("training: {epochs: 7, learning_rate: 0.01, seed: 4}\n"
                                     "plan: {batch_size: 3}\ninference: {mirror: true}\nsampler: {foreground_ratio: 0.5}\n")
    planned = _printed(capsys, "train", str(disks), "--print-config")
    settings = _printed(capsys, "train", str(disks), "--config", str(tmp_path / "s.yaml"), "--print-config",
                        "--lr", "0.005", "--patch-size", "32,32", "--no-amp", "--optimizer", "sgd")
    assert settings["training"] == {**planned["training"], "epochs": 7, "learning_rate": 0.005, "seed": 4,
                                    "amp": False, "optimizer": "sgd"}
    assert settings["plan"]["batch_size"] == 3 and settings["plan"]["patch_size"] == [32, 32]
    assert settings["sampler"] == {"patch_size": [32, 32], "foreground_ratio": 0.5, "slice_axis": None}
    assert {"name": "pad", "min_shape": [32, 32]} in settings["preprocessing"]
    assert settings["inference"]["mirror"] is True
    assert planned["training"]["amp"] is True and planned["plan"]["patch_size"] == [48, 64]
    assert _printed(capsys, "train", str(disks), "--print-config", "--amp")["training"]["amp"] is True


def test_printed_settings_read_back_as_the_same_settings(disks, tmp_path, capsys):
    first = _printed(capsys, "train", str(disks), "--print-config", "--batch-size", "5", "--loss", "dice+focal")
    (tmp_path / "printed.yaml").write_text(yaml.safe_dump(first))
    assert _printed(capsys, "train", str(disks), "--config", str(tmp_path / "printed.yaml"), "--print-config") == first


def test_classes_and_modality_reach_the_dataset(disks, capsys):
    settings = _printed(capsys, "train", str(disks), "--print-config", "--classes", "1=disk", "--modality", "CT")
    assert settings["plan"]["class_names"] == ["background", "disk"]
    assert settings["plan"]["normalization"] == "ct"
    assert any(step["name"].startswith("ct") for step in settings["preprocessing"])


def test_cv_takes_the_same_settings(disks, tmp_path, capsys):
    (tmp_path / "s.yaml").write_text("training: {iterations_per_epoch: 3}\n")
    settings = _printed(capsys, "cv", str(disks), "--config", str(tmp_path / "s.yaml"), "--print-config",
                        "--epochs", "2", "--batch-size", "2", "--lr", "0.02")
    assert settings["training"]["epochs"] == 2 and settings["training"]["iterations_per_epoch"] == 3
    assert settings["training"]["learning_rate"] == 0.02 and settings["plan"]["batch_size"] == 2


@pytest.mark.parametrize(("argv", "message"), [
    (["--config", "{cfg}", "--print-config"], "unknown training setting(s) ['lr']"),
    (["--patch-size", "32,32,32", "--print-config"], "patch_size [32, 32, 32] has 3 values; the network is 2D"),
    (["--patch-size", "32,x"], "argument --patch-size: '32,x': give positive integers"),
    (["--lr", "-1"], "argument --lr: '-1': must be > 0"),
    (["--classes", "liver"], "argument --classes: 'liver': give VALUE=NAME pairs"),
    (["--out", "{out}", "--resume", "--overwrite"], "give one of them"),
    ([], "--out is required"),
])
def test_bad_settings_end_in_one_line(disks, tmp_path, capsys, argv, message):
    (tmp_path / "bad.yaml").write_text("training: {lr: 0.1}\n")
    argv = [a.format(cfg=tmp_path / "bad.yaml", out=tmp_path / "run") for a in argv]
    assert main(["train", str(disks), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medseg train: error: ") and message in err, err


def test_a_loss_recipe_and_a_planned_unet_with_changes_are_settings(disks, tmp_path):
    """nnU-Net's loss (batch Dice without background, plus CE) and the planned U-Net with deep
    supervision, from a settings file: the network keeps the plan's widths and strides."""
    from medseg import Pipeline

    (tmp_path / "s.yaml").write_text(
        "architecture: {name: unet, deep_supervision: true}\n"
        "loss: {name: compound, weights: [1.0, 1.0], losses: [{name: dice, batch: true, include_background: false}, {name: ce}]}\n")
    settings = read_settings(tmp_path / "s.yaml")
    pipe = Pipeline(str(disks), architecture=settings["architecture"], loss=settings["loss"], device="cpu")
    assert pipe.network.deep_supervision is True
    assert list(pipe.network.hparams["features"]) == list(pipe.plan.features)
    assert [list(s) for s in pipe.network.hparams["strides"]] == [list(k) for k in pipe.plan.pool_kernels]
    dice = pipe.loss.losses[0]
    assert dice.batch is True and dice.include_background is False
    assert pipe.config()["loss"]["losses"][0]["batch"] is True  # saved, so pipeline.json is a settings file again
