"""A feature pyramid (Lin et al. 2017) over medseg's residual encoder, in 2D and 3D."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.architectures.encoder import ResidualEncoder
from medseg.architectures.layers import conv_type

__all__ = ["FeaturePyramid"]


class FeaturePyramid(nn.Module):
    """Encoder stages ``levels`` merged top-down into maps of ``channels`` features each.

    Each chosen stage gets a 1x1 lateral convolution; from the coarsest down, the coarser merged
    map is upsampled (nearest) and added; a 3x3 convolution smooths each sum.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        widths: encoder widths per stage; stage ``i`` has stride ``2**i``.
        levels: the encoder stages the pyramid reads, finest first (e.g. ``(2, 3, 4)``: strides
            4, 8, 16).
        channels: features of every pyramid level.
        norm: the encoder's normalisation, ``"instance"`` or ``"batch"``.

    Shapes:
        ``(B, in_channels, *spatial)`` with ``spatial`` divisible by :attr:`total_stride`, to a
        list of ``(B, channels, *spatial / strides[l])``, finest first.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        widths: Sequence[int],
        levels: Sequence[int],
        channels: int,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        levels = tuple(int(level) for level in levels)
        if not levels or list(levels) != sorted(set(levels)) or levels[0] < 0 or levels[-1] >= len(widths):
            raise ValueError(
                f"fpn_levels must be increasing encoder stage indices in 0..{len(widths) - 1} "
                f"(widths={tuple(widths)}), got {levels!r}."
            )
        self.levels = levels  # stages past the coarsest level are not built
        self.encoder = ResidualEncoder(spatial_dims, in_channels, widths=widths[: levels[-1] + 1], norm=norm)
        self.strides = [self.encoder.strides[level] for level in levels]
        self.total_stride = self.encoder.strides[levels[-1]]
        conv = conv_type(spatial_dims)
        self.lateral = nn.ModuleList(conv(widths[level], channels, 1) for level in levels)
        self.smooth = nn.ModuleList(conv(channels, channels, 3, padding=1) for _ in levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Pyramid maps, finest first."""
        features = self.encoder(x)
        laterals = [lateral(features[level]) for lateral, level in zip(self.lateral, self.levels)]
        merged = laterals[-1]
        outputs = [self.smooth[-1](merged)]
        for i in range(len(laterals) - 2, -1, -1):
            merged = laterals[i] + F.interpolate(merged, size=laterals[i].shape[2:], mode="nearest")
            outputs.insert(0, self.smooth[i](merged))
        return outputs
