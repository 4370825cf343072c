"""Building blocks shared by the architectures, written once for 2D and 3D.

A layer type is picked from a small lookup keyed by ``spatial_dims``; no ``_2D``/``_3D`` twins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import look_up_option

__all__ = [
    "NORMS",
    "ConvNormAct",
    "ResidualBlock",
    "check_input",
    "check_positive_ints",
    "check_spatial_dims",
    "conv_type",
    "crop_to",
    "max_pool_type",
    "norm_layer",
    "pad_to_multiple",
    "transposed_conv_type",
    "upsample_to",
]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_TRANSPOSED_CONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}
NORMS = ("batch", "instance")


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if it is 2 or 3, else raise a ``ValueError`` naming it."""
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    return int(spatial_dims)


def check_input(x: torch.Tensor, spatial_dims: int, owner: str) -> None:
    """Raise a ``ValueError`` unless ``x`` is a ``(B, C, *spatial)`` batch of ``spatial_dims``."""
    if x.ndim != spatial_dims + 2:
        raise ValueError(
            f"{owner}(spatial_dims={spatial_dims}) expects input (B, C, *spatial) with "
            f"{spatial_dims + 2} dims, got shape {tuple(x.shape)}."
        )


def check_positive_ints(values: Sequence[int], *, argument: str) -> tuple[int, ...]:
    """Return ``values`` as a non-empty tuple of positive ints, else raise a ``ValueError``."""
    values = tuple(values)
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise ValueError(
            f"{argument} must be a non-empty sequence of positive ints, got {values!r}."
        )
    return values


def conv_type(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return _CONV[check_spatial_dims(spatial_dims)]


def transposed_conv_type(spatial_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return _TRANSPOSED_CONV[check_spatial_dims(spatial_dims)]


def max_pool_type(spatial_dims: int) -> type[nn.Module]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return _MAX_POOL[check_spatial_dims(spatial_dims)]


def norm_layer(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation layer: ``"instance"`` (affine) or ``"batch"``."""
    norm = look_up_option(norm, NORMS, argument="norm")
    if norm == "instance":
        return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims](channels, affine=True)
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](channels)


class ConvNormAct(nn.Sequential):
    """Convolution, optional dropout, normalisation and LeakyReLU(0.01), nnU-Net's basic unit.

    Shapes: ``(B, in_channels, *spatial) -> (B, out_channels, *spatial / stride)``; the padding
    keeps the size at stride 1 for odd kernels.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        norm: str = "instance",
        dropout: float = 0.0,
        act: bool = True,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            conv_type(spatial_dims)(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                bias=True,
            )
        ]
        if dropout > 0:
            layers.append(_DROPOUT[spatial_dims](dropout))
        layers.append(norm_layer(norm, spatial_dims, out_channels))
        if act:
            layers.append(nn.LeakyReLU(0.01, inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut, then LeakyReLU.

    Shapes: ``(B, in_channels, *spatial) -> (B, out_channels, *spatial / stride)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(
            spatial_dims,
            in_channels,
            out_channels,
            stride=stride,
            dilation=dilation,
            norm=norm,
            dropout=dropout,
        )
        self.conv2 = ConvNormAct(
            spatial_dims, out_channels, out_channels, dilation=dilation, norm=norm, act=False
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvNormAct(
                spatial_dims,
                in_channels,
                out_channels,
                kernel_size=1,
                stride=stride,
                norm=norm,
                act=False,
            )
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


def pad_to_multiple(
    x: torch.Tensor, multiple: int | Sequence[int]
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the spatial axes of ``x`` at their far end up to a multiple of ``multiple``.

    Padding at the far end keeps voxel ``j`` of a stride-``s`` feature map aligned with voxels
    ``j*s .. j*s+s-1`` of the input. If every axis would shrink to a single voxel at the deepest
    stride, the last axis is padded to two, so instance norm still has statistics to compute.

    Args:
        x: ``(B, C, *spatial)``.
        multiple: the network's total stride, one for all axes or one per axis.

    Returns:
        The padded tensor and the original spatial shape (for :func:`crop_to`).
    """
    shape = tuple(x.shape[2:])
    steps = [multiple] * len(shape) if isinstance(multiple, int) else list(multiple)
    target = [max(1, math.ceil(s / k)) * k for s, k in zip(shape, steps, strict=True)]
    if any(k > 1 for k in steps) and target == steps:
        target[-1] = 2 * steps[-1]
    pad: list[int] = []
    for size, goal in zip(reversed(shape), reversed(target), strict=True):
        pad += [0, goal - size]
    if any(pad):
        x = F.pad(x, pad)
    return x, shape


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(Bi/tri)linear resize of ``(B, C, *spatial)`` to ``size`` (no-op when already there)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def crop_to(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Crop the spatial axes of ``x`` (``(B, C, *spatial)``) to their first ``shape`` voxels."""
    return x[(..., *(slice(0, s) for s in shape))]
