"""Atrous Spatial Pyramid Pooling (Chen et al., DeepLabV3), for 2D and 3D."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.architectures.layers import (
    ConvNormAct,
    check_positive_ints,
    conv_type,
    upsample_to,
)

__all__ = ["ASPP"]


class ASPP(nn.Module):
    """Parallel 1x1 and dilated 3x3 convolutions plus image pooling, fused by a 1x1 conv.

    The image-pooling branch has no normalisation (a single voxel has no statistics to
    normalise; this keeps batch size 1 trainable). Gated-SCNN's variant adds a branch from an
    extra map (the boundary map), resized to the features and lifted by a 1x1 conv.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input features.
        out_channels: channels of every branch and of the output.
        rates: dilation rates of the 3x3 branches.
        norm: ``"instance"`` or ``"batch"``.
        extra_channels: channels of the optional extra map (0: no such branch).

    Shapes:
        ``(B, in_channels, *spatial)`` (and ``extra`` ``(B, extra_channels, *any)``) to
        ``(B, out_channels, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        rates: Sequence[int] = (2, 4, 6),
        norm: str = "instance",
        extra_channels: int = 0,
    ) -> None:
        super().__init__()
        rates = check_positive_ints(rates, argument="rates")
        self.branches = nn.ModuleList(
            [ConvNormAct(spatial_dims, in_channels, out_channels, kernel_size=1, norm=norm)]
            + [
                ConvNormAct(spatial_dims, in_channels, out_channels, dilation=r, norm=norm)
                for r in rates
            ]
        )
        conv = conv_type(spatial_dims)
        pool = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[spatial_dims]
        self.pooling = nn.Sequential(
            pool(1), conv(in_channels, out_channels, 1), nn.LeakyReLU(0.01, inplace=True)
        )
        self.extra: nn.Module | None = None
        if extra_channels:
            self.extra = nn.Sequential(
                conv(extra_channels, out_channels, 1), nn.LeakyReLU(0.01, inplace=True)
            )
        n_branches = len(self.branches) + 1 + int(self.extra is not None)
        self.project = ConvNormAct(
            spatial_dims, n_branches * out_channels, out_channels, kernel_size=1, norm=norm
        )

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Fuse the branches; ``extra`` is required iff ``extra_channels`` was given."""
        if (extra is None) != (self.extra is None):
            raise ValueError("ASPP: pass `extra` exactly when built with extra_channels > 0.")
        size = x.shape[2:]
        outs = [branch(x) for branch in self.branches]
        outs.append(self.pooling(x).expand(-1, -1, *size))
        if self.extra is not None:
            outs.append(self.extra(upsample_to(extra, size)))
        return self.project(torch.cat(outs, dim=1))
