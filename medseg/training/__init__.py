"""The training loop and checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint
from .trainer import TrainingConfig, train

__all__ = ["TrainingConfig", "load_checkpoint", "save_checkpoint", "train"]
