"""Every registered loss trains through the Pipeline (distance maps from the loader workers)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import medseg
from medseg.cli import main
from medseg.losses import LOSSES
from tests.conftest import SAMPLES, write_disk_folder


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    root = tmp_path_factory.mktemp("disks")
    write_disk_folder(root, 6, seed=1)
    return root


@pytest.mark.parametrize("name", [*sorted(LOSSES), "dice+ce", "dice+boundary"])
def test_every_loss_trains_a_step(disks, name):
    data, outputs = medseg.FolderDataset(disks), 2
    if name.startswith("region_"):  # region losses train region (sigmoid) plans: one region, the disk
        data = data.with_label_spec(medseg.io.LabelSpec((0, 1), regions=((1,),), regions_class_order=(1,)))
        outputs = 1
    pipe = medseg.Pipeline(data, loss=name, device="cpu",
                           architecture=medseg.architectures.UNet(2, 1, outputs, features=(4, 8)),
                           training=medseg.TrainingConfig(workers=0))
    extras = pipe.loss_precompute()
    if name in ("boundary", "hausdorff", "dpce", "dice+boundary"):
        assert extras is not None  # distance maps come from the loader, not the step
    history = pipe.fit(epochs=1, iterations_per_epoch=2, val_fraction=0)
    assert math.isfinite(history[0]["loss"])


def test_cli_train_with_a_named_loss(tmp_path):
    code = main(["train", str(SAMPLES / "hc18"), "--out", str(tmp_path / "run"), "--loss", "dice+boundary",
                 "--epochs", "1", "--iterations-per-epoch", "1", "--workers", "0", "--val-fraction", "0"])
    assert code == 0
    config = (tmp_path / "run" / "pipeline.json").read_text()
    assert '"loss": "dice+boundary"' in config
    assert np.isfinite(__import__("json").loads(config)["history"][0]["loss"])
