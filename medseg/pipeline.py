"""The Pipeline: one choice of data, preprocessing, sampler, network, loss and inference,
with ``fit``, ``predict``, ``evaluate``, ``save`` and ``load``."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import architectures, losses
from .errors import DataError, MedsegError
from .evaluation.scoring import score_prediction
from .evaluation.splits import split_validation
from .inference import InferenceConfig
from .instance_tasks import InstanceTasks
from .io import IGNORE_INDEX, Dataset, open_dataset
from .persistence import load_pipeline, run_augmentation, save_pipeline, write_config
from .planning import Plan, fingerprint_dataset, plan_dataset
from .prediction import Predicting
from .preprocessing import CropForeground, CTNormalize, Pad, Resample, RGBNormalize, Step, ZScore
from .preprocessing.cache import PreprocessedCases
from .sampling import Augmentation, PatchSampler, PatchStream, create_augmentation, make_loader
from .training import TrainingConfig, distributed, train
from .training.distributed import shard

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Pipeline(InstanceTasks, Predicting):
    """Data in, trained model and predictions out, every part replaceable.

    Args:
        data: a :class:`~medseg.io.Dataset` or a folder (MSD/nnU-Net, or images/ + labels/).
        preprocessing: steps applied to every case (default: crop to non-zero, resample to the
            planned spacing, z-score or CT normalisation, pad to the patch size).
        sampler: the patch sampler (default: the planned patch, a third foreground).
        architecture: a ``torch.nn.Module``, a registry name, ``None`` for the planned U-Net, or a dict
            ``{"name": ..., **arguments}`` (for ``unet``/``dynunet`` the arguments change the planned network).
        loss: a loss module or registry name (default ``dice + ce``).
        plan: replaces the plan read off the data; a mapping replaces some of its fields
            (``{"patch_size": (32, 48, 32), "batch_size": 2}``).
        spatial_dims: 2 trains slice by slice on 3D data.
        training: a :class:`~medseg.training.TrainingConfig`.
        inference: an :class:`~medseg.inference.InferenceConfig`.
        device: ``"cuda"`` when there is a GPU, else ``"cpu"``.
        cache_dir: where preprocessed cases are cached.
        task: ``"semantic"`` (default) or ``"instance"`` (``architecture="maskrcnn"`` or
            ``"bordercore"``; see :mod:`medseg.instance_tasks`).
        instances: how labels become instances: ``"auto"``, ``"map"`` or ``"components"``
            (:class:`~medseg.io.instances.InstanceDataset`).

    Example:
        >>> pipe = Pipeline("data_samples/hippocampus")  # doctest: +SKIP
        >>> pipe.fit(epochs=2)                            # doctest: +SKIP
    """

    def __init__(
        self,
        data: Dataset | str | os.PathLike | None = None,
        *,
        preprocessing: Sequence[Step] | None = None,
        sampler: PatchSampler | None = None,
        architecture: nn.Module | str | None = None,
        loss: nn.Module | str | None = None,
        plan: Plan | Mapping[str, Any] | None = None,
        spatial_dims: int | None = None,
        training: TrainingConfig | None = None,
        inference: InferenceConfig | None = None,
        device: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        task: str | None = None,
        instances: str | None = None,
    ) -> None:
        self.data = open_dataset(data) if isinstance(data, (str, os.PathLike)) else data
        self.device = device or default_device()
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise MedsegError(f"device={self.device!r}: CUDA is not available; use --device cpu (device='cpu').")
        self.cache_dir = cache_dir
        self.training = training or TrainingConfig()
        self.inference = inference or InferenceConfig()
        self.fingerprint = None
        plan, architecture = self._task_setup(plan, task, instances, architecture)  # instance data read before planning
        if plan is None or isinstance(plan, Mapping):  # a mapping replaces fields of the planned plan
            if self.data is None:
                raise ValueError("Pipeline needs `data` to plan from, or an explicit `plan`.")
            changes = dict(plan or {})
            self.fingerprint, _ = fingerprint_dataset(self.data)
            plan = plan_dataset(self.data, spatial_dims=changes.pop("spatial_dims", spatial_dims), device=self.device,
                                fingerprint=self.fingerprint)
            plan = Plan.from_dict({**plan.to_dict(), **changes}) if changes else plan
            if len(plan.patch_size) != plan.spatial_dims:
                raise ValueError(f"patch_size {list(plan.patch_size)} has {len(plan.patch_size)} values; the "
                                 f"network is {plan.spatial_dims}D, so give {plan.spatial_dims}.")
        if sampler is not None and sampler.patch_size is not None:
            plan = plan.replace(patch_size=sampler.patch_size)
        self.plan = plan
        if self.data is not None:  # labels read as the plan's class indices
            self.data = self.data.with_label_spec(plan.label_spec.agreed_with(self.data.label_spec, self.data.root))
        self.data_dims = len(plan.target_spacing)
        self.sampler = sampler or PatchSampler(patch_size=plan.patch_size)
        if self.sampler.patch_size is None:
            self.sampler.patch_size = plan.patch_size
        self.sampler.slice_axis = plan.slice_axis
        self.preprocessing = self._fit_steps(preprocessing)
        self.architecture_spec, self.network = self._build_network(architecture)
        self._check_instance_network()
        self.loss_spec, self.loss = self._build_loss(loss)
        self.history: list[dict[str, float]] = []
        self.split: dict[str, list[str]] = {}
        self.ensemble: list[nn.Module] = []  # extra fold networks averaged with `network`
        self.patch_augmentation: Augmentation | None = None  # what the last fit trained with, all fields

    # -- construction -----------------------------------------------------------------------
    def default_steps(self) -> list[Step]:
        """The preprocessing the plan implies, unfitted: crop to the foreground, resample to the
        target spacing (keeping the slice axis of a 2D plan on 3D data), normalise (CT or z-score),
        pad to the patch; photographs are normalised and padded only (the padding's label ignored
        where the labels have an ignore value)."""
        if self.plan.normalization == "imagenet":  # photographs: pixels as they are (no crop, no resampling)
            return [RGBNormalize(), Pad(min_shape=self.sampler.data_patch(self.data_dims), label_fill=IGNORE_INDEX if self.plan.label_spec.ignore is not None else 0)]  # noqa: E501 - padding is not a class
        normalize: Step = CTNormalize() if self.plan.normalization == "ct" else ZScore()
        return [CropForeground(), Resample(spacing=self.plan.target_spacing, keep_axis=self.plan.slice_axis), normalize,
                Pad(min_shape=self.sampler.data_patch(self.data_dims))]

    def _fit_steps(self, steps: Sequence[Step] | None) -> list[Step]:
        steps = list(steps) if steps is not None else self.default_steps()
        if self.fingerprint is None:
            return steps
        return [step.fit(self.fingerprint) for step in steps]

    def _build_network(self, architecture: nn.Module | str | None) -> tuple[dict[str, Any] | None, nn.Module]:
        plan = self.plan
        common = {"spatial_dims": plan.spatial_dims, "in_channels": plan.in_channels, "out_channels": plan.out_channels}
        topology = {"pool_kernels": [list(k) for k in plan.pool_kernels],
                    "conv_kernels": [list(k) for k in plan.conv_kernels]}
        planned = {"unet": {"name": "unet", **common, "features": list(plan.features),  # the planned widths and kernels
                            "strides": topology["pool_kernels"], "kernel_sizes": topology["conv_kernels"]},
                   "dynunet": {"name": "dynunet", **common, **topology}}  # nnU-Net's network on the plan's topology
        if architecture is None or (isinstance(architecture, str) and architecture in planned):
            spec = planned[architecture or "unet"]
        elif isinstance(architecture, dict) and architecture.get("name") in planned:  # {name: unet, deep_supervision: true}
            base = planned[architecture["name"]]
            if len(architecture.get("features", base.get("features", ()))) != len(base.get("features", ())):
                base = {k: v for k, v in base.items() if k not in ("strides", "kernel_sizes")}  # another depth
            spec = {**base, **architecture}
        elif isinstance(architecture, str):
            spec = {"name": architecture, **common}
        elif isinstance(architecture, nn.Module):  # medseg networks record their arguments
            return getattr(architecture, "hparams", None), architecture
        elif isinstance(architecture, dict):  # e.g. {"name": "maskrcnn", "widths": [...]}: the plan's channels
            spec = {**common, **architecture}
        else:
            raise TypeError(f"architecture must be a torch.nn.Module or a name, got {type(architecture).__name__}.")
        torch.manual_seed(self.training.seed)
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        network = architectures.create_architecture(spec["name"], **kwargs)
        return dict(getattr(network, "hparams", spec)), network

    def _build_loss(self, loss: nn.Module | str | dict | None) -> tuple[str | dict | None, nn.Module]:
        return losses.build_loss(loss, regions=self.plan.label_spec.regions,
                                 region_names=self.plan.label_spec.region_names)

    # -- data ---------------------------------------------------------------------------------
    def _require_data(self) -> Dataset:
        if self.data is None:
            raise MedsegError("This pipeline has no training data; pass `data` to Pipeline or Pipeline.load.")
        return self.data

    def preprocessed_cases(self) -> PreprocessedCases:
        """The dataset's cases through this pipeline's preprocessing, cached on disk
        (``.build(case_ids)`` writes them; ``.image(case)``, ``.label(case)`` read them)."""
        return PreprocessedCases(self._require_data(), self.preprocessing, cache_dir=self._cases_cache_dir())

    def split_cases(self, train_ids: Sequence[str] | None = None, val_ids: Sequence[str] | None = None,
                    val_fraction: float | None = None) -> tuple[list[str], list[str]]:
        """The (train, validation) case ids :meth:`fit` uses: the ids given, else the dataset's
        official split (VOC ImageSets, Cityscapes/CamVid train and val) unless ``val_fraction`` is
        given, else ``val_fraction`` (default 0.2) of the cases held out (a subject's cases on one
        side), seeded by ``training.seed``."""
        data = self._require_data()
        official = getattr(data, "official_split", None)
        if train_ids is None and val_ids is None and val_fraction is None and official:
            return list(official["train"]), list(official.get("val", []))
        val_fraction = 0.2 if val_fraction is None else val_fraction
        if train_ids is None:
            if val_ids is None:
                if val_fraction <= 0:
                    return data.case_ids, []
                groups = [data.group_of(c) for c in data.case_ids]
                return split_validation(data.case_ids, fraction=val_fraction, seed=self.training.seed, groups=groups)
            train_ids = [c for c in data.case_ids if c not in set(val_ids)]
        unknown = [c for c in [*train_ids, *(val_ids or [])] if c not in data.cases]
        if unknown:
            raise DataError(f"Unknown case ids {unknown[:5]} (the dataset has e.g. {data.case_ids[:3]}).")
        return list(train_ids), list(val_ids or [])

    # -- training -----------------------------------------------------------------------------
    def fit(
        self,
        train_ids: Sequence[str] | None = None,
        val_ids: Sequence[str] | None = None,
        *,
        epochs: int | None = None,
        iterations_per_epoch: int | None = None,
        time_limit: float | None = None,
        val_fraction: float | None = None,
        output_dir: str | os.PathLike | None = None,
        resume: bool = False,
    ) -> list[dict[str, float]]:
        """Train. Without ids, the dataset's official split (a VOC, Cityscapes or CamVid folder's),
        else ``val_fraction`` of the cases (grouped by subject) are held out.

        Args:
            train_ids: training cases (default: all but the validation split).
            val_ids: validation cases, scored after every epoch (never trained on).
            epochs: overrides ``training.epochs``.
            iterations_per_epoch: overrides ``training.iterations_per_epoch``.
            time_limit: seconds; the learning-rate schedule ends when they are spent.
            val_fraction: share held out when no ids are given (0 trains on everything; default
                the official split if the data has one, else 0.2).
            output_dir: where the checkpoint (every epoch) and the pipeline are saved.
            resume: continue the checkpoint in ``output_dir``.

        Under ``torchrun`` every process calls ``fit`` alike and trains one model with DDP: each
        draws its share of ``plan.batch_size`` (seeded by rank), validation cases are split over
        the processes, and only rank 0 writes (see :func:`~medseg.training.train`).

        Returns:
            The history: one dict per epoch (loss, val_dice, time).
        """
        changes = {k: v for k, v in {"epochs": epochs, "iterations_per_epoch": iterations_per_epoch,
                                     "time_limit": time_limit}.items() if v is not None}
        config = TrainingConfig(**{**self.training.to_dict(), **changes})
        self.training = config
        train_ids, val_ids = self.split_cases(train_ids, val_ids, val_fraction)
        self.split = {"train": train_ids, "val": val_ids}
        world, device = distributed.setup(self.device)  # one process: (rank 0 of 1, self.device)
        if world.distributed:  # validation and later predictions run on this rank's device
            self.device = str(device)
        cases = self.preprocessed_cases()
        if world.distributed:  # each process preprocesses its share of the cases first
            cases.build(shard([*train_ids, *val_ids], world.rank, world.size))
            distributed.barrier(timeout=max(distributed.timeout_seconds(), 3600.0))
        cases = cases.build([*train_ids, *val_ids])
        output = Path(output_dir) if output_dir is not None else None
        self.patch_augmentation = run_augmentation(self.training_augmentation(config.augmentation), output, resume)
        stream = PatchStream(
            cases, train_ids, self.sampler, batch_size=distributed.local_batch(self.plan.batch_size, world),
            augmentation=self.patch_augmentation,
            precompute=self.loss_precompute(), num_classes=self._stream_classes, spacing=self._patch_spacing(),
            seed=config.seed, rank=world.rank)
        def batches(start: int):  # batch i depends on (seed, i, rank) only: a resumed run continues at its batch
            return iter(make_loader(stream, workers=config.workers, device=device, start_batch=start))
        if output is not None and world.is_main:
            output.mkdir(parents=True, exist_ok=True)
            write_config(self.config(), output)
        validate = (lambda: self._validation_score(cases, val_ids[:50])) if val_ids else None
        self.history = train(
            self.network, self.loss, batches, config=config,
            checkpoint=None if output is None else output / "checkpoint.pt",
            resume=resume, validate=validate, device=device, fixed_shapes=True,
            first_batch=sum(int(h.get("steps", 0)) for h in self.history),  # a further fit draws new patches
        )
        if val_ids:  # what fit leaves to the validation cases: largest components, a detector's threshold
            self.choose_postprocessing(val_ids, cases=cases)
        if output is not None and world.is_main:
            self.save(output)
        distributed.barrier()  # the others return once the run is saved
        return self.history

    def training_augmentation(self, spec: str | Mapping[str, Any] | None = None) -> Augmentation:
        """The augmentation :meth:`fit` trains with for ``spec`` (default ``training.augmentation``):
        a preset name or ``{"preset": name, **fields}``; ``"auto"`` (the default preset) is the
        plan's, else ``"2d"`` or ``"3d"`` by the network; flips only along the plan's mirror axes."""
        spec = self.training.augmentation if spec is None else spec
        changes = dict(spec) if isinstance(spec, Mapping) else {"preset": spec}
        if changes.get("preset", "auto") == "auto":
            changes["preset"] = self.plan.augmentation if self.plan.augmentation != "auto" else (
                "2d" if self.plan.spatial_dims == 2 else "3d")
        if self.plan.mirror_axes is not None:  # classes keep their order along the other axes
            changes.setdefault("flip_axes", self.plan.mirror_axes)
            if "rotation" not in changes:  # a half turn would mirror them too: at most 30 degrees
                changes["rotation"] = min(create_augmentation(changes["preset"]).rotation, 30.0)
        return create_augmentation(changes)

    def loss_precompute(self):
        """What the loss asks the loader to compute per patch (the distance maps of the boundary
        and Hausdorff losses), as the loader calls it, or ``None`` where the loss needs nothing."""
        precompute = getattr(self.loss, "precompute", None)
        if precompute is None:
            return None
        probe = precompute(np.zeros((2,) * self.plan.spatial_dims, dtype=np.int64), self.plan.num_classes, None)
        return precompute if probe else None

    def _patch_spacing(self) -> tuple[float, ...]:
        spacing = list(self.plan.target_spacing)
        if self.plan.slice_axis is not None:
            spacing.pop(self.plan.slice_axis)
        return tuple(spacing)

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, case_ids: Sequence[str] | None = None, *, metrics: bool = False) -> dict[str, dict[int, dict[str, float]]]:
        """Score cases (default: the validation split) on their original grid.

        Scores what ``plan.label_spec.scored`` names: each foreground class, keyed by its dataset
        value, or each region, keyed by its ``regions_class_order`` value; ignored voxels count
        for nothing (:func:`~medseg.evaluation.scoring.score_prediction`).

        Returns ``{case: {value: {metric: score}}}`` (Dice only unless ``metrics``).
        """
        if self.is_instance:  # {case: {metric: value}}, see evaluate_instances
            return self.evaluate_instances(case_ids)
        data = self._require_data()
        case_ids = list(case_ids or self.split.get("val") or [])
        if not case_ids:
            raise ValueError("evaluate needs case ids (no validation split was held out).")
        scores = {}
        for case in case_ids:
            sample = data.load(case)
            scores[case] = score_prediction(self.predict_case(sample), sample.label, self.plan.label_spec,
                                            spacing=sample.geometry.spacing, metrics=metrics)
        return scores

    def fresh(self, *, seed: int | None = None) -> Pipeline:
        """A pipeline with the same data, plan and parts, and a newly initialised network
        (what each fold of a cross-validation trains)."""
        if self.architecture_spec is None:
            raise MedsegError("fresh() needs a registered architecture (a name or a medseg network), "
                              "not a custom module.")
        training = self.training if seed is None else TrainingConfig(**{**self.training.to_dict(), "seed": seed})
        return Pipeline(self.data, plan=self.plan, preprocessing=self.preprocessing,
                        sampler=PatchSampler(**self.sampler.config()), architecture=dict(self.architecture_spec),
                        loss=self.loss_spec if self.loss_spec is not None else self.loss,
                        training=training, inference=self.inference, device=self.device, cache_dir=self.cache_dir)

    # -- persistence ----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "format": "medseg-pipeline/1",
            "plan": self.plan.to_dict(),
            "preprocessing": [s.config() for s in self.preprocessing],
            "sampler": self.sampler.config(),
            "architecture": self.architecture_spec,
            "loss": self.loss_spec if self.loss_spec is not None else {"custom": type(self.loss).__qualname__},
            "training": self.training.to_dict(),
            "inference": self.inference.to_dict(),
            "split": self.split,
            "history": self.history,
            # every field of the augmentation the last fit trained with (what a resumed run keeps)
            **({} if self.patch_augmentation is None else {"patch_augmentation": self.patch_augmentation.config()}),
        }

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``pipeline.json`` and ``model.pt`` (weights only) into ``folder``."""
        return save_pipeline(self, folder)

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        data: Dataset | str | os.PathLike | None = None,
        *,
        architecture: nn.Module | None = None,
        loss: nn.Module | str | None = None,
        device: str | None = None,
        weights: bool = True,
    ) -> Pipeline:
        """Rebuild a saved pipeline. No code is unpickled: JSON config, weights-only tensors.

        A cross-validation folder (``fold_*/`` subfolders) loads as an ensemble whose
        predictions average the folds' softmax outputs (nnU-Net's way).

        Args:
            folder: what :meth:`save` wrote (or a training run folder).
            data: training data, to continue training or evaluate.
            architecture: the network, needed only when it was a custom module.
            loss: replaces the saved loss.
            device: where to run.
            weights: ``False`` keeps the newly initialised network (a run stopped before its first
                checkpoint, about to be resumed).
        """
        return load_pipeline(cls, folder, data, architecture=architecture, loss=loss, device=device, weights=weights)

    def __repr__(self) -> str:
        return (f"Pipeline(data={self.data!r}, spatial_dims={self.plan.spatial_dims}, patch={self.plan.patch_size}, "
                f"network={type(self.network).__name__}, loss={self.loss_spec or type(self.loss).__name__})")
