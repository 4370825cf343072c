"""The precision training computes in: float16 autocast on a GPU, bfloat16 autocast on a CPU
that runs bfloat16 natively, float32 elsewhere (the weights and the optimiser stay float32)."""

from __future__ import annotations

import torch

__all__ = ["cpu_bfloat16", "training_precision"]


def cpu_bfloat16() -> bool:
    """Whether this CPU's oneDNN runs bfloat16 natively (AVX512-BF16 or AMX), where bfloat16
    autocast trains convolutions 2 to 2.5x faster than float32 (without it, it is emulated and
    slower)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without the query
        return False


def training_precision(device: torch.device | str, amp: bool = True) -> str:
    """The precision :func:`~medseg.training.train` autocasts to on ``device``: ``"float16"`` (a GPU),
    ``"bfloat16"`` (a CPU with :func:`cpu_bfloat16`) or ``"float32"`` (no autocast)."""
    kind = torch.device(device).type
    if not amp:
        return "float32"
    if kind == "cuda":
        return "float16"
    return "bfloat16" if kind == "cpu" and cpu_bfloat16() else "float32"
