"""Sliding-window inference with MONAI's arguments, window plan and outputs, batched and lean.

A MONAI user swaps one import (``sliding_window_inference``, or :class:`SlidingWindowInferer` for
``monai.inferers.SlidingWindowInferer``): the windows, the Gaussian weights, the blending, the
outputs (tensors, tuples and dicts of tensors, outputs at another resolution), gradients and the
``MetaTensor`` metadata are MONAI's, so the results agree to float precision. What differs is
the cost: the output may live on the CPU while windows run on the GPU, every window of a batch is
gathered and scattered with plain slicing, the summed window weights never exist for the whole
volume, and on the CPU a batch of one window runs its 3D convolutions on oneDNN (:mod:`.kernels`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer

from ..errors import look_up_option
from .kernels import onednn_convolutions
from .window_outputs import (
    Stitcher,
    buffered_windows,
    flatten_outputs,
    pack_outputs,
    product,
    window_weights,
    wrap_like,
)

__all__ = ["SlidingWindowInferer", "importance_map", "sliding_window_inference", "window_starts"]

Chunk = list[tuple[int, tuple[int, ...]]]


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
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Window weights: ones, or a Gaussian of sigma ``sigma_scale * size`` per axis (floored at 1e-3),
    computed in float32 and returned in ``dtype``."""
    mode = look_up_option(mode, ("constant", "gaussian"), argument="mode")
    if mode == "constant":
        return torch.ones(tuple(roi_size), device=device, dtype=dtype)
    weights = torch.ones((), device=device)
    for axis, (size, scale) in enumerate(zip(roi_size, _per_axis(sigma_scale, len(roi_size), "sigma_scale"))):
        x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
        g = torch.exp(-(x**2) / (2 * (size * scale) ** 2))
        weights = weights.unsqueeze(-1) * g if axis else g
    return weights.clamp_(min=max(float(weights.min()), 1e-3)).to(dtype)


def _spatial_rank(inputs: torch.Tensor, roi_size: Sequence[int] | int) -> int:
    n = inputs.ndim - 2
    if isinstance(roi_size, Sequence) and len(roi_size) != n:
        raise ValueError(
            f"roi_size={tuple(roi_size)} has {len(roi_size)} axes: inputs must have {len(roi_size) + 2} dimensions "
            f"(B, C, *spatial), got shape {tuple(inputs.shape)}; add the batch and channel axes "
            "(channel-last data: monai.transforms.EnsureChannelFirst).")
    if n < 1:
        raise ValueError(f"inputs must be (B, C, *spatial), got shape {tuple(inputs.shape)}.")
    return n


def _buffer_axis(buffer_steps: int | None, buffer_dim: int, n: int) -> int | None:
    if buffer_steps is None or buffer_steps <= 0:
        return None
    if not -n <= buffer_dim < n:
        raise ValueError(f"buffer_dim must be in [{-n}, {n - 1}] for {n} spatial axes, got {buffer_dim}.")
    return buffer_dim % n


def _padded(x: torch.Tensor, pad: list[int], padding_mode: str, cval: float) -> torch.Tensor:
    if not any(pad):
        return x
    mode = look_up_option(str(padding_mode), ("constant", "reflect", "replicate", "circular"), argument="padding_mode")
    return F.pad(x, pad, mode=mode, value=cval) if mode == "constant" else F.pad(x, pad, mode=mode)


def _plan(batch: int, origins: list, sw_batch_size: int, roi: Sequence[int], axis: int | None,
          steps: int | None) -> list[tuple[Chunk, tuple | None]]:
    """Predictor calls in MONAI's order: ``(windows, group)``, where ``group`` is ``None`` or, with a
    buffer, ``(image, low, high, opens, closes)``."""
    if axis is None:
        windows = [(b, origin) for b in range(batch) for origin in origins]
        return [(windows[i : i + sw_batch_size], None) for i in range(0, len(windows), sw_batch_size)]
    plan: list[tuple[Chunk, tuple | None]] = []
    for b in range(batch):
        for members, low, high in buffered_windows(origins, roi, axis, int(steps or 1)):
            firsts = range(0, len(members), sw_batch_size)
            plan += [([(b, o) for o in members[i : i + sw_batch_size]], (b, low, high, i == 0, i == firsts[-1]))
                     for i in firsts]
    return plan


def _gather(x: torch.Tensor, chunk: Chunk, roi: Sequence[int], device: torch.device) -> torch.Tensor:
    pieces = [x[(slice(b, b + 1), slice(None), *(slice(o, o + r) for o, r in zip(origin, roi)))] for b, origin in chunk]
    return torch.cat(pieces).to(device)  # a copy: the predictor may write into its input


def _coordinates(chunk: Chunk, roi: Sequence[int]) -> list[list[slice]]:
    """``with_coord``'s window coordinates: ``[slice(b, b + 1), slice(None), *spatial slices]`` per window."""
    return [[slice(b, b + 1), slice(None), *(slice(o, o + r) for o, r in zip(origin, roi))] for b, origin in chunk]


def _progress(items: list, enabled: bool) -> Iterable:
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # MONAI fails here; a missing progress bar is no reason to
        return items
    return tqdm(items)


def _base_weights(roi: Sequence[int], mode: str, sigma_scale: float | Sequence[float],
                  roi_weight_map: torch.Tensor | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if roi_weight_map is not None:
        return torch.as_tensor(roi_weight_map).to(device=device, dtype=dtype)
    return importance_map(roi, mode, sigma_scale, device, dtype)


def _blend(x: torch.Tensor, condition: torch.Tensor | None, roi: tuple[int, ...], origins: list,
           predictor: Callable[..., Any], options: dict, args: tuple, kwargs: dict) -> tuple[Stitcher, list | None]:
    """Run the predictor over every window of ``x`` and stitch its outputs (not yet normalised)."""
    n, dtype, sw_device = x.ndim - 2, options["dtype"], options["sw_device"]
    base = _base_weights(roi, options["mode"], options["sigma_scale"], options["roi_weight_map"], sw_device, dtype)
    fixed = window_weights(base, n, dtype, sw_device)
    stitch = Stitcher(x.shape[0], x.shape[2:], roi, dtype, options["device"], options["axis"])
    plan = _plan(x.shape[0], origins, options["sw_batch_size"], roi, options["axis"], options["buffer_steps"])
    keys = None
    for chunk, group in _progress(plan, options["progress"]):
        batch = _gather(x, chunk, roi, sw_device)
        if condition is not None:
            kwargs["condition"] = _gather(condition, chunk, roi, sw_device)
        with onednn_convolutions(sw_device.type == "cpu"):
            if options["with_coord"]:
                out = predictor(batch, _coordinates(chunk, roi), *args, **kwargs)
            else:
                out = predictor(batch, *args, **kwargs)
        keys, outputs = flatten_outputs(out)
        weights = fixed
        if options["process_fn"] is not None:
            outputs, weights = options["process_fn"](outputs, batch, base)
            weights = window_weights(weights, n, dtype, sw_device)
        if group is not None and group[3]:
            stitch.open_slab(group[1], group[2])
        stitch.add(chunk, outputs, weights)
        if group is not None and group[4]:
            stitch.flush(group[0], weights)
    return stitch, keys


def sliding_window_inference(
    inputs: torch.Tensor,
    roi_size: Sequence[int] | int,
    sw_batch_size: int,
    predictor: Callable[..., torch.Tensor | Sequence[torch.Tensor] | dict[Any, torch.Tensor]],
    overlap: float | Sequence[float] = 0.25,
    mode: str = "constant",
    sigma_scale: float | Sequence[float] = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    roi_weight_map: torch.Tensor | None = None,
    process_fn: Callable | None = None,
    buffer_steps: int | None = None,
    buffer_dim: int = -1,
    with_coord: bool = False,
    *args: Any,
    **kwargs: Any,
) -> torch.Tensor | tuple[torch.Tensor, ...] | dict[Any, torch.Tensor]:
    """Run ``predictor`` over windows of ``inputs`` and blend its outputs; MONAI's arguments and results.

    Args:
        inputs: ``(B, C, *spatial)`` (a ``MetaTensor`` gives ``MetaTensor`` results with its metadata).
        roi_size: window size per axis (a non-positive value takes the image's size).
        sw_batch_size: windows per predictor call.
        predictor: ``(N, C, *roi) -> (N, K, *roi')``: a tensor, a tuple or a dict of tensors, each
            at the input's resolution or another (``roi' = roi * zoom``; the output is scaled too).
        overlap: fraction of a window shared with its neighbour, per axis, in [0, 1).
        mode: ``"constant"`` or ``"gaussian"`` blending.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        padding_mode: ``torch.nn.functional.pad`` mode when the image is smaller than a window.
        cval: the constant padding value.
        sw_device: where windows run (default: the inputs' device).
        device: where the output is stitched (default: the inputs' device).
        progress: show a tqdm progress bar.
        roi_weight_map: the window weights (default: from ``mode`` and ``sigma_scale``).
        process_fn: ``(outputs, windows, weights) -> (outputs, weights)`` applied to every call's outputs.
        buffer_steps: sum this many window positions along ``buffer_dim`` on ``sw_device`` before
            adding them to the output (first output only, at the input's resolution).
        buffer_dim: the spatial axis of the buffer.
        with_coord: call ``predictor(windows, coordinates, ...)`` with each window's slices.
        args: passed on to ``predictor``.
        kwargs: passed on to ``predictor``; a ``condition`` tensor shaped like ``inputs`` is cut into
            the same windows.

    Returns:
        The blended outputs, structured as the predictor's, in the input's float dtype (a float16
        predictor is accumulated in float32 for float32 inputs); gradients flow where autograd is on.

    Example:
        >>> out = sliding_window_inference(torch.rand(1, 1, 40, 40), (32, 32), 4, lambda x: x)
        >>> bool(torch.allclose(out, out))
        True
    """
    n = _spatial_rank(inputs, roi_size)
    overlaps = _per_axis(overlap, n, "overlap")
    if any(not 0 <= o < 1 for o in overlaps):
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}.")
    source = inputs if isinstance(inputs, MetaTensor) else None
    x = inputs.as_tensor() if source is not None else inputs
    condition = kwargs.pop("condition", None)
    if condition is not None and tuple(condition.shape) != tuple(x.shape):
        raise ValueError(f"condition has shape {tuple(condition.shape)}; it must match inputs {tuple(x.shape)}.")
    options = {
        "dtype": x.dtype if x.is_floating_point() else torch.float32, "mode": mode, "sigma_scale": sigma_scale,
        "sw_device": torch.device(sw_device or x.device), "device": torch.device(device or x.device),
        "roi_weight_map": roi_weight_map, "process_fn": process_fn, "progress": progress, "with_coord": with_coord,
        "axis": _buffer_axis(buffer_steps, buffer_dim, n), "buffer_steps": buffer_steps, "sw_batch_size": sw_batch_size,
    }
    original = tuple(x.shape[2:])
    roi_values = tuple(roi_size) if isinstance(roi_size, Sequence) else (roi_size,) * n
    roi = tuple(r if r is not None and r > 0 else s for r, s in zip(roi_values, original))
    pad: list[int] = []
    for r, s in reversed(list(zip(roi, original))):
        pad += [max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2]
    x = _padded(x, pad, padding_mode, cval)
    condition = None if condition is None else _padded(condition, pad, padding_mode, cval)
    origins = product(window_starts(x.shape[2:], roi, overlaps))
    stitch, keys = _blend(x, condition, roi, origins, predictor, options, args, kwargs)
    results = []
    for blended in stitch.outputs:
        blended.normalise(origins)
        results.append(blended.cropped(pad, original))
    return wrap_like(pack_outputs(results, keys), source)


class SlidingWindowInferer(Inferer):
    """``monai.inferers.SlidingWindowInferer`` with medseg's sliding window: same arguments, same results.

    Args:
        roi_size, sw_batch_size, overlap, mode, sigma_scale, padding_mode, cval, sw_device, device,
            progress, buffer_steps, buffer_dim, with_coord: as in :func:`sliding_window_inference`.
        cache_roi_weight_map: compute the window weights once, here (needs a fixed ``roi_size``).
        cpu_thresh: stitch on the CPU when an input has more voxels than this (and ``device`` is unset).

    Example:
        >>> inferer = SlidingWindowInferer((32, 32), sw_batch_size=4, overlap=0.5, mode="gaussian")
        >>> tuple(inferer(torch.rand(1, 1, 40, 40), lambda x: x).shape)
        (1, 1, 40, 40)
    """

    def __init__(
        self, roi_size: Sequence[int] | int, sw_batch_size: int = 1, overlap: float | Sequence[float] = 0.25,
        mode: str = "constant", sigma_scale: float | Sequence[float] = 0.125, padding_mode: str = "constant",
        cval: float = 0.0, sw_device: torch.device | str | None = None, device: torch.device | str | None = None,
        progress: bool = False, cache_roi_weight_map: bool = False, cpu_thresh: int | None = None,
        buffer_steps: int | None = None, buffer_dim: int = -1, with_coord: bool = False,
    ) -> None:
        super().__init__()
        self.roi_size, self.sw_batch_size, self.overlap = roi_size, sw_batch_size, overlap
        self.mode = look_up_option(str(mode), ("constant", "gaussian"), argument="mode")
        self.sigma_scale, self.padding_mode, self.cval = sigma_scale, padding_mode, cval
        self.sw_device, self.device, self.progress, self.cpu_thresh = sw_device, device, progress, cpu_thresh
        self.buffer_steps, self.buffer_dim, self.with_coord = buffer_steps, buffer_dim, with_coord
        self.roi_weight_map = None
        fixed = isinstance(roi_size, Sequence) and min(roi_size) > 0
        if cache_roi_weight_map and fixed:
            self.roi_weight_map = importance_map(tuple(roi_size), self.mode, sigma_scale, device or "cpu")
        elif cache_roi_weight_map:
            warnings.warn(f"cache_roi_weight_map=True needs a fixed roi_size, got {roi_size}: weights are "
                          "computed per call.", stacklevel=2)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Blend ``network`` over ``inputs``; ``args``/``kwargs`` go to ``network`` except ``device``,
        ``buffer_steps`` and ``buffer_dim``, which override this inferer's for this call."""
        device = kwargs.pop("device", self.device)
        buffer_steps = kwargs.pop("buffer_steps", self.buffer_steps)
        buffer_dim = kwargs.pop("buffer_dim", self.buffer_dim)
        if device is None and self.cpu_thresh is not None and inputs.shape[2:].numel() > self.cpu_thresh:
            device = "cpu"  # a large image is stitched in CPU memory
        return sliding_window_inference(
            inputs, self.roi_size, self.sw_batch_size, network, self.overlap, self.mode, self.sigma_scale,
            self.padding_mode, self.cval, self.sw_device, device, self.progress, self.roi_weight_map, None,
            buffer_steps, buffer_dim, self.with_coord, *args, **kwargs,
        )
