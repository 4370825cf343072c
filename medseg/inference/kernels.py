"""Faster CPU kernels for the 3D convolutions of whole-case inference.

PyTorch chooses the kernel of a float32 CPU convolution by a shape rule: a batch of one whose
``N * C * D * H`` is at most 20480 goes to the im2col kernel (``slow_conv3d``) instead of oneDNN.
On the deeper levels of a 3D U-Net that is the common case at inference, where a small case is
one window, and there the im2col kernel is 4 to 14 times slower (measured on 2 threads: 32
channels at 20x28x20, 19.6 ms against 1.4 ms). The planned hippocampus U-Net spends 60 % of a
window in it. A batch of two takes oneDNN, so the same window costs about what two windows do.

Inside :func:`onednn_convolutions`:

- a batch-of-one ``conv3d`` on CPU float32 runs through ``torch.mkldnn_convolution``, the oneDNN
  kernel PyTorch's rule picks for batches of two and more;
- a batch-of-one ``conv_transpose3d`` whose kernel equals its stride (a U-Net's upsampling; no
  padding, groups or dilation) is one matrix product followed by a voxel shuffle, which is what
  it computes when the kernels do not overlap.

Both give the same numbers up to float rounding. Calls that need gradients, other devices and
dtypes, and code being compiled by ``torch.compile`` run unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["onednn_convolutions"]

_CONV = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_T = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1, "output_padding": 0}


def _arguments(names: Sequence[str], args: tuple, kwargs: dict) -> dict:
    values = dict(_DEFAULTS)
    values.update(zip(names, args))
    values.update(kwargs)
    return values


def _triple(value: int | Sequence[int]) -> list[int]:
    return [int(value)] * 3 if isinstance(value, int) else [int(v) for v in value]


def _eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        isinstance(x, torch.Tensor) and x.ndim == 5 and x.shape[0] == 1 and x.device.type == "cpu"
        and x.dtype == torch.float32 and weight.dtype == torch.float32 and not x.is_mkldnn
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


def _conv3d(a: dict) -> torch.Tensor | None:
    if isinstance(a["padding"], str) or not _eligible(a["input"], a["weight"]):
        return None
    return torch.mkldnn_convolution(
        a["input"].contiguous(), a["weight"].contiguous(), a["bias"],
        _triple(a["padding"]), _triple(a["stride"]), _triple(a["dilation"]), int(a["groups"]),
    )


def _conv_transpose3d(a: dict) -> torch.Tensor | None:
    x, weight = a["input"], a["weight"]
    if not _eligible(x, weight):
        return None
    kernel = list(weight.shape[2:])
    if (_triple(a["stride"]) != kernel or any(_triple(a["padding"])) or any(_triple(a["output_padding"]))
            or a["groups"] != 1 or _triple(a["dilation"]) != [1, 1, 1]):
        return None
    _, channels, *size = x.shape
    out_channels = weight.shape[1]
    # out[o, s*i + k] = sum_c x[c, i] * w[c, o, k]: one (voxels x C) @ (C x O*k^3) product
    y = torch.matmul(x.reshape(channels, -1).t(), weight.reshape(channels, -1))
    y = y.view(*size, out_channels, *kernel).permute(3, 0, 4, 1, 5, 2, 6)
    y = y.reshape(1, out_channels, *(s * k for s, k in zip(size, kernel)))
    return y if a["bias"] is None else y.add_(a["bias"].view(1, -1, 1, 1, 1))


_FAST = {
    torch.conv3d: lambda args, kwargs: _conv3d(_arguments(_CONV, args, kwargs)),
    torch.conv_transpose3d: lambda args, kwargs: _conv_transpose3d(_arguments(_CONV_T, args, kwargs)),
}


class _OneDNN(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        fast = _FAST.get(func)
        # a network being compiled keeps the kernels its compiler picks
        out = None if fast is None or torch.compiler.is_compiling() else fast(args, kwargs)
        return func(*args, **kwargs) if out is None else out


@contextlib.contextmanager
def onednn_convolutions(enabled: bool = True) -> Iterator[None]:
    """Run batch-of-one 3D (transposed) convolutions on the CPU through the fast kernels above.

    A no-op where oneDNN is not built in or is switched off (``torch.backends.mkldnn.enabled``).

    Example:
        >>> net = torch.nn.Conv3d(8, 8, 3, padding=1).eval()
        >>> x = torch.rand(1, 8, 12, 12, 12)
        >>> with torch.no_grad(), onednn_convolutions():
        ...     fast = net(x)
        >>> bool(torch.allclose(fast, net(x), atol=1e-5))
        True
    """
    available = hasattr(torch, "mkldnn_convolution") and torch.backends.mkldnn.is_available()
    if not (enabled and available and torch.backends.mkldnn.enabled):
        yield
        return
    with _OneDNN():
        yield
