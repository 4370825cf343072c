"""Predictions and references of a benchmark-format folder (VOC, Cityscapes, CamVid, COCO) as
decoded label maps, for :mod:`medseg.evaluation.folders`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Values(NamedTuple):
    """A label map a dataset format decoded (``(*spatial)`` values), and the file it came from."""

    path: Path
    values: np.ndarray


def format_dataset(references: str | os.PathLike):
    """The benchmark-format dataset (COCO, VOC...) ``references`` is, or ``None``."""
    from ..io.formats import detect_format, format_class

    name = detect_format(references) if Path(references).is_dir() else None
    return None if name is None else format_class(name)(Path(references))


def format_pairs(data, predictions, cases: Sequence[str] | None) -> tuple[dict[str, Values], dict[str, Values]]:
    """The pairs of a format dataset: predictions in its own files, references from its labels.
    Without ``cases``, the references are every case of each split that has a prediction."""
    if hasattr(data, "prediction_values"):
        preds = {c: Values(Path(predictions), v) for c, v in data.prediction_values(predictions).items()}
        reference = data.reference_values
    else:  # one label file per case (VOC, Cityscapes, CamVid)
        preds = {c: Values(p, data.read_values(p).T) for c, p in data.prediction_files(predictions).items()}
        reference = lambda case: data.read_values(data.cases[case].label).T  # noqa: E731
    touched = [ids for ids in data.official_split.values() if set(ids) & set(preds)]
    wanted = sorted({*(c for ids in touched for c in ids), *preds} if cases is None else cases)
    refs = {c: Values(data.cases[c].label, reference(c)) for c in wanted if c in data.cases}
    return preds, refs
