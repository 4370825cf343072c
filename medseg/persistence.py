"""Saving and loading pipelines: a JSON config and a weights-only checkpoint, nothing pickled."""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import DataError, MedsegError
from .inference import InferenceConfig
from .io import Dataset, atomic_path
from .planning import Plan
from .preprocessing import create_step
from .sampling import Augmentation, PatchSampler, create_augmentation
from .training import TrainingConfig, load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from .pipeline import Pipeline

__all__ = ["load_pipeline", "run_augmentation", "save_pipeline", "write_config"]

LATER_AUGMENTATION_FIELDS = ("p_blur", "p_contrast", "p_lowres")
"""Augmentation fields that came after runs began to be saved without their augmentation: such a
run trained with all three off."""


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


def run_augmentation(asked: Augmentation, folder: Path | None, resume: bool) -> Augmentation:
    """The augmentation a run trains with: ``asked``, except when it resumes the run in ``folder``
    (a checkpoint is there): then the one that run began with, as its ``pipeline.json`` saved it, so
    neither other settings nor other preset defaults of a later medseg change a run's patches
    (a warning says so where they differ). A run saved before medseg kept its augmentation trained
    with the later fields off."""
    if not (resume and folder is not None and (folder / "checkpoint.pt").is_file() and (folder / "pipeline.json").is_file()):
        return asked
    saved = json.loads((folder / "pipeline.json").read_text()).get("patch_augmentation")
    began = (create_augmentation(saved) if saved is not None else
             create_augmentation({**asked.config(), **dict.fromkeys(LATER_AUGMENTATION_FIELDS, 0.0)}))
    if began != asked:
        changed = {k: (v, getattr(asked, k)) for k, v in began.config().items() if v != getattr(asked, k)}
        warnings.warn(f"{folder}: the run continues with the augmentation it began with; these fields would differ "
                      f"now (began, asked): {changed}", stacklevel=3)
    return began


def _finished_folds(folder: Path) -> list[Path]:
    """The finished folds (``model.pt`` and ``metrics.json``) of a cross-validation folder, in order.

    Unfinished folds are left out of the ensemble with a warning that names them (a partial
    ensemble still predicts, e.g. while the other folds train); none finished is an error.
    """
    found = {int(p.name[5:]): p for p in folder.glob("fold_*") if p.is_dir() and p.name[5:].isdigit()}
    try:
        expected = list(range(int(json.loads((folder / "cv.json").read_text())["folds"])))
    except (OSError, ValueError, KeyError, TypeError):
        expected = sorted(found)
    done = [k for k in expected if k in found and all((found[k] / n).is_file() for n in ("model.pt", "metrics.json"))]
    missing = [k for k in expected if k not in done]
    if missing and expected:
        if not done:
            raise DataError(f"{folder}: no fold of this cross-validation has finished (no fold_<k>/model.pt with "
                            f"metrics.json); rerun it to train them.")
        warnings.warn(f"{folder}: folds {missing} of {len(expected)} have not finished (no model.pt or metrics.json); "
                      f"the ensemble holds folds {done} only. Rerun the cross-validation to finish them.",
                      stacklevel=4)
    return [found[k] for k in done]


def load_pipeline(
    cls: type[Pipeline],
    folder: str | os.PathLike,
    data: Dataset | str | os.PathLike | None = None,
    *,
    architecture: nn.Module | None = None,
    loss: nn.Module | str | None = None,
    device: str | None = None,
    weights: bool = True,
) -> Pipeline:
    """See :meth:`medseg.Pipeline.load`."""
    folder = Path(folder)
    folds = _finished_folds(folder) if not (folder / "pipeline.json").is_file() else []
    if folds:  # a cross-validation run: ensemble of its finished folds
        pipe = load_pipeline(cls, folds[0], data, architecture=architecture, loss=loss, device=device)
        for fold in folds[1:]:
            member = load_pipeline(cls, fold, architecture=copy.deepcopy(architecture), device=device)
            pipe.ensemble.append(member.network)
        return pipe
    config_path = folder / "pipeline.json"
    if not config_path.is_file():
        raise DataError(f"{folder}: no pipeline.json; is this a folder written by Pipeline.save or medseg train?")
    config = json.loads(config_path.read_text())
    exported = _exported_networks(folder, config, device)  # an export folder (medseg export): no weights
    architecture = exported[0] if exported else architecture
    spec = config["architecture"]
    if architecture is None and spec is None:
        raise MedsegError(f"{folder}: the network was a custom module; pass it as `architecture=`.")
    pipe = cls(
        data,
        plan=Plan.from_dict(config["plan"]),
        preprocessing=[create_step(**s) for s in config["preprocessing"]],
        sampler=PatchSampler(**config["sampler"]),
        architecture=architecture if architecture is not None else spec,
        loss=loss if loss is not None else _saved_loss(config, folder, data),
        training=TrainingConfig(**config["training"]),
        inference=InferenceConfig(**config["inference"]),
        device=device,
    )
    if weights and not exported:
        found = folder / "model.pt" if (folder / "model.pt").is_file() else folder / "checkpoint.pt"
        pipe.network.load_state_dict(load_checkpoint(found)["model"])
    pipe.network.to(pipe.device)
    pipe.split, pipe.history = config.get("split", {}), config.get("history", [])
    if config.get("patch_augmentation") is not None:
        pipe.patch_augmentation = create_augmentation(config["patch_augmentation"])
    pipe.ensemble.extend(exported[1:])  # an exported fold ensemble
    if loss is None and isinstance(pipe.loss, _UnsavedLoss):
        pipe.loss_spec = config["loss"]  # saved again as it came
    return pipe


def _exported_networks(folder: Path, config: dict[str, Any], device: str | None) -> list[nn.Module]:
    """The networks of an export folder (its ``pipeline.json`` has an ``"export"`` entry); none for a run."""
    if "export" not in config:
        return []
    from .inference.exported import load_exported_networks

    return load_exported_networks(folder, config["export"], device=device)


class _UnsavedLoss(nn.Module):
    """Stands in for a custom loss that ``pipeline.json`` could not hold: predicting needs no
    loss; training raises."""

    def __init__(self, name: str, folder: Path, activation: str) -> None:
        super().__init__()
        self.name, self.folder = name, folder
        self.activation = activation  # what the pipeline checks against its labels

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise MedsegError(f"{self.folder}: the loss was a custom module ({self.name}) that pipeline.json "
                          "cannot hold; pass it to Pipeline.load as `loss=` to train further.")


def _saved_loss(config: dict[str, Any], folder: Path, data: object) -> str | dict | nn.Module | None:
    """The loss ``pipeline.json`` records, or what stands in for one it could not record."""
    spec = config.get("loss")
    if isinstance(spec, dict) and "custom" in spec:
        if data is not None:  # to train further: never swap in another loss unasked
            raise MedsegError(f"{folder}: the loss was a custom module ({spec['custom']}) that pipeline.json "
                              "cannot hold; pass it as `loss=` (predicting needs no loss and no data).")
        regions = getattr(getattr(Plan.from_dict(config["plan"]), "label_spec", None), "regions", None)
        return _UnsavedLoss(spec["custom"], folder, "sigmoid" if regions else "softmax")
    if spec is None and data is not None:  # written before losses were recorded: we cannot tell which
        warnings.warn(f"{folder}/pipeline.json does not record its loss (an older medseg wrote it); "
                      "training further uses the default loss; pass `loss=` to choose.", stacklevel=4)
    return spec  # None: the pipeline's default
