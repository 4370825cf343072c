"""Prediction for :class:`~medseg.Pipeline`: one path from a case to a label map (and, on
request, probabilities) on the case's own grid, written in the input's or the dataset's format.

Every way to predict (a file or folder, a benchmark folder's evaluation split, cases of the
pipeline's data, a cross-validation fold, the correction loop) goes through
:meth:`Predicting.predict_case` and :meth:`Predicting.write_prediction`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .evaluation.scoring import score_prediction
from .inference import InferenceConfig, predict_probabilities
from .inference.postprocess import to_label_values
from .inference.probabilities import invert_probabilities, write_probabilities
from .io import (
    Dataset,
    Geometry,
    Sample,
    find_images,
    load_image,
    open_dataset,
    output_suffix,
    write_label_file,
)
from .io.cases import files_per_case
from .io.files import case_id_of
from .io.formats import detect_format
from .preprocessing import preprocess
from .preprocessing.cache import PreprocessedCases
from .training import distributed
from .training.distributed import shard

log = logging.getLogger(__name__)


class Predicting:
    """The prediction methods of :class:`~medseg.Pipeline` (which provides ``plan``,
    ``preprocessing``, ``inference``, ``network``, ``ensemble``, ``device`` and ``data``, and
    the instance methods of :class:`~medseg.instance_tasks.InstanceTasks`), and what
    :meth:`~medseg.Pipeline.fit` scores on its validation cases."""

    def predict_probabilities(self, image: np.ndarray) -> np.ndarray:
        """The network's probabilities ``(out_channels, *spatial)`` for one preprocessed image
        ``(C, *spatial)``: softmax over classes, or a sigmoid per region; sliding window, mirroring
        and fold ensemble as ``inference`` says."""
        for network in (self.network, *self.ensemble):  # Pipeline(device="cuda") predicts there, fitted or not
            network.to(self.device)
        return predict_probabilities([self.network, *self.ensemble], image, roi_size=tuple(self.plan.patch_size),
                                     config=self.inference, slice_axis=self.plan.slice_axis, device=self.device,
                                     activation=self._activation, mirror_axes=self.plan.mirror_axes)

    @property
    def _activation(self) -> str:
        return "sigmoid" if self.plan.label_spec.is_regions else "softmax"

    def predict_case(self, case: str | Sample, *, probabilities: bool = False
                     ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The label map ``(*spatial)`` of one case in the dataset's own values (``plan.labels``),
        on the grid it was read on; never the ignore value.

        Args:
            case: a case id of the pipeline's data (training or test case), or a Sample.
            probabilities: also return the softmax (sigmoids, for regions) ``(K, *spatial)`` float32
                on the same grid (:func:`~medseg.inference.probabilities.invert_probabilities`);
                the labels are the same either way.

        Returns:
            The labels, or ``(labels, probabilities)`` with ``probabilities=True``. An instance
            pipeline returns the encoded instance label (see :meth:`predict_instances`).
        """
        if self.is_instance:
            if probabilities:
                raise ValueError("predict_case(probabilities=True) is for semantic pipelines; an instance "
                                 "pipeline's predict_instances(case) gives the instance scores.")
            return self.predict_instances(case)[0]
        sample = self._require_data().load(case) if isinstance(case, str) else case
        network_out, prepared = self._network_output(sample)
        labels = to_label_values(network_out, self.plan.label_spec, prepared=prepared,
                                 largest_component=self.inference.largest_component or False)
        if not probabilities:
            return labels
        return labels, invert_probabilities(network_out, prepared, activation=self._activation)

    predict_sample = predict_case  # the name of earlier versions

    def _network_output(self, sample: Sample) -> tuple[np.ndarray, Sample]:
        """The network's probabilities on the preprocessed grid, and the preprocessed sample."""
        prepared = preprocess(self._as_planned(sample).replace(label=None), self.preprocessing)
        return self.predict_probabilities(prepared.image), prepared

    def _as_planned(self, sample: Sample) -> Sample:
        """A grey photograph given to a colour (``R,G,B``) plan is read as three equal channels,
        as the benchmark datasets read it."""
        if self.plan.normalization == "imagenet" and sample.image.shape[0] == 1 and self.plan.in_channels == 3:
            return sample.replace(image=np.repeat(sample.image, 3, axis=0))
        return sample

    def write_prediction(self, labels: np.ndarray, geometry: Geometry, path: str | os.PathLike, *,
                         case: str | None = None, like: str | os.PathLike | None = None,
                         probabilities: np.ndarray | None = None, probability_maps: bool = False,
                         data: Dataset | None = None, scores: Mapping[int, float] | None = None) -> Path:
        """Write a label map of dataset values with the geometry its image was read with.

        Args:
            labels: ``(*spatial)`` from :meth:`predict_case`.
            geometry: the image's geometry (``Sample.geometry``).
            path: the file; with ``case``, the folder of ``<case><suffix>``, the suffix in the format
                of ``like``; without ``like``, the dataset's own format
                (:meth:`~medseg.io.Dataset.write_prediction`: NIfTI for DICOM, PNG for 2D, a VOC
                palette PNG, a COCO results JSON...).
            probabilities: ``(K, *spatial)`` from ``predict_case(..., probabilities=True)``, written
                beside the labels as ``<case>.npz`` (:func:`~medseg.inference.probabilities.write_probabilities`).
            probability_maps: also write ``<case>_prob_<channel>.nii.gz`` per channel.
            data: the dataset whose format is written (default: the pipeline's).
            scores: of an instance pipeline, ``{instance number: score}`` from :meth:`predict_instances`.

        An instance pipeline writes the instance map (in the input's suffix), ``<case>.json`` with
        each instance's class and score and, in 2D, ``instances_coco.json``
        (:func:`~medseg.io.instances.write_instances`).
        """
        if self.is_instance:
            if probabilities is not None or probability_maps:
                raise ValueError("write_prediction: an instance pipeline writes no probabilities.")
            written = self._write_instances(labels, geometry, path, case=case, like=like, scores=scores, data=data)
            log.info("wrote %s", written)
            return written
        ignore = self.plan.label_spec.ignore
        if ignore is not None and np.any(labels == ignore):
            raise ValueError(f"labels hold the ignore value {ignore}, which a prediction never holds; "
                             "pass what predict_case returns.")
        if probability_maps and probabilities is None:
            raise ValueError("write_prediction(probability_maps=True) needs `probabilities` "
                             "(from predict_case(case, probabilities=True)).")
        if case is not None and like is None:
            written = (data or self._require_data()).write_prediction(labels, geometry, path, case)
        else:
            written = write_label_file(labels, geometry, Path(path) / f"{case}{output_suffix(Path(like))}"
                                       if case is not None else path)
        log.info("wrote %s", written)
        if probabilities is not None:  # <case>.npz in the output folder (or beside the file)
            stem = Path(path) / case if case is not None else written.with_name(case_id_of(written))
            write_probabilities(probabilities, geometry, stem, self.plan.label_spec, maps=probability_maps)
        return written

    def _predict_and_write(self, sample: Sample, output_dir: str | os.PathLike | None, *,
                           like: str | os.PathLike | None = None, data: Dataset | None = None,
                           save_probabilities: bool = False, probability_maps: bool = False) -> Any:
        """The label map of ``sample`` (no ``output_dir``), or the file it was written to."""
        if self.is_instance and output_dir is not None:
            if save_probabilities or probability_maps:
                raise ValueError("save_probabilities/probability_maps: an instance pipeline writes instance maps "
                                 "and their scores (<case>.json), no probabilities.")
            labels, scores = self.predict_instances(sample)
            return self.write_prediction(labels, sample.geometry, output_dir, case=sample.id, like=like, data=data,
                                         scores=scores)
        if output_dir is None:
            return self.predict_case(sample)
        if not (save_probabilities or probability_maps):
            return self.write_prediction(self.predict_case(sample), sample.geometry, output_dir, case=sample.id,
                                         like=like, data=data)
        labels, probabilities = self.predict_case(sample, probabilities=True)
        return self.write_prediction(labels, sample.geometry, output_dir, case=sample.id, like=like, data=data,
                                     probabilities=probabilities, probability_maps=probability_maps)

    def predict(
        self, inputs: str | os.PathLike, output_dir: str | os.PathLike | None = None, *,
        save_probabilities: bool = False, probability_maps: bool = False, part: tuple[int, int] | None = None,
    ) -> dict[str, Path] | dict[str, np.ndarray]:
        """Predict every case in a file or folder.

        With ``output_dir``, writes one label file per case, named after the case, in the input's
        format (NIfTI for DICOM folders, PNG for 2D images) and geometry, and returns the paths;
        without, returns the label maps. Both hold the dataset's own label values. A benchmark
        folder (VOC, Cityscapes, CamVid, COCO) has its evaluation split predicted and written in
        the format's own files.
        ``save_probabilities`` also writes ``<case>.npz`` (softmax or region sigmoids on the
        input's grid), ``probability_maps`` that and a NIfTI per channel (see :meth:`write_prediction`).
        ``part=(k, n)`` predicts only part ``k`` of ``n`` of the cases (sorted, every n-th from k:
        :func:`~medseg.training.distributed.shard`), so n processes write each case once.
        """
        if (save_probabilities or probability_maps) and output_dir is None:
            raise ValueError("predict(save_probabilities=True) writes files: give output_dir, or call "
                             "predict_case(case, probabilities=True) for the arrays.")
        options = {"save_probabilities": save_probabilities, "probability_maps": probability_maps}
        if Path(inputs).is_dir() and detect_format(inputs) is not None:  # a VOC/Cityscapes/... folder
            data = open_dataset(inputs)
            data = self.task_data(data) if self.is_instance else data.with_label_spec(
                self.plan.label_spec.agreed_with(data.label_spec, data.root))
            cases = sorted(data.evaluation_cases) if part is not None else data.evaluation_cases
            return {case: self._predict_and_write(data.load(case), output_dir, data=data, **options)
                    for case in (shard(cases, *part) if part is not None else cases)}
        channels = 1 if self.plan.normalization == "imagenet" else self.plan.in_channels  # a photo is one file
        found = find_images(inputs, channels=files_per_case(inputs, channels))
        cases = shard(sorted(found), *part) if part is not None else list(found)
        results: dict[str, Any] = {}
        for case in cases:
            image, geometry = load_image(found[case])
            results[case] = self._predict_and_write(Sample(case, image, geometry), output_dir, like=found[case][0],
                                                    **options)
        return results

    def predict_cases(self, case_ids: Sequence[str], output_dir: str | os.PathLike, *,
                      save_probabilities: bool = False, probability_maps: bool = False) -> dict[str, Path]:
        """Predict cases of the pipeline's data and write them into ``output_dir`` (as :meth:`predict`)."""
        data = self._require_data()
        return {case: self._predict_and_write(data.load(case), output_dir, save_probabilities=save_probabilities,
                                              probability_maps=probability_maps)
                for case in case_ids}

    # -- on the validation cases (Pipeline.fit) ----------------------------------------------------
    def validation_dice(self, cases: PreprocessedCases, val_ids: Sequence[str]) -> float:
        """Mean over the cases of their mean Dice, on the preprocessed grid (the epochs' score:
        :meth:`fit` calls it after each epoch on the validation cases). Under ``torchrun`` each
        process scores its share of the cases (each case once)."""
        spec, scores, world = self.plan.label_spec, [], distributed.current_world()
        for case in shard(list(val_ids), world.rank, world.size):
            probabilities, reference = self.predict_probabilities(np.asarray(cases.image(case))), np.asarray(cases.label(case))
            values = to_label_values(probabilities, spec)
            scores.append(np.nanmean([s["dice"] for s in score_prediction(values, reference, spec).values()]))
        return float(np.nanmean(distributed.gather_shards(scores, world)))

    def choose_postprocessing(self, case_ids: Sequence[str] | None = None, *,
                              cases: PreprocessedCases | None = None) -> InferenceConfig:
        """Decide on ``case_ids`` (default: the validation split) what :meth:`fit` leaves to the
        validation cases, where ``self.inference`` does not already say it: for each class
        (region), nnU-Net's rule keeps its largest component where that does not lower its mean
        Dice over the cases, scored on their original grids; Mask R-CNN gets the score threshold
        with the best matching accuracy. Set ``largest_component`` (``score_threshold``) to
        ``None`` first to decide again.

        Args:
            case_ids: labelled cases of the pipeline's data.
            cases: their preprocessed cache (built when needed and not given).

        Returns:
            ``self.inference`` with the decision.
        """
        val_ids = list(case_ids if case_ids is not None else self.split.get("val") or [])
        if not val_ids:
            raise ValueError("choose_postprocessing: give case_ids (this pipeline has no validation split).")
        if self.is_instance:
            self._choose_score_threshold(cases if cases is not None else self.preprocessed_cases().build(val_ids), val_ids)
            return self.inference
        if self.inference.largest_component is not None:
            return self.inference
        spec, world, data = self.plan.label_spec, distributed.current_world(), self._require_data()
        keys = list(spec.scored)
        rows = []  # per case: Dice of each class without, then with cleaning
        for case in shard(list(val_ids), world.rank, world.size):
            sample = data.load(case)
            network_out, prepared = self._network_output(sample)
            row = []
            for keep in (False, True):
                values = to_label_values(network_out, spec, prepared=prepared, largest_component=keep)
                scores = score_prediction(values, sample.label, spec)
                row += [scores[key]["dice"] for key in keys]
            rows.append(row)
        table = np.asarray(distributed.gather_shards(rows, world), dtype=np.float64).reshape(-1, 2 * len(keys))
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from every case: nan
            plain, cleaned = np.nanmean(table[:, :len(keys)], 0), np.nanmean(table[:, len(keys):], 0)
        chosen = tuple(key for key, a, b in zip(keys, plain, cleaned) if not b < a)  # nan (never seen): keep
        for key, a, b in zip(keys, plain, cleaned):
            log.info("largest-component postprocessing of %s: %s (val Dice %.4f -> %.4f)",
                     spec.scored[key], key in chosen, a, b)
        keep = True if len(chosen) == len(keys) else (False if not chosen else chosen)
        self.inference = InferenceConfig(**{**self.inference.to_dict(), "largest_component": keep})
        return self.inference
