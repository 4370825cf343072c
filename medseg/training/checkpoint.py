"""Checkpoints that load without running code (``weights_only=True``), written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..io.files import atomic_path

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Save tensors, numbers, strings, lists and dicts; a crash mid-write keeps the old file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with pickle restricted to plain data (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found.")
    return torch.load(path, map_location=map_location, weights_only=True)
