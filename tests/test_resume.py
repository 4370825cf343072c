"""A resumed run is the same run: the saved loss, the stream position, the device of a loaded
pipeline, and the label check that moved from the losses to the data workers."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import medseg
from medseg.architectures import UNet
from medseg.io import FolderDataset
from medseg.losses import (
    BoundaryLoss,
    CompoundLoss,
    DiceLoss,
    LinearSchedule,
    TverskyLoss,
    create_loss,
)
from medseg.losses.base import as_labels
from medseg.preprocessing.cache import PreprocessedCases
from medseg.sampling import PatchSampler, PatchStream, create_augmentation, make_loader
from tests.conftest import write_disk_folder


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    root = tmp_path_factory.mktemp("disks")
    write_disk_folder(root, 10, seed=0, digits=2)
    return root


def _pipeline(data, loss=None, **training):
    torch.manual_seed(0)
    config = medseg.TrainingConfig(**{"workers": 0, "learning_rate": 3e-3, "seed": 0, **training})
    return medseg.Pipeline(data, architecture=UNet(2, 1, 2, features=(4, 8)), loss=loss,
                           sampler=PatchSampler(patch_size=(32, 32)), training=config, device="cpu")


# -- the loss is saved ----------------------------------------------------------------------------

def test_a_loss_with_arguments_comes_back_from_save_and_load(disks, tmp_path):
    data = FolderDataset(disks)
    _pipeline(data, TverskyLoss(alpha=0.7, beta=0.2)).save(tmp_path / "tversky")
    loaded = medseg.Pipeline.load(tmp_path / "tversky", data)
    assert type(loaded.loss) is TverskyLoss
    assert (loaded.loss.alpha, loaded.loss.beta) == (0.7, 0.2)

    _pipeline(data, DiceLoss(include_background=False) + 0.5 * BoundaryLoss()).save(tmp_path / "compound")
    loaded = medseg.Pipeline.load(tmp_path / "compound", data)
    assert isinstance(loaded.loss, CompoundLoss)
    assert [type(part) for part in loaded.loss.losses] == [DiceLoss, BoundaryLoss]
    assert loaded.loss.weights == [1.0, 0.5] and loaded.loss.losses[0].include_background is False
    saved = json.loads((tmp_path / "compound" / "pipeline.json").read_text())["loss"]
    assert saved["name"] == "compound" and saved["weights"] == [1.0, 0.5]


def test_schedules_of_a_compound_are_saved(disks, tmp_path):
    _pipeline(FolderDataset(disks), create_loss("dice+boundary")).save(tmp_path / "run")
    loss = medseg.Pipeline.load(tmp_path / "run").loss
    assert loss.weights == [LinearSchedule(1.0, 0.01, 0.01), LinearSchedule(0.0, 0.99, 0.01)]
    loss.set_epoch(30)
    assert loss.current_weights() == pytest.approx([0.7, 0.3])


class MyLoss(torch.nn.Module):
    def forward(self, logits, target):
        return torch.nn.functional.cross_entropy(logits, target)


def test_a_custom_loss_is_never_swapped_silently(disks, tmp_path):
    data = FolderDataset(disks)
    pipe = _pipeline(data, MyLoss())
    pipe.save(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "pipeline.json").read_text())["loss"] == {"custom": "MyLoss"}
    with pytest.raises(medseg.MedsegError, match=r"custom module \(MyLoss\).*`loss=`"):
        medseg.Pipeline.load(tmp_path / "run", data)
    assert isinstance(medseg.Pipeline.load(tmp_path / "run", data, loss=MyLoss()).loss, MyLoss)
    # for prediction no loss is needed; training the loaded pipeline says what is missing
    for_prediction = medseg.Pipeline.load(tmp_path / "run")
    with pytest.raises(medseg.MedsegError, match="MyLoss"):
        for_prediction.loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    for_prediction.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "pipeline.json").read_text())["loss"] == {"custom": "MyLoss"}


def test_a_config_without_a_loss_warns_when_loaded_to_train(disks, tmp_path):
    data = FolderDataset(disks)
    _pipeline(data).save(tmp_path / "run")
    config = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    config["loss"] = None  # what medseg wrote for any loss module before losses were recorded
    (tmp_path / "run" / "pipeline.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="does not record its loss"):
        medseg.Pipeline.load(tmp_path / "run", data)


# -- resume ---------------------------------------------------------------------------------------

def test_a_killed_pipeline_run_resumes_to_the_same_curve(disks, tmp_path, monkeypatch):
    data = FolderDataset(disks)
    ids = data.case_ids
    split = {"train_ids": ids[:8], "val_ids": ids[8:]}
    whole = _pipeline(data).fit(**split, epochs=4, iterations_per_epoch=3, output_dir=tmp_path / "a")

    killed = _pipeline(data)
    real = killed.validation_dice
    calls = itertools.count(1)

    def validation(*args):
        if next(calls) == 3:  # during epoch 3, after the checkpoint of epoch 2
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(killed, "validation_dice", validation)
    with pytest.raises(KeyboardInterrupt):
        killed.fit(**split, epochs=4, iterations_per_epoch=3, output_dir=tmp_path / "b")
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["batch"] == 6

    resumed = _pipeline(data).fit(**split, epochs=4, iterations_per_epoch=3, output_dir=tmp_path / "b", resume=True)
    assert [h["epoch"] for h in resumed] == [1, 2, 3, 4]
    for key in ("loss", "val_dice", "lr"):
        np.testing.assert_allclose([h[key] for h in resumed[2:]], [h[key] for h in whole[2:]], rtol=1e-6, atol=1e-6)
    assert (tmp_path / "b" / "model_best.pt").is_file()
    assert len((tmp_path / "b" / "log.csv").read_text().splitlines()) == 5


# -- the augmentation a run began with ---------------------------------------------------------------

def test_a_run_saves_its_augmentation_and_a_resumed_run_keeps_it(disks, tmp_path, monkeypatch):
    import dataclasses

    from medseg.sampling import AUGMENTATIONS

    data = FolderDataset(disks)
    split = {"train_ids": data.case_ids[:8], "val_ids": data.case_ids[8:]}
    pipe = _pipeline(data)
    pipe.fit(**split, epochs=1, iterations_per_epoch=2, output_dir=tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "pipeline.json").read_text())["patch_augmentation"]
    assert saved["rotation"] == 180.0 and saved["p_affine"] == 0.3 and saved["p_blur"] == 0.0  # the 2d preset
    assert medseg.Pipeline.load(tmp_path / "run", data).patch_augmentation == pipe.patch_augmentation

    # a later medseg whose 2d preset blurs: the resumed run keeps what it began with, and says so
    monkeypatch.setitem(AUGMENTATIONS, "2d", dataclasses.replace(AUGMENTATIONS["2d"], p_blur=0.2))
    resumed = _pipeline(data)
    with pytest.warns(UserWarning, match=r"continues with the augmentation it began with.*'p_blur': \(0.0, 0.2\)"):
        history = resumed.fit(**split, epochs=2, iterations_per_epoch=2, output_dir=tmp_path / "run", resume=True)
    assert [h["epoch"] for h in history] == [1, 2]
    assert resumed.patch_augmentation == pipe.patch_augmentation and resumed.patch_augmentation.p_blur == 0.0
    # a new run gets the new preset
    fresh = _pipeline(data)
    fresh.fit(**split, epochs=1, iterations_per_epoch=1, output_dir=tmp_path / "new")
    assert fresh.patch_augmentation.p_blur == 0.2


def test_a_run_saved_before_augmentations_were_kept_resumes_without_the_later_fields(disks, tmp_path, monkeypatch):
    import dataclasses

    from medseg.sampling import AUGMENTATIONS

    data = FolderDataset(disks)
    split = {"train_ids": data.case_ids[:8], "val_ids": data.case_ids[8:]}
    _pipeline(data).fit(**split, epochs=1, iterations_per_epoch=2, output_dir=tmp_path / "run")
    path = tmp_path / "run" / "pipeline.json"
    config = json.loads(path.read_text())
    del config["patch_augmentation"]  # as medseg 25aafdc wrote it
    path.write_text(json.dumps(config))
    monkeypatch.setitem(AUGMENTATIONS, "2d", dataclasses.replace(AUGMENTATIONS["2d"], p_contrast=0.15, p_lowres=0.25))
    resumed = _pipeline(data)
    with pytest.warns(UserWarning, match="continues with the augmentation it began with"):
        resumed.fit(**split, epochs=2, iterations_per_epoch=2, output_dir=tmp_path / "run", resume=True)
    began = resumed.patch_augmentation
    assert (began.p_contrast, began.p_lowres, began.rotation, began.p_affine) == (0.0, 0.0, 180.0, 0.3)


# -- the patch stream ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stream(disks, tmp_path_factory):
    pipe = _pipeline(FolderDataset(disks))
    cases = PreprocessedCases(pipe.data, pipe.preprocessing, cache_dir=tmp_path_factory.mktemp("cache"))
    cases = cases.build(pipe.data.case_ids)
    return PatchStream(cases, pipe.data.case_ids, PatchSampler(patch_size=(32, 32), foreground_ratio=0.33),
                       batch_size=3, augmentation=create_augmentation("2d"), num_classes=2, seed=5)


def _take(loader, n):
    return [b["image"].numpy() for b in itertools.islice(iter(loader), n)]


def test_the_stream_starts_at_any_batch_and_workers_keep_its_order(stream):
    one = _take(make_loader(stream, workers=0), 6)
    later = _take(make_loader(stream, workers=0, start_batch=4), 2)
    two_workers = _take(make_loader(stream, workers=2, start_batch=1), 5)
    for a, b in zip(one[4:], later, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(one[1:], two_workers, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_foreground_share_is_a_function_of_the_patch_index():
    sampler = PatchSampler(patch_size=(8, 8), foreground_ratio=1 / 3)
    first = [sampler.next_is_foreground() for _ in range(12)]
    assert first == [False, False, True] * 4
    sampler.drawn = 7  # as a stream starting at batch 7 of one patch sets it
    assert [sampler.next_is_foreground() for _ in range(5)] == first[7:12]


def test_the_stream_checks_label_values_once_per_batch(stream):
    wrong = PatchStream(stream.cases, stream.case_ids, stream.sampler, batch_size=2,
                        augmentation=stream.augmentation, num_classes=1, seed=0)
    with pytest.raises(medseg.DataError, match=r"label values \[1\] outside 0..0"):
        next(iter(wrong))


def test_labels_on_a_device_are_not_read_back_by_the_losses():
    # on a GPU, reading the label range back would stall every step: there the stream checks it
    logits = torch.zeros(2, 3, 4, 4, device="meta")
    labels = as_labels(logits, torch.full((2, 4, 4), 7, device="meta"))
    assert labels.device.type == "meta"
    with pytest.raises(ValueError, match="target values must lie in"):
        as_labels(torch.zeros(2, 3, 4, 4), torch.full((2, 4, 4), 7))


def test_cuda_device_strings_pin_memory(stream):
    for device in ("cuda", "cuda:1", torch.device("cuda", 0)):
        assert make_loader(stream, workers=0, device=device).pin_memory
    assert not make_loader(stream, workers=0, device="cpu").pin_memory


def test_prediction_runs_the_networks_on_the_pipeline_device(disks, monkeypatch):
    pipe = _pipeline(FolderDataset(disks))
    pipe.ensemble.append(UNet(2, 1, 2, features=(4, 8)))
    pipe.device = "meta"  # any device but the CPU the networks were built on
    seen = []

    def predict(networks, image, **kwargs):
        seen.extend(next(n.parameters()).device.type for n in networks)
        return np.zeros((2, *image.shape[1:]), dtype=np.float32)

    monkeypatch.setattr(medseg.prediction, "predict_probabilities", predict)
    pipe.predict_probabilities(np.zeros((1, 32, 32), dtype=np.float32))
    assert seen == ["meta", "meta"]
