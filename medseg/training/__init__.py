"""The training loop, checkpoints and run logs."""

from .checkpoint import load_checkpoint, save_checkpoint
from .logs import RunLog
from .trainer import TrainingConfig, train

__all__ = ["RunLog", "TrainingConfig", "load_checkpoint", "save_checkpoint", "train"]
