"""A small residual encoder (ResNet-like) shared by DeepLabV3+, FastFCN and Gated-SCNN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.architectures.layers import (
    ConvNormAct,
    ResidualBlock,
    check_positive_ints,
    check_spatial_dims,
)

__all__ = ["ResidualEncoder"]


class ResidualEncoder(nn.Module):
    """Stages of residual blocks; stage ``i`` works at stride ``2**i`` unless dilated.

    Stage 0 is a 3x3 conv unit and a residual block at full resolution; every further stage
    starts with a stride-2 residual block. Once the stride reaches ``output_stride``, later
    stages keep the resolution and double the dilation instead (DeepLab's atrous encoder).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        widths: channels per stage, shallowest first.
        output_stride: the coarsest stride; ``None`` for ``2 ** (len(widths) - 1)`` (no
            dilation). Must be a power of two no larger than that.
        blocks: residual blocks per stage (after stage 0's stem unit).
        norm: ``"instance"`` or ``"batch"``.

    Shapes:
        ``(B, in_channels, *spatial)`` with ``spatial`` divisible by :attr:`total_stride`, to a
        list of ``len(widths)`` maps, the ``i``-th ``(B, widths[i], *spatial / strides[i])``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        widths: Sequence[int] = (16, 32, 64, 128, 192),
        output_stride: int | None = None,
        blocks: int = 1,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        spatial_dims = check_spatial_dims(spatial_dims)
        widths = check_positive_ints(widths, argument="widths")
        check_positive_ints((blocks,), argument="blocks")
        max_stride = 2 ** (len(widths) - 1)
        if output_stride is None:
            output_stride = max_stride
        if output_stride not in [2**i for i in range(len(widths))]:
            raise ValueError(
                f"output_stride must be a power of two up to {max_stride} for "
                f"{len(widths)} stages (widths={widths}), got {output_stride!r}."
            )
        self.widths = widths
        self.strides: list[int] = []
        self.stages = nn.ModuleList()
        stride, dilation, previous = 1, 1, in_channels
        for i, width in enumerate(widths):
            step = 1
            if i > 0 and stride < output_stride:
                step, stride = 2, stride * 2
            elif i > 0:
                dilation *= 2
            layers: list[nn.Module] = []
            if i == 0:
                layers.append(ConvNormAct(spatial_dims, in_channels, width, norm=norm))
                previous = width
            for b in range(blocks):
                layers.append(
                    ResidualBlock(
                        spatial_dims,
                        previous if b == 0 else width,
                        width,
                        stride=step if b == 0 else 1,
                        dilation=dilation,
                        norm=norm,
                    )
                )
            self.stages.append(nn.Sequential(*layers))
            self.strides.append(stride)
            previous = width
        self.total_stride = stride

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every stage, shallowest first."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
