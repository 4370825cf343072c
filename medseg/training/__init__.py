"""The training loop, checkpoints and run logs."""

from .checkpoint import load_checkpoint, save_checkpoint
from .logs import RunLog
from .trainer import TrainingConfig, cpu_bfloat16, train, training_precision

__all__ = ["RunLog", "TrainingConfig", "cpu_bfloat16", "load_checkpoint", "save_checkpoint", "train", "training_precision"]
