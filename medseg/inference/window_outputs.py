"""Where the windows' predictions are blended: one volume per predictor output, each at its own
resolution, plus the bookkeeping a MONAI caller expects around it (dict and tuple outputs, the
window order of ``buffer_steps``, the ``MetaTensor`` wrapper).

An output whose windows come back at another size than the input window (a decoder level of a
deeply supervised network, a super-resolution head) is stitched on a grid scaled by
``output window / input window`` per axis, with the window weights resampled to match, as MONAI
does. The summed weights are never held for the whole volume: :meth:`Blended.normalise` builds
them one slab of the first spatial axis at a time, adding the same values in the same order as
MONAI's count map.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor

__all__ = ["Blended", "buffered_windows", "flatten_outputs", "pack_outputs", "wrap_like"]

Origin = tuple[int, ...]


def flatten_outputs(out: Any) -> tuple[list | None, tuple[torch.Tensor, ...]]:
    """``(keys, tensors)`` of a predictor's output: a tensor, a sequence or a mapping (sorted keys)."""
    if isinstance(out, torch.Tensor):
        return None, (out,)
    if isinstance(out, Mapping):
        keys = sorted(out)
        return keys, tuple(out[k] for k in keys)
    if isinstance(out, Sequence):
        return None, tuple(out)
    raise TypeError(f"the predictor returned a {type(out).__name__}; return a tensor, a tuple or a dict of tensors.")


def pack_outputs(outputs: Sequence[torch.Tensor], keys: list | None) -> Any:
    """The inverse of :func:`flatten_outputs` (a single unnamed output comes back as a tensor)."""
    if keys is not None:
        return dict(zip(keys, outputs))
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def wrap_like(result: Any, source: torch.Tensor | None) -> Any:
    """Give every tensor of ``result`` the metadata (affine, meta dict) of the ``MetaTensor`` ``source``."""
    if source is None:
        return result
    if isinstance(result, dict):
        return {k: wrap_like(v, source) for k, v in result.items()}
    if isinstance(result, tuple):
        return tuple(wrap_like(v, source) for v in result)
    return MetaTensor(result).copy_meta_from(source, copy_attr=True)


def window_weights(weights: torch.Tensor, spatial: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``weights`` as ``(1, 1, *roi)`` on ``device`` in ``dtype``."""
    weights = torch.as_tensor(weights)
    if weights.ndim == spatial:
        weights = weights[None, None]
    return weights.to(dtype=dtype, device=device)


def buffered_windows(
    origins: Sequence[Origin], roi: Sequence[int], axis: int, steps: int
) -> list[tuple[list[Origin], int, int]]:
    """Group windows for ``buffer_steps``: windows sorted (stably) by their start along ``axis``,
    ``steps`` distinct starts per group; each group with the extent ``[low, high)`` it covers on
    ``axis``."""
    ordered = sorted(origins, key=lambda origin: origin[axis])
    starts = sorted({origin[axis] for origin in ordered})
    groups = []
    for first in range(0, len(starts), steps):
        chosen = set(starts[first : first + steps])
        members = [origin for origin in ordered if origin[axis] in chosen]
        groups.append((members, min(chosen), max(chosen) + roi[axis]))
    return groups


class Blended:
    """One output of the predictor, blended over every window of every image of the batch.

    Args:
        batch: images in the input batch.
        channels: channels of this output.
        size: padded spatial size of the input.
        roi: input window size.
        window: this output's window size (``roi`` unless the predictor changes resolution).
        weights: ``(1, 1, *window)`` weights whose sums normalise the output.
        dtype: accumulation dtype (the input's).
        device: where the output lives.
    """

    def __init__(self, batch: int, channels: int, size: Sequence[int], roi: Sequence[int],
                 window: Sequence[int], weights: torch.Tensor, dtype: torch.dtype, device: torch.device) -> None:
        self.scale = None if tuple(window) == tuple(roi) else [w / float(r) for w, r in zip(window, roi)]
        self.shape = [int(s * z) for s, z in zip(size, self.scale)] if self.scale else list(size)
        self.window = list(window)
        self.roi = list(roi)
        self.weights = weights.to(device)[0, 0]
        self.tensor = torch.zeros((batch, channels, *self.shape), dtype=dtype, device=device)

    def slices(self, origin: Origin, roi: Sequence[int] | None = None) -> tuple[slice, ...]:
        """This output's slices of the window at ``origin`` (input coordinates)."""
        roi = roi or self.roi
        if self.scale is None:
            return tuple(slice(o, o + r) for o, r in zip(origin, roi))
        return tuple(slice(int(o * z), int((o + r) * z)) for o, r, z in zip(origin, roi, self.scale))

    def add(self, chunk: Sequence[tuple[int, Origin]], windows: torch.Tensor) -> None:
        """Add weighted ``windows`` (one per ``(image, origin)`` of ``chunk``) at their places."""
        for (b, origin), window in zip(chunk, windows):
            self.tensor[(b, slice(None), *self.slices(origin))] += window

    def normalise(self, origins: Sequence[Origin]) -> None:
        """Divide by the summed window weights, one slab of the first spatial axis at a time."""
        places = [self.slices(origin) for origin in origins]
        step = max(self.window[0], 1)
        for low in range(0, self.shape[0], step):
            high = min(low + step, self.shape[0])
            count = torch.zeros((high - low, *self.shape[1:]), dtype=self.tensor.dtype, device=self.tensor.device)
            for first, *rest in places:
                a, b = max(first.start, low), min(first.stop, high)
                if a < b:
                    count[(slice(a - low, b - low), *rest)] += self.weights[a - first.start : b - first.start]
            self.tensor[:, :, low:high] /= count

    def cropped(self, pad: Sequence[int], original: Sequence[int]) -> torch.Tensor:
        """The output without the padding added when the image was smaller than a window."""
        if not any(pad):
            return self.tensor
        n = len(original)
        zoom = [s / r for s, r in zip(self.shape, self.roi)]
        crop = []
        for axis in range(n):
            before = pad[2 * (n - 1 - axis)]
            crop.append(slice(int(round(before * zoom[axis])), int(round((before + original[axis]) * zoom[axis]))))
        return self.tensor[(slice(None), slice(None), *crop)]


def rescaled(weights: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """``(1, 1, *w)`` weights resampled (nearest-exact, as MONAI) to ``window``."""
    if tuple(weights.shape[2:]) == tuple(window):
        return weights
    return F.interpolate(weights, tuple(window), mode="nearest-exact")


def weighted(output: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``output * weights`` in ``output``'s dtype, in place when autograd allows it."""
    if not output.requires_grad:
        try:
            return output.mul_(weights)
        except RuntimeError:  # an expanded view or an inference tensor: fall through
            pass
    return (output * weights).to(output.dtype)


def slab_origin(origin: Origin, axis: int, low: int) -> Origin:
    """``origin`` shifted by ``-low`` along ``axis`` (into a buffer that starts at ``low``)."""
    return tuple(o - low if a == axis else o for a, o in enumerate(origin))


def product(starts: Sequence[Sequence[int]]) -> list[Origin]:
    """Window origins in MONAI's order (the last axis fastest)."""
    return list(itertools.product(*starts))


class Stitcher:
    """Blends the predictor's outputs chunk by chunk into :class:`Blended` volumes.

    Without a buffer, every output of every chunk goes straight into its volume on ``device``.
    With one (``buffer_steps``), the first output of the windows of a group is summed in a slab on
    the windows' device and added to the volume once per group; that output must keep the input's
    resolution.
    """

    def __init__(self, batch: int, size: Sequence[int], roi: Sequence[int], dtype: torch.dtype,
                 device: torch.device, buffer_axis: int | None = None) -> None:
        self.batch, self.size, self.roi = batch, list(size), list(roi)
        self.dtype, self.device, self.axis = dtype, device, buffer_axis
        self.outputs: list[Blended] = []
        self.slab: torch.Tensor | None = None
        self.low = self.high = 0  # the open slab's extent along the buffer axis

    def _blended(self, index: int, channels: int, window: Sequence[int], weights: torch.Tensor) -> Blended:
        if len(self.outputs) <= index:
            self.outputs.append(Blended(self.batch, channels, self.size, self.roi, window, weights, self.dtype,
                                        self.device))
        return self.outputs[index]

    def add(self, chunk: Sequence[tuple[int, Origin]], outputs: Sequence[torch.Tensor], weights: torch.Tensor) -> None:
        """Weight the windows of ``chunk`` and add them to their volumes (or to the slab)."""
        if self.axis is not None:
            self._add_to_slab(chunk, outputs[0], weights)
            return
        base = weights
        for index, output in enumerate(outputs):
            # rescaled from the previous output's weights, as MONAI (which fails where we restart)
            weights = base if tuple(output.shape[2:]) == tuple(self.roi) else rescaled(weights, output.shape[2:])
            blended = self._blended(index, output.shape[1], output.shape[2:], weights)
            blended.add(chunk, weighted(output, weights).to(self.device))

    def _add_to_slab(self, chunk: Sequence[tuple[int, Origin]], output: torch.Tensor, weights: torch.Tensor) -> None:
        if tuple(output.shape[2:]) != tuple(self.roi):
            raise ValueError(f"buffer_steps needs outputs at the input's resolution: windows of {tuple(self.roi)} "
                             f"gave {tuple(output.shape[2:])}; leave buffer_steps=None.")
        low = self.low
        if self.slab is None:
            shape = list(self.size)
            shape[self.axis] = self.high - low
            self.slab = torch.zeros((output.shape[1], *shape), dtype=self.dtype, device=output.device)
        for (_, origin), window in zip(chunk, output):
            place = tuple(slice(o, o + r) for o, r in zip(slab_origin(origin, self.axis, low), self.roi))
            self.slab[(slice(None), *place)] += window * weights[0]

    def open_slab(self, low: int, high: int) -> None:
        """Start the slab of a group covering ``[low, high)`` along the buffer axis."""
        self.low, self.high, self.slab = low, high, None

    def flush(self, image: int, weights: torch.Tensor) -> None:
        """Add the slab to the volume of ``image``."""
        assert self.slab is not None and self.axis is not None
        blended = self._blended(0, self.slab.shape[0], self.roi, weights)
        place = [slice(None)] * len(self.size)
        place[self.axis] = slice(self.low, self.high)
        blended.tensor[(image, slice(None), *place)] += self.slab.to(self.device)
        self.slab = None
