"""nnU-Net-style U-Net for 2D and 3D, with residual and deep-supervision options."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.architectures.layers import (
    ConvNormAct,
    ResidualBlock,
    check_input,
    check_positive_ints,
    check_spatial_dims,
    conv_type,
    crop_to,
    max_pool_type,
    pad_to_multiple,
    transposed_conv_type,
)
from medseg.errors import look_up_option

__all__ = ["UNet", "deep_supervision_weights", "downsample_labels"]

DOWNSAMPLES = ("conv", "maxpool")


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """nnU-Net v2's deep-supervision weights: ``1/2**i``, the coarsest zeroed, normalised to 1.

    Example:
        >>> deep_supervision_weights(4)  # [1, .5, .25, 0] / 1.75
        [0.5714285714285714, 0.2857142857142857, 0.14285714285714285, 0.0]
    """
    if n_outputs == 1:
        return [1.0]
    weights = [1.0 / 2**i for i in range(n_outputs)]
    weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


Size = tuple[int, ...]


def _per_axis(values: Sequence[int | Sequence[int]] | None, count: int, default: int, spatial_dims: int,
              argument: str) -> tuple[Size, ...]:
    """``count`` per-axis tuples from ints or tuples (``default`` everywhere when ``None``)."""
    if values is None:
        return ((default,) * spatial_dims,) * count
    values = [(v,) * spatial_dims if isinstance(v, int) else tuple(v) for v in values]
    if len(values) != count or any(len(v) != spatial_dims for v in values):
        raise ValueError(f"{argument} needs {count} entries (one per stage, each an int or {spatial_dims} "
                         f"ints), got {values!r}.")
    for v in values:
        check_positive_ints(v, argument=argument)
    return tuple(values)


def _uniform(size: Size) -> int | Size:
    """An int where every axis agrees (the layers' plain default), else the per-axis tuple."""
    return size[0] if len(set(size)) == 1 else size


def _set_conv(unit: nn.Sequential, spatial_dims: int, kernel: Size, stride: Size) -> None:
    """Swap the convolution of a conv-norm-act unit for one with per-axis kernel and stride."""
    old = unit[0]
    unit[0] = conv_type(spatial_dims)(old.in_channels, old.out_channels, kernel, stride=stride,
                                      padding=tuple((k - 1) // 2 for k in kernel), bias=True)


def _stage(
    spatial_dims: int,
    in_ch: int,
    out_ch: int,
    *,
    stride: Size,
    kernel: Size,
    residual: bool,
    norm: str,
    dropout: float,
) -> nn.Module:
    """Two conv units (or one residual block holding two), the first with ``stride``."""
    flat_stride, units = _uniform(stride), []
    if residual:
        block = ResidualBlock(spatial_dims, in_ch, out_ch, stride=flat_stride, norm=norm, dropout=dropout)
        units = [(block.conv1, stride), (block.conv2, (1,) * spatial_dims)]
    else:
        block = nn.Sequential(
            ConvNormAct(spatial_dims, in_ch, out_ch, stride=flat_stride, norm=norm, dropout=dropout),
            ConvNormAct(spatial_dims, out_ch, out_ch, norm=norm, dropout=dropout),
        )
        units = [(block[0], stride), (block[1], (1,) * spatial_dims)]
    if _uniform(kernel) != 3:  # the layers build 3x3 kernels; other ones are swapped in
        for unit, unit_stride in units:
            _set_conv(unit, spatial_dims, kernel, unit_stride)
    return block


class UNet(nn.Module):
    """U-Net as nnU-Net builds it: conv-norm-LeakyReLU stages, transposed-conv upsampling.

    Each encoder stage halves every spatial axis (stride-2 conv, or 2x max-pool as in the
    original U-Net), each decoder stage upsamples by a transposed conv, concatenates the skip and
    applies two conv units; a 1x1 conv gives the logits. Inputs of any size are zero-padded inside
    to a multiple of ``2 ** (len(features) - 1)`` and the logits cropped back.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels ``C``.
        out_channels: classes, background included.
        features: channels per stage, shallowest first; its length is the number of stages.
        norm: ``"instance"`` (affine) or ``"batch"``.
        residual: use residual blocks (nnU-Net ResEnc-like) instead of plain conv pairs.
        deep_supervision: in training mode, also return the lower-resolution decoder logits.
        downsample: ``"conv"`` (strided conv) or ``"maxpool"``.
        dropout: channel dropout probability after each conv, in ``[0, 1)``.
        strides: the downsampling of each stage after the first (``len(features) - 1``
            entries), an int or one per axis, e.g. ``(1, 2, 2)`` keeps a thick-slice axis;
            default 2 on every axis. A plan's ``pool_kernels``.
        kernel_sizes: the convolution kernel of each stage (``len(features)`` entries), an
            int or one per axis (odd), e.g. ``(1, 3, 3)``; default 3. A plan's ``conv_kernels``.

    Shapes:
        input ``(B, in_channels, *spatial)``; output ``(B, out_channels, *spatial)``. With deep
        supervision in training mode, a tuple of ``len(features) - 1`` tensors, the ``i``-th of
        shape ``(B, out_channels, *ceil(spatial / s_i))`` with ``s_i`` the product of the first
        ``i`` strides per axis: full resolution first, coarsest last.

    Example:
        >>> net = UNet(2, 1, 3, features=(8, 16, 32))
        >>> net(torch.zeros(1, 1, 97, 83)).shape
        torch.Size([1, 3, 97, 83])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        *,
        features: Sequence[int] = (32, 64, 128, 256, 320),
        norm: str = "instance",
        residual: bool = False,
        deep_supervision: bool = False,
        downsample: str = "conv",
        dropout: float = 0.0,
        strides: Sequence[int | Sequence[int]] | None = None,
        kernel_sizes: Sequence[int | Sequence[int]] | None = None,
    ) -> None:
        hparams = {"name": "unet", **{k: v for k, v in locals().items() if k not in ("self", "__class__")}}
        super().__init__()
        self.hparams = hparams  # the constructor arguments, so a Pipeline can save and rebuild it
        spatial_dims = check_spatial_dims(spatial_dims)
        check_positive_ints((in_channels, out_channels), argument="in_channels/out_channels")
        features = check_positive_ints(features, argument="features")
        if len(features) < 2:
            raise ValueError(f"features needs at least two stages, got {features!r}.")
        downsample = look_up_option(downsample, DOWNSAMPLES, argument="downsample")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        self.spatial_dims, self.deep_supervision = spatial_dims, bool(deep_supervision)
        ones = (1,) * spatial_dims
        self.strides = (ones, *_per_axis(strides, len(features) - 1, 2, spatial_dims, "strides"))
        kernels = _per_axis(kernel_sizes, len(features), 3, spatial_dims, "kernel_sizes")
        if any(k % 2 == 0 for kernel in kernels for k in kernel):
            raise ValueError(f"kernel_sizes must be odd (the padding keeps the size), got {kernels!r}.")
        # the cumulative stride of each stage per axis; the input is padded to the deepest
        self.scales = [tuple(math.prod(s[a] for s in self.strides[: i + 1]) for a in range(spatial_dims))
                       for i in range(len(features))]
        self.total_stride = self.scales[-1]
        kw = dict(residual=residual, norm=norm, dropout=dropout)

        self.encoder = nn.ModuleList()
        for i, ch in enumerate(features):
            previous = in_channels if i == 0 else features[i - 1]
            stride, kernel = self.strides[i], kernels[i]
            if i > 0 and downsample == "maxpool":
                pool = max_pool_type(spatial_dims)(_uniform(stride))
                self.encoder.append(
                    nn.Sequential(pool, _stage(spatial_dims, previous, ch, stride=ones, kernel=kernel, **kw))
                )
            else:
                self.encoder.append(_stage(spatial_dims, previous, ch, stride=stride, kernel=kernel, **kw))

        up, conv = transposed_conv_type(spatial_dims), conv_type(spatial_dims)
        self.upsample, self.decoder, self.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(features) - 1)):  # deepest decoder stage first
            step = _uniform(self.strides[i + 1])
            self.upsample.append(up(features[i + 1], features[i], step, stride=step))
            self.decoder.append(_stage(spatial_dims, 2 * features[i], features[i], stride=ones, kernel=kernels[i], **kw))
            if self.deep_supervision or i == 0:  # lower heads only exist to be supervised
                self.heads.append(conv(features[i], out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits ``(B, out_channels, *spatial)``, or the deep-supervision tuple in training."""
        check_input(x, self.spatial_dims, "UNet")
        x, shape = pad_to_multiple(x, self.total_stride)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        skips.pop()
        supervise = self.deep_supervision and self.training
        outputs = []
        for j, (up, stage) in enumerate(zip(self.upsample, self.decoder, strict=True)):
            x = stage(torch.cat([up(x), skips.pop()], dim=1))
            if supervise:  # one head per decoder stage
                outputs.append(self.heads[j](x))
            elif not skips:  # heads[-1] is the full-resolution head
                outputs.append(self.heads[-1](x))
        if not supervise:
            return crop_to(outputs[-1], shape)
        outputs.reverse()  # full resolution first
        cropped = []
        for i, out in enumerate(outputs):
            cropped.append(crop_to(out, [-(-s // k) for s, k in zip(shape, self.scales[i], strict=True)]))
        return tuple(cropped)

    def training_loss(
        self,
        outputs: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        loss_fn: Callable[..., torch.Tensor],
        **extras: torch.Tensor,
    ) -> torch.Tensor:
        """Deep-supervision loss: nnU-Net's weighted sum over resolutions.

        The ``i``-th output is compared with the target nearest-downsampled to its shape, with
        weight :func:`deep_supervision_weights`\\ ``[i]``; ``extras`` (full-resolution maps such as
        distance maps) go to the full-resolution term only. A plain tensor gets
        ``loss_fn(outputs, target, **extras)``.

        Args:
            outputs: what ``forward`` returned in training mode.
            target: integer labels ``(B, *spatial)`` or ``(B, 1, *spatial)``.
            loss_fn: a medseg loss ``(logits, target, **extras) -> scalar``.
        """
        if isinstance(outputs, torch.Tensor):
            return loss_fn(outputs, target, **extras)
        weights = deep_supervision_weights(len(outputs))
        total = weights[0] * loss_fn(outputs[0], target, **extras)
        for weight, out in zip(weights[1:], outputs[1:], strict=True):
            total = total + weight * loss_fn(out, downsample_labels(target, out.shape[2:]))
        return total


def downsample_labels(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour downsampling of integer labels ``(B, *spatial)`` or ``(B, 1, *spatial)``.

    Where ``size`` is ``ceil(spatial / k)`` for an integer ``k`` (the U-Net's case), every
    ``k``-th voxel is taken, the one aligned with the top-left corner of each output cell;
    other sizes fall back to ``F.interpolate(mode="nearest")``.
    """
    spatial = target.shape[target.ndim - len(size) :]
    steps = [max(1, round(s / n)) for s, n in zip(spatial, size, strict=True)]
    if all(-(-s // k) == n for s, k, n in zip(spatial, steps, size, strict=True)):
        return target[(..., *(slice(None, None, k) for k in steps))]
    squeeze = target.ndim == len(size) + 1
    t = target.unsqueeze(1) if squeeze else target
    t = F.interpolate(t.float(), size=tuple(size), mode="nearest").to(target.dtype)
    return t.squeeze(1) if squeeze else t
