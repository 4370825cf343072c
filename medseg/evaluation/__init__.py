"""Spacing-aware metrics, validation splits, cross-validation and reports."""

from .average_precision import coco_ap, detection_ap
from .cross_validation import cross_validate
from .folders import evaluate_folders, write_metrics_csv
from .instance_folders import evaluate_instances
from .instance_metrics import instance_dice, instance_ious, matching
from .metrics import METRIC_NAMES, compute_metrics, dice_per_label, metrics_to_rows, summarize
from .report import OverlayCase, write_report
from .splits import kfold_splits, leave_one_out, split_validation

__all__ = [
    "METRIC_NAMES",
    "OverlayCase",
    "coco_ap",
    "compute_metrics",
    "cross_validate",
    "detection_ap",
    "dice_per_label",
    "evaluate_folders",
    "evaluate_instances",
    "instance_dice",
    "instance_ious",
    "kfold_splits",
    "leave_one_out",
    "matching",
    "metrics_to_rows",
    "split_validation",
    "summarize",
    "write_metrics_csv",
    "write_report",
]
