"""The training loop, checkpoints and run logs."""

from .checkpoint import load_checkpoint, save_checkpoint
from .logs import RunLog
from .precision import cpu_bfloat16, training_precision
from .trainer import TrainingConfig, train

__all__ = ["RunLog", "TrainingConfig", "cpu_bfloat16", "load_checkpoint", "save_checkpoint", "train", "training_precision"]
