"""Spacing-aware metrics, validation splits, cross-validation and reports."""

from .cross_validation import cross_validate
from .folders import evaluate_folders, write_metrics_csv
from .metrics import METRIC_NAMES, compute_metrics, dice_per_label, metrics_to_rows, summarize
from .report import OverlayCase, write_report
from .splits import kfold_splits, leave_one_out, split_validation

__all__ = [
    "METRIC_NAMES",
    "OverlayCase",
    "compute_metrics",
    "cross_validate",
    "dice_per_label",
    "evaluate_folders",
    "kfold_splits",
    "leave_one_out",
    "metrics_to_rows",
    "split_validation",
    "summarize",
    "write_metrics_csv",
    "write_report",
]
