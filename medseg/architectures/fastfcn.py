"""FastFCN (Wu et al. 2019): a plain-stride encoder with Joint Pyramid Upsampling and ASPP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.architectures.aspp import ASPP
from medseg.architectures.encoder import ResidualEncoder
from medseg.architectures.layers import (
    ConvNormAct,
    check_input,
    check_positive_ints,
    check_spatial_dims,
    conv_type,
    crop_to,
    norm_layer,
    pad_to_multiple,
    upsample_to,
)

__all__ = ["FastFCN", "JPU"]


class JPU(nn.Module):
    """Joint Pyramid Upsampling: the last encoder maps joined at the finest one's resolution.

    Each map gets a 3x3 conv unit to ``width`` channels and is resized to the first (finest)
    map; their concatenation goes through parallel separable convolutions (depthwise dilated
    3x3, norm, pointwise 1x1, norm, LeakyReLU) with the given dilations, concatenated again.

    Shapes:
        maps ``(B, in_channels[i], *s_i)``, finest first, to
        ``(B, len(dilations) * width, *s_0)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: Sequence[int],
        width: int,
        *,
        dilations: Sequence[int] = (1, 2, 4, 8),
        norm: str = "instance",
    ) -> None:
        super().__init__()
        dilations = check_positive_ints(dilations, argument="dilations")
        self.reduce = nn.ModuleList(
            [ConvNormAct(spatial_dims, c, width, norm=norm) for c in in_channels]
        )
        joined = width * len(in_channels)
        conv = conv_type(spatial_dims)
        self.dilated = nn.ModuleList(
            [
                nn.Sequential(
                    conv(joined, joined, 3, padding=d, dilation=d, groups=joined, bias=False),
                    norm_layer(norm, spatial_dims, joined),
                    conv(joined, width, 1, bias=False),
                    norm_layer(norm, spatial_dims, width),
                    nn.LeakyReLU(0.01, inplace=True),
                )
                for d in dilations
            ]
        )
        self.out_channels = width * len(dilations)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        size = maps[0].shape[2:]
        joined = torch.cat(
            [upsample_to(r(m), size) for r, m in zip(self.reduce, maps, strict=True)], dim=1
        )
        return torch.cat([branch(joined) for branch in self.dilated], dim=1)


class FastFCN(nn.Module):
    """FastFCN for 2D and 3D: encoder without dilation, JPU over its last three stages, ASPP head.

    The JPU replaces the dilated convolutions of DeepLab's encoder: it works at the resolution
    of the third-to-last stage (stride 4 with the default five stages) and the ASPP head
    (DeepLabV3's: ASPP, a 3x3 conv unit, a 1x1 classifier) runs there; the logits are linearly
    upsampled to the input size. Inputs of any size are padded inside and cropped back.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes, background included.
        widths: encoder channels per stage (stage ``i`` at stride ``2**i``), at least three.
        jpu_channels: channels of each JPU branch (512 in the paper, for ResNet-101).
        jpu_dilations: dilations of the JPU's separable convolutions.
        head_channels: channels of the ASPP head.
        rates: dilation rates of the ASPP head.
        blocks: residual blocks per encoder stage.
        norm: ``"instance"`` or ``"batch"``.

    Shapes:
        ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``.

    Example:
        >>> net = FastFCN(2, 1, 3, widths=(8, 8, 16, 16, 32), jpu_channels=8, head_channels=16)
        >>> net(torch.zeros(1, 1, 97, 83)).shape
        torch.Size([1, 3, 97, 83])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        *,
        widths: Sequence[int] = (16, 32, 64, 128, 192),
        jpu_channels: int = 32,
        jpu_dilations: Sequence[int] = (1, 2, 4, 8),
        head_channels: int = 64,
        rates: Sequence[int] = (4, 8, 12),
        blocks: int = 1,
        norm: str = "instance",
    ) -> None:
        hparams = {"name": "fastfcn", **{k: v for k, v in locals().items() if k not in ("self", "__class__")}}
        super().__init__()
        self.hparams = hparams  # the constructor arguments, so a Pipeline can save and rebuild it
        spatial_dims = check_spatial_dims(spatial_dims)
        if len(widths) < 3:
            raise ValueError(f"widths needs at least three stages for the JPU, got {widths!r}.")
        self.spatial_dims = spatial_dims
        self.encoder = ResidualEncoder(
            spatial_dims, in_channels, widths=widths, blocks=blocks, norm=norm
        )
        self.jpu = JPU(
            spatial_dims, self.encoder.widths[-3:], jpu_channels, dilations=jpu_dilations, norm=norm
        )
        self.head = nn.Sequential(
            ASPP(spatial_dims, self.jpu.out_channels, head_channels, rates=rates, norm=norm),
            ConvNormAct(spatial_dims, head_channels, head_channels, norm=norm),
            conv_type(spatial_dims)(head_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *spatial)`` for ``x`` ``(B, in_channels, *spatial)``."""
        check_input(x, self.spatial_dims, "FastFCN")
        padded, shape = pad_to_multiple(x, self.encoder.total_stride)
        features = self.encoder(padded)
        logits = self.head(self.jpu(features[-3:]))
        return crop_to(upsample_to(logits, padded.shape[2:]), shape)
