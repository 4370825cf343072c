"""Sliding-window inference with MONAI's arguments and window plan, batched and lean.

A MONAI user swaps one import: the windows, the Gaussian weights and the blending are MONAI's, so
the probabilities agree to float precision; the output buffers may live on the CPU while windows
run on the GPU, every window of a batch is gathered and scattered with plain slicing, and on the
CPU a batch of one window runs its 3D convolutions on oneDNN (:mod:`.kernels`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import look_up_option
from .kernels import onednn_convolutions

__all__ = ["importance_map", "sliding_window_inference", "window_starts"]


def _per_axis(value: float | Sequence[float], n: int, name: str) -> tuple[float, ...]:
    values = tuple(value) if isinstance(value, Sequence) else (value,) * n
    if len(values) != n:
        raise ValueError(f"{name}={value} must give one value or {n} values.")
    return values


def window_starts(image_size: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]) -> list[list[int]]:
    """Window origins per axis, as MONAI places them (the last window flush with the end)."""
    starts = []
    for size, roi, o in zip(image_size, roi_size, overlap):
        interval = roi if roi == size else max(int(roi * (1 - o)), 1)
        count = next((d for d in range(math.ceil(size / interval)) if d * interval + roi >= size), 0) + 1
        starts.append([min(i * interval, size - roi) for i in range(count)])
    return starts


def importance_map(
    roi_size: Sequence[int], mode: str = "constant", sigma_scale: float | Sequence[float] = 0.125,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Window weights: ones, or a Gaussian of sigma ``sigma_scale * size`` per axis (floored at 1e-3)."""
    mode = look_up_option(mode, ("constant", "gaussian"), argument="mode")
    if mode == "constant":
        return torch.ones(tuple(roi_size), device=device)
    weights = torch.ones((), device=device)
    for axis, (size, scale) in enumerate(zip(roi_size, _per_axis(sigma_scale, len(roi_size), "sigma_scale"))):
        x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
        g = torch.exp(-(x**2) / (2 * (size * scale) ** 2))
        weights = weights.unsqueeze(-1) * g if axis else g
    return weights.clamp_(min=max(float(weights.min()), 1e-3))


def _normalise(output: torch.Tensor, starts: list[list[int]], weights: torch.Tensor, roi: Sequence[int]) -> None:
    """Divide ``output`` in place by the summed window weights, one slab of the first spatial axis
    at a time: the weight sum never exists for the whole volume (a third less peak memory for two
    classes), and its values are MONAI's count map, added in the same order."""
    size = output.shape[2:]
    for low in range(0, size[0], roi[0]):
        high = min(low + roi[0], size[0])
        count = torch.zeros((high - low, *size[1:]), dtype=output.dtype, device=output.device)
        for origin in itertools.product(*starts):
            a, b = max(origin[0], low), min(origin[0] + roi[0], high)
            if a < b:
                window = (slice(a - low, b - low), *(slice(o, o + r) for o, r in zip(origin[1:], roi[1:])))
                count[window] += weights[a - origin[0] : b - origin[0]]
        output[:, :, low:high] /= count


@torch.no_grad()
def sliding_window_inference(
    inputs: torch.Tensor,
    roi_size: Sequence[int] | int,
    sw_batch_size: int,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    overlap: float | Sequence[float] = 0.25,
    mode: str = "constant",
    sigma_scale: float | Sequence[float] = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Run ``predictor`` over windows of ``inputs`` and blend the outputs.

    Args:
        inputs: ``(B, C, *spatial)``.
        roi_size: window size per axis (a non-positive value takes the image's size).
        sw_batch_size: windows per predictor call.
        predictor: ``(N, C, *roi) -> (N, K, *roi)``; a tuple output's first element is used.
        overlap: fraction of a window shared with its neighbour, per axis, in [0, 1).
        mode: ``"constant"`` or ``"gaussian"`` blending.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        padding_mode: ``torch.nn.functional.pad`` mode when the image is smaller than a window.
        cval: the constant padding value.
        sw_device: where windows run (default: the inputs' device).
        device: where the output is stitched (default: the inputs' device).

    Returns:
        ``(B, K, *spatial)`` blended predictions.

    Example:
        >>> out = sliding_window_inference(torch.rand(1, 1, 40, 40), (32, 32), 4, lambda x: x)
        >>> bool(torch.allclose(out, out))
        True
    """
    n = inputs.ndim - 2
    roi = tuple(roi_size) if isinstance(roi_size, Sequence) else (roi_size,) * n
    if len(roi) != n:
        raise ValueError(f"roi_size={roi_size} has {len(roi)} axes; inputs {tuple(inputs.shape)} have {n} spatial axes.")
    overlaps = _per_axis(overlap, n, "overlap")
    if any(not 0 <= o < 1 for o in overlaps):
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}.")
    original = inputs.shape[2:]
    roi = tuple(r if r and r > 0 else s for r, s in zip(roi, original))
    sw_device = torch.device(sw_device or inputs.device)
    device = torch.device(device or inputs.device)
    pad = []
    for r, s in reversed(list(zip(roi, original))):
        pad += [max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2]
    if any(pad):
        inputs = F.pad(inputs, pad, mode=padding_mode, value=cval) if padding_mode == "constant" else F.pad(inputs, pad, mode=padding_mode)
    size = inputs.shape[2:]
    roi = tuple(min(r, s) for r, s in zip(roi, size))
    weights = importance_map(roi, mode, sigma_scale, sw_device)
    starts = window_starts(size, roi, overlaps)
    windows = [(b, origin) for b in range(inputs.shape[0]) for origin in itertools.product(*starts)]
    output = None
    for first in range(0, len(windows), sw_batch_size):
        chunk = windows[first : first + sw_batch_size]
        index = [(b, slice(None), *(slice(o, o + r) for o, r in zip(origin, roi))) for b, origin in chunk]
        batch = torch.stack([inputs[i] for i in index]).to(sw_device)
        with onednn_convolutions(sw_device.type == "cpu"):
            result = predictor(batch)
        result = result[0] if isinstance(result, (tuple, list)) else result
        result = result.mul_(weights).to(device) if not result.requires_grad else (result * weights).to(device)
        if output is None:
            output = torch.zeros((inputs.shape[0], result.shape[1], *size), dtype=result.dtype, device=device)
        for (b, _, *spatial), window in zip(index, result):
            output[(b, slice(None), *spatial)] += window
    assert output is not None
    _normalise(output, starts, weights.to(device=device, dtype=output.dtype), roi)
    crop = tuple(slice(pad[2 * (n - 1 - a)], pad[2 * (n - 1 - a)] + s) for a, s in enumerate(original))
    return output[(slice(None), slice(None), *crop)]
