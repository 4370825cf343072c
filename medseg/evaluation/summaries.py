"""Per-case metric rows and their summaries (mean, standard deviation, median per label and metric)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["METRIC_NAMES", "metrics_to_rows", "summarize"]

METRIC_NAMES: tuple[str, ...] = (
    "dice",
    "iou",
    "precision",
    "recall",
    "specificity",
    "volume_difference",
    "hd",
    "hd95",
    "assd",
    "nsd",
)
"""The keys of the per-label dictionaries :func:`~medseg.evaluation.metrics.compute_metrics` returns,
in report order."""

_SUMMARY_KEYS = ("mean", "std", "median", "n", "n_nan", "n_inf")


def metrics_to_rows(
    metrics: Mapping[int, Mapping[str, float]], *, case: str, fold: int | None = None
) -> list[dict[str, object]]:
    """Flatten one case's :func:`compute_metrics` result into rows for :func:`summarize`/reports.

    Example:
        >>> metrics_to_rows({1: {"dice": 0.5}}, case="c1", fold=0)
        [{'fold': 0, 'case': 'c1', 'label': 1, 'dice': 0.5}]
    """
    return [
        {"fold": fold, "case": case, "label": int(label), **dict(values)}
        for label, values in metrics.items()
    ]


def _describe(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    nan, inf = np.isnan(array), np.isinf(array)
    finite = array[~nan & ~inf]
    stats = (
        (float(finite.mean()), float(finite.std()), float(np.median(finite)))
        if finite.size
        else (math.nan, math.nan, math.nan)
    )
    return dict(
        zip(_SUMMARY_KEYS, (*stats, int(finite.size), int(nan.sum()), int(inf.sum())), strict=True)
    )


def summarize(rows: Iterable[Mapping[str, object]]) -> dict[int, dict[str, dict[str, float]]]:
    """Mean, standard deviation and median per label and metric over per-case rows.

    Statistics use finite values only: NaN is ignored and infinite values (a surface distance
    when one mask is empty) are left out of the statistics but counted in ``n_inf``, so a mean
    HD95 always reads with how many cases had no surface. ``std`` is the population standard
    deviation (``numpy.std``, ddof=0). A metric with no finite value has NaN statistics.

    Args:
        rows: dicts holding ``label`` and metric keys (others, e.g. ``fold`` and ``case``, are
            ignored), as :func:`metrics_to_rows` gives.

    Returns:
        ``{label: {metric: {"mean", "std", "median", "n", "n_nan", "n_inf"}}}``, labels sorted,
        metrics in :data:`METRIC_NAMES` order.

    Example:
        >>> summarize([{"label": 1, "dice": 0.5}, {"label": 1, "dice": 1.0}])[1]["dice"]["mean"]
        0.75
    """
    collected: dict[int, dict[str, list[float]]] = {}
    for row in rows:
        if "label" not in row:
            raise ValueError(f"each row needs a 'label' key, got keys {sorted(row)}.")
        per_metric = collected.setdefault(int(row["label"]), {})
        for name in METRIC_NAMES:
            if name in row and row[name] is not None:
                per_metric.setdefault(name, []).append(float(row[name]))
    return {
        label: {
            name: _describe(collected[label][name])
            for name in METRIC_NAMES
            if name in collected[label]
        }
        for label in sorted(collected)
    }
