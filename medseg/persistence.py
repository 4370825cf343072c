"""Saving and loading pipelines: a JSON config and a weights-only checkpoint, nothing pickled."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .errors import DataError, MedsegError
from .inference import InferenceConfig
from .io import Dataset, atomic_path
from .planning import Plan
from .preprocessing import create_step
from .sampling import PatchSampler
from .training import TrainingConfig, load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from .pipeline import Pipeline

__all__ = ["load_pipeline", "save_pipeline", "write_config"]


def write_config(config: dict[str, Any], folder: Path) -> None:
    """Write ``pipeline.json`` atomically."""
    with atomic_path(Path(folder) / "pipeline.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2))


def save_pipeline(pipe: Pipeline, folder: str | os.PathLike) -> Path:
    """Write ``pipeline.json`` and ``model.pt`` (weights only) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model": pipe.network.state_dict()}, folder / "model.pt")
    write_config(pipe.config(), folder)
    return folder


def load_pipeline(
    cls: type[Pipeline],
    folder: str | os.PathLike,
    data: Dataset | str | os.PathLike | None = None,
    *,
    architecture: nn.Module | None = None,
    loss: nn.Module | str | None = None,
    device: str | None = None,
) -> Pipeline:
    """See :meth:`medseg.Pipeline.load`."""
    folder = Path(folder)
    folds = sorted(p.parent for p in folder.glob("fold_*/model.pt"))
    if not (folder / "pipeline.json").is_file() and folds:  # a cross-validation run: ensemble
        pipe = load_pipeline(cls, folds[0], data, architecture=architecture, loss=loss, device=device)
        for fold in folds[1:]:
            member = load_pipeline(cls, fold, architecture=copy.deepcopy(architecture), device=device)
            pipe.ensemble.append(member.network)
        return pipe
    config_path = folder / "pipeline.json"
    if not config_path.is_file():
        raise DataError(f"{folder}: no pipeline.json; is this a folder written by Pipeline.save or medseg train?")
    config = json.loads(config_path.read_text())
    spec = config["architecture"]
    if architecture is None and spec is None:
        raise MedsegError(f"{folder}: the network was a custom module; pass it as `architecture=`.")
    pipe = cls(
        data,
        plan=Plan.from_dict(config["plan"]),
        preprocessing=[create_step(**s) for s in config["preprocessing"]],
        sampler=PatchSampler(**config["sampler"]),
        architecture=architecture if architecture is not None else spec,
        loss=loss if loss is not None else config["loss"],
        training=TrainingConfig(**config["training"]),
        inference=InferenceConfig(**config["inference"]),
        device=device,
    )
    weights = folder / "model.pt" if (folder / "model.pt").is_file() else folder / "checkpoint.pt"
    pipe.network.load_state_dict(load_checkpoint(weights)["model"])
    pipe.network.to(pipe.device)
    pipe.split, pipe.history = config.get("split", {}), config.get("history", [])
    return pipe
