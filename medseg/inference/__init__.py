"""Sliding-window inference, test-time augmentation, ensembles and postprocessing."""

from .postprocess import keep_largest_component, keep_largest_region_component, to_label_values
from .predictor import InferenceConfig, predict_probabilities
from .probabilities import invert_probabilities, write_probabilities
from .sliding_window import (
    SlidingWindowInferer,
    importance_map,
    sliding_window_inference,
    window_starts,
)

__all__ = [
    "InferenceConfig",
    "SlidingWindowInferer",
    "importance_map",
    "invert_probabilities",
    "keep_largest_component",
    "keep_largest_region_component",
    "predict_probabilities",
    "sliding_window_inference",
    "to_label_values",
    "window_starts",
    "write_probabilities",
]
