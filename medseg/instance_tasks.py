"""Instance segmentation in :class:`~medseg.Pipeline` (``task="instance"``): the data read as
instances, Mask R-CNN or border-core training, and predictions written as instance maps.

- ``architecture="maskrcnn"`` (any network with ``detect``): the patches carry the encoded
  instance label (:mod:`medseg.instances.encoding`), the network's ``training_loss`` decodes its
  boxes, classes and masks, and a case is predicted by
  :func:`~medseg.inference.detection.detect_instances` on the preprocessed grid, then brought back
  onto the case's own grid voxel by voxel (nearest neighbour: an encoded map is never interpolated).
- ``architecture="bordercore"``: the planned U-Net learns background / core per class / border
  (:mod:`medseg.instances.bordercore`), trained and predicted exactly as a semantic run; the
  argmax on the original grid is turned into instances by
  :func:`~medseg.instances.bordercore.from_bordercore` with the case's own spacing. An instance's
  score is the mean foreground probability (1 - P(background)) over its voxels.

The plan records the task (``Plan.task``) and ``Plan.instances`` = ``{"mode", "target", "labels"}``
(how labels became instances, what the network learns, the K semantic classes), so a saved run
predicts instances without its data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import MedsegError
from .inference import InferenceConfig
from .io import Dataset, Geometry, LabelSpec, Sample, output_suffix
from .io.instances import as_instances, write_instances
from .planning import Plan
from .preprocessing import Resample, preprocess, resize
from .preprocessing.cache import PreprocessedCases, default_cache_dir, source_digest

__all__ = ["TASKS", "InstanceTasks", "invert_encoded"]

log = logging.getLogger(__name__)

TASKS = ("semantic", "instance")
_BORDERCORE = "bordercore"


def invert_encoded(encoded: np.ndarray, prepared: Sample) -> np.ndarray:
    """An encoded instance map on the preprocessed grid of ``prepared``, back on the grid the case
    was read on: crop and pad undone by moving voxels, resampling by nearest neighbour (along
    the slice axis of anisotropic data as well), so no new label value ever appears.

    Example:
        >>> back = invert_encoded(encoded, preprocess(sample, pipe.preprocessing))  # doctest: +SKIP
    """
    labels = np.asarray(encoded)[None]
    for step, record in reversed(prepared.history):
        if isinstance(step, Resample):
            if tuple(labels.shape[1:]) != tuple(record.shape):
                labels = resize(labels.astype(np.float32), record.shape, order=0,
                                lowres_axis=record.lowres_axis).round().astype(np.int32)
        elif step.moves_voxels_only:
            labels = step.invert_map(labels, record, fill=0)
        else:
            raise MedsegError(f"cannot bring an instance map back through preprocessing step {step!r}: "
                              "its inverse is not a voxel move or a resampling.")
    return np.ascontiguousarray(labels[0], dtype=np.int32)


SCORE_GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""The score thresholds :meth:`InstanceTasks._choose_score_threshold` tries."""


def keep_scored(encoded: np.ndarray, scores: Mapping[int, float], threshold: float, num_classes: int) -> np.ndarray:
    """``encoded`` without the instances scoring at or below ``threshold``: what detecting with
    that threshold gives, as the higher score always wins an overlap when masks are pasted."""
    numbers = np.where(encoded > 0, (encoded - 1) // max(num_classes - 1, 1) + 1, 0)
    dropped = [n for n, score in scores.items() if score <= threshold]
    return np.where(np.isin(numbers, dropped), 0, encoded).astype(encoded.dtype)


class InstanceTasks:
    """The instance-task methods of :class:`~medseg.Pipeline` (which provides ``plan``, ``data``,
    ``network``, ``device``, ``cache_dir`` and the prediction methods)."""

    plan: Plan
    data: Dataset | None

    # -- construction -------------------------------------------------------------------------
    def _task_setup(self, plan: Plan | Mapping[str, Any] | None, task: str | None, instances: str | None,
                    architecture: Any) -> tuple[Any, Any]:
        """Read the data as instances for an instance task (before planning) and record the task
        in the plan's changes; returns ``(plan, architecture)`` (``"bordercore"`` is the U-Net)."""
        name = architecture.get("name") if isinstance(architecture, dict) else architecture
        if isinstance(plan, Plan):
            task, settings = plan.task, {"mode": "auto", "target": "instances", **(plan.instances or {})}
        else:
            plan = dict(plan or {})
            settings = dict(plan.get("instances") or {})
            task = task or plan.get("task") or "semantic"
            settings["mode"] = instances or settings.get("mode") or "auto"
            settings["target"] = _BORDERCORE if name == _BORDERCORE else settings.get("target") or "instances"
        if task not in TASKS:
            raise ValueError(f"task={task!r}: use 'semantic' or 'instance'.")
        if task == "semantic":
            if name in (_BORDERCORE, "maskrcnn") or instances is not None:
                raise ValueError(f"architecture={name!r}, instances={instances!r} are for instance segmentation: "
                                 "give task='instance' (medseg train --task instance).")
            return plan, architecture
        if isinstance(architecture, dict) and name == _BORDERCORE:
            architecture = {**architecture, "name": "unet"}
        elif name == _BORDERCORE or (name is None and settings["target"] == _BORDERCORE):
            architecture = None  # the planned U-Net on the border-core classes
        elif name is None:
            architecture = "maskrcnn"
        if self.data is not None:
            data = as_instances(self.data, mode=settings["mode"], target=settings["target"])
            self.data = data.with_label_spec(LabelSpec.from_dict(settings["labels"])) if "labels" in settings else data
            if not isinstance(plan, Plan):
                settings.update(mode=self.data.mode, labels=self.data.semantic_spec.to_dict())
                plan.update(task="instance", instances=settings)
        return plan, architecture

    def _check_instance_network(self) -> None:
        """Name the border-core network, widen the border to the training grid, and refuse an
        instance network that cannot detect."""
        if not self.is_instance:
            return
        if self.instance_target == _BORDERCORE:
            if self.architecture_spec is not None:
                self.architecture_spec = {**self.architecture_spec, "name": _BORDERCORE}
            if self.data is not None:  # the border at least one voxel of the training grid: it survives resampling
                self.data.border_mm = float(max(self.plan.target_spacing))
        elif not hasattr(self.network, "detect"):
            raise ValueError(f"task='instance' needs architecture='maskrcnn' (a network with detect()) or "
                             f"'bordercore', got {type(self.network).__name__}.")
        elif self.plan.slice_axis is not None:
            raise ValueError("architecture='maskrcnn' detects in the data's own dimensionality; leave spatial_dims "
                             f"at {len(self.plan.target_spacing)} (or use architecture='bordercore').")

    # -- what the task is -----------------------------------------------------------------------
    @property
    def is_instance(self) -> bool:
        """Whether this pipeline segments instances."""
        return self.plan.task == "instance"

    @property
    def instance_target(self) -> str | None:
        """``"instances"`` (Mask R-CNN), ``"bordercore"``, or ``None`` for a semantic pipeline."""
        return (self.plan.instances or {}).get("target", "instances") if self.is_instance else None

    @property
    def instance_spec(self) -> LabelSpec:
        """The semantic classes predictions are written and scored in (``plan.label_spec`` for a
        semantic pipeline; the K classes of the instances for an instance one)."""
        labels = (self.plan.instances or {}).get("labels")
        return LabelSpec.from_dict(labels) if self.is_instance and labels else self.plan.label_spec

    def task_data(self, data: Dataset) -> Dataset:
        """``data`` read as this pipeline was trained: its classes, as instances for an instance task."""
        if not self.is_instance:
            return data.with_label_spec(self.plan.label_spec)
        settings = self.plan.instances or {}
        view = as_instances(data, mode=settings.get("mode", "auto"), target=self.instance_target)
        return view.with_label_spec(self.instance_spec)

    def reference_data(self) -> Dataset:
        """The pipeline's data with the labels predictions are scored against: the encoded
        instances (also for border-core, whose training labels are its classes)."""
        data = self._require_data()
        if not self.is_instance:
            return data
        return as_instances(data, mode=data.mode, target="instances").with_label_spec(self.instance_spec)

    def _cases_cache_dir(self) -> str | os.PathLike | None:
        """The cache root: instance runs apart from semantic ones (same files, other labels), keyed
        by the mode, the target and the code that encodes the labels."""
        if not self.is_instance:
            return self.cache_dir
        package = Path(__file__).resolve().parent
        code = source_digest([package / "io" / "instances.py", package / "io" / "instance_files.py",
                              *package.joinpath("instances").glob("*.py")])
        mode = (self.plan.instances or {}).get("mode")
        return Path(self.cache_dir or default_cache_dir()) / f"instances-{mode}-{self.instance_target}-{code}"

    @property
    def _stream_classes(self) -> int | None:
        """The classes patches are checked against; ``None`` for encoded instance labels."""
        return None if self.instance_target == "instances" else self.plan.num_classes

    # -- validation during fit -------------------------------------------------------------------
    def _validation_score(self, cases: PreprocessedCases, val_ids: Sequence[str]) -> float:
        """After each epoch: the mean Dice (semantic, border-core), or Mask R-CNN's mean matching
        accuracy at IoU 0.5 on the preprocessed grid."""
        if self.instance_target != "instances":
            return self.validation_dice(cases, val_ids)
        from .evaluation.instance_scores import instance_scores

        values = []
        for case in val_ids:
            encoded, _ = self._detect(np.array(cases.image(case)))  # a writable copy of the memory map
            reference = np.asarray(cases.label(case))
            values.append(instance_scores(encoded, reference, self.plan.num_classes)["match_accuracy"])
        return float(np.nanmean(values))

    def _choose_score_threshold(self, cases: PreprocessedCases, val_ids: Sequence[str]) -> None:
        """Mask R-CNN: the score threshold with the best mean matching accuracy at IoU 0.5 on the
        validation cases (ties: the higher), when none was given. A short run's scores stay low,
        and a fixed 0.5 would write nothing; a long one's are confident and keep 0.5 or more."""
        if self.instance_target != "instances" or self.inference.score_threshold is not None:
            return
        from .evaluation.instance_scores import instance_scores

        found = [(self._detect(np.array(cases.image(case)), score_threshold=SCORE_GRID[0]),
                  np.asarray(cases.label(case))) for case in val_ids[:50]]
        means = {}
        for threshold in SCORE_GRID:
            values = [instance_scores(keep_scored(encoded, scores, threshold, self.plan.num_classes), reference,
                                      self.plan.num_classes)["match_accuracy"] for (encoded, scores), reference in found]
            means[threshold] = float(np.nanmean(values))
        best = max(SCORE_GRID, key=lambda t: (means[t], t))
        log.info("score threshold %.2f (val matching accuracy %s)", best,
                 ", ".join(f"{t:g}: {m:.3f}" for t, m in means.items()))
        self.inference = InferenceConfig(**{**self.inference.to_dict(), "score_threshold": best})

    def _detect(self, image: np.ndarray, score_threshold: float | None = None) -> tuple[np.ndarray, dict[int, float]]:
        from .inference.detection import detect_instances

        if self.ensemble and not getattr(self, "_warned_ensemble", False):
            self._warned_ensemble = True  # once per pipeline, not once per case
            log.warning("Mask R-CNN detects with the first network only (%d others left out).", len(self.ensemble))
        self.network.to(self.device)
        if score_threshold is None:
            score_threshold = 0.5 if self.inference.score_threshold is None else self.inference.score_threshold
        return detect_instances(self.network, image, patch_size=tuple(self.plan.patch_size), device=self.device,
                                score_threshold=score_threshold)

    # -- prediction ------------------------------------------------------------------------------
    def predict_instances(self, case: str | Sample) -> tuple[np.ndarray, dict[int, float]]:
        """The encoded instance label ``(*spatial)`` of one case on the grid it was read on, and
        ``{instance number: score}``.

        Mask R-CNN: its detections (score = the box classifier's); border-core: the instances of
        the argmax, score = mean foreground probability over the instance.
        """
        if not self.is_instance:
            raise MedsegError("predict_instances needs an instance pipeline (task='instance').")
        sample = self._require_data().load(case) if isinstance(case, str) else case
        prepared = preprocess(self._as_planned(sample).replace(label=None), self.preprocessing)
        if self.instance_target == "instances":
            encoded, scores = self._detect(prepared.image)
            return invert_encoded(encoded, prepared), {int(k): float(v) for k, v in scores.items()}
        from .inference.probabilities import invert_probabilities
        from .instances.bordercore import from_bordercore

        probabilities = invert_probabilities(self.predict_probabilities(prepared.image), prepared)
        num_classes = self.instance_spec.num_classes
        encoded = from_bordercore(probabilities.argmax(0).astype(np.int32), num_classes, sample.geometry.spacing)
        values = np.unique(encoded[encoded > 0])
        means = ndimage.mean(1.0 - probabilities[0], labels=encoded, index=values) if len(values) else []
        return encoded, {int((v - 1) // (num_classes - 1) + 1): float(m) for v, m in zip(values, means)}

    def _write_instances(self, encoded: np.ndarray, geometry: Geometry, path: str | os.PathLike, *,
                         case: str | None, like: str | os.PathLike | None, scores: Mapping[int, float] | None,
                         data: Dataset | None) -> Path:
        """:func:`~medseg.io.instances.write_instances` into the folder ``path`` (or beside the file
        ``path``), the map in the input's suffix."""
        if case is None:
            path = Path(path)
            case, folder, suffix = path.name[: -len(output_suffix(path))], path.parent, output_suffix(path)
        else:
            folder = Path(path)
            source = like if like is not None else _first_image(data or self.data, case)
            suffix = output_suffix(Path(source)) if source is not None else None
        folder.mkdir(parents=True, exist_ok=True)
        return write_instances(encoded, geometry, folder, case, self.instance_spec, scores=scores, extension=suffix)

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate_instances(self, case_ids: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
        """Instance scores of cases (default: the validation split) on their own grid:
        ``{case: {metric: value}}`` with the metrics of
        :data:`~medseg.evaluation.instance_scores.INSTANCE_METRICS` (matching at IoU 0.5,
        panoptic quality, instance Dice)."""
        from .evaluation.instance_scores import instance_scores

        case_ids = list(case_ids or self.split.get("val") or [])
        if not case_ids:
            raise ValueError("evaluate needs case ids (no validation split was held out).")
        references = self.reference_data()
        return {case: instance_scores(self.predict_case(case), references.load(case).label,
                                      self.instance_spec.num_classes) for case in case_ids}


def _first_image(data: Dataset | None, case: str) -> Path | None:
    try:
        return data.files(case).images[0] if data is not None else None
    except (KeyError, AttributeError, MedsegError):
        return None
