"""Spacing-aware metrics, validation splits, cross-validation and reports."""

from .metrics import METRIC_NAMES, compute_metrics, dice_per_label, metrics_to_rows, summarize
from .splits import kfold_splits, leave_one_out, split_validation

__all__ = [
    "METRIC_NAMES",
    "compute_metrics",
    "dice_per_label",
    "kfold_splits",
    "leave_one_out",
    "metrics_to_rows",
    "split_validation",
    "summarize",
]
