"""Scoring a folder of predictions against a folder of references."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io.datasets import _LABEL_SUFFIXES, find_images
from ..io.files import atomic_path
from ..io.readers import read_image_file
from .metrics import METRIC_NAMES, compute_metrics, dice_per_label

__all__ = ["evaluate_folders", "write_metrics_csv"]


def _strip(case: str) -> str:
    for suffix in _LABEL_SUFFIXES:
        if case.endswith(suffix):
            return case[: -len(suffix)]
    return case


def evaluate_folders(
    predictions: str | os.PathLike, references: str | os.PathLike, *, all_metrics: bool = False,
    labels: list[int] | None = None,
) -> list[dict[str, object]]:
    """Per case and label metrics of the label files in ``predictions`` against ``references``.

    Files are matched by case id (a reference may carry a ``_mask``/``_label``/``_seg`` suffix).

    Returns:
        rows ``{"case", "label", "dice"[, other metrics]}``.
    """
    preds = {_strip(c): f[0] for c, f in find_images(predictions).items()}
    refs = {_strip(c): f[0] for c, f in find_images(references).items()}
    missing = sorted(set(preds) - set(refs))
    if missing:
        raise DataError(f"{references}: no reference for predictions {missing[:5]}.")
    rows: list[dict[str, object]] = []
    for case, path in sorted(preds.items()):
        pred, pred_grid = read_image_file(path)
        ref, ref_grid = read_image_file(refs[case])
        if pred.shape != ref.shape:
            raise DataError(f"{path}: shape {pred.shape[1:]} differs from its reference {refs[case]} ({ref.shape[1:]}).")
        pred, ref = pred[0].astype(np.int64), ref[0].astype(np.int64)
        wanted = labels or sorted(set(np.unique(ref).tolist()) - {0})
        if all_metrics:
            scores = compute_metrics(pred, ref, spacing=ref_grid.spacing, labels=wanted)
        else:
            scores = {k: {"dice": v} for k, v in dice_per_label(pred, ref, wanted).items()}
        for label, values in scores.items():
            rows.append({"case": case, "label": int(label), **values})
    return rows


def write_metrics_csv(rows: list[dict[str, object]], path: str | os.PathLike) -> Path:
    """Write rows, then one ``mean`` row per label, atomically."""
    path = Path(path)
    metrics = [m for m in METRIC_NAMES if rows and m in rows[0]]
    means = []
    for label in sorted({r["label"] for r in rows}):
        chosen = [r for r in rows if r["label"] == label]
        means.append({"case": "mean", "label": label,
                      **{m: float(np.nanmean([float(r[m]) for r in chosen])) for m in metrics}})
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case", "label", *metrics])
        writer.writeheader()
        writer.writerows([*rows, *means])
    return path
