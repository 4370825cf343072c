"""medseg: medical image segmentation in a few lines.

Example:
    >>> import medseg
    >>> pipe = medseg.Pipeline("data_samples/hippocampus")  # doctest: +SKIP
    >>> pipe.fit(time_limit=60)                              # doctest: +SKIP
"""

from . import architectures, evaluation, inference, io, losses, preprocessing, sampling, training
from .errors import DataError, MedsegError
from .evaluation import compute_metrics
from .inference import InferenceConfig, sliding_window_inference
from .io import FolderDataset, MSDDataset, open_dataset
from .pipeline import Pipeline
from .planning import Plan, plan_dataset
from .training import TrainingConfig

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "FolderDataset",
    "InferenceConfig",
    "MSDDataset",
    "MedsegError",
    "Pipeline",
    "Plan",
    "TrainingConfig",
    "architectures",
    "compute_metrics",
    "evaluation",
    "inference",
    "io",
    "losses",
    "open_dataset",
    "plan_dataset",
    "preprocessing",
    "sampling",
    "sliding_window_inference",
    "training",
]
