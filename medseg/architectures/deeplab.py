"""DeepLabV3+ (Chen et al. 2018): atrous residual encoder, ASPP and a decoder with a skip."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.architectures.aspp import ASPP
from medseg.architectures.encoder import ResidualEncoder
from medseg.architectures.layers import (
    ConvNormAct,
    check_input,
    check_spatial_dims,
    conv_type,
    crop_to,
    pad_to_multiple,
    upsample_to,
)

__all__ = ["DeepLabV3Plus", "V3PlusDecoder"]


class V3PlusDecoder(nn.Module):
    """DeepLabV3+'s decoder: upsample the ASPP output, join a reduced low-level map, refine.

    Shapes:
        ``high (B, high_channels, *s_high)`` and ``low (B, low_in_channels, *s_low)`` to logits
        ``(B, out_channels, *s_low)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        high_channels: int,
        low_in_channels: int,
        out_channels: int,
        *,
        low_channels: int,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        self.reduce = ConvNormAct(
            spatial_dims, low_in_channels, low_channels, kernel_size=1, norm=norm
        )
        self.refine = nn.Sequential(
            ConvNormAct(spatial_dims, high_channels + low_channels, high_channels, norm=norm),
            ConvNormAct(spatial_dims, high_channels, high_channels, norm=norm),
        )
        self.head = conv_type(spatial_dims)(high_channels, out_channels, 1)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        high = upsample_to(high, low.shape[2:])
        return self.head(self.refine(torch.cat([high, self.reduce(low)], dim=1)))


def default_rates(output_stride: int, rates: Sequence[int] | None) -> tuple[int, ...]:
    """ASPP rates: ``rates`` if given, else (2, 4, 6) at stride 16 doubled at stride 8.

    The paper's (6, 12, 18) suit 513-pixel crops; medical patches are a few times smaller.
    """
    if rates is not None:
        return tuple(rates)
    return (2, 4, 6) if output_stride >= 16 else (4, 8, 12)


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ for 2D and 3D.

    A residual encoder whose last stages trade stride for dilation (output stride 8 or 16), ASPP
    on its coarsest map, and the V3+ decoder joining the stride-4 map, then a linear upsampling
    of the logits to the input size. Inputs of any size are padded inside and cropped back.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes, background included.
        widths: encoder channels per stage (stage ``i`` at stride ``min(2**i, output_stride)``);
            at least five stages for output stride 16.
        output_stride: 8 or 16.
        rates: ASPP dilation rates; default (2, 4, 6) at stride 16, (4, 8, 12) at stride 8.
        aspp_channels: channels of ASPP and decoder.
        low_level_channels: channels the stride-4 skip is reduced to (48 of 256 in the paper).
        blocks: residual blocks per encoder stage.
        norm: ``"instance"`` or ``"batch"``.

    Shapes:
        ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``.

    Example:
        >>> net = DeepLabV3Plus(2, 1, 3, widths=(8, 8, 16, 16, 32), aspp_channels=16)
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
        output_stride: int = 16,
        rates: Sequence[int] | None = None,
        aspp_channels: int = 64,
        low_level_channels: int = 16,
        blocks: int = 1,
        norm: str = "instance",
    ) -> None:
        hparams = {"name": "deeplabv3plus", **{k: v for k, v in locals().items() if k not in ("self", "__class__")}}
        super().__init__()
        self.hparams = hparams  # the constructor arguments, so a Pipeline can save and rebuild it
        spatial_dims = check_spatial_dims(spatial_dims)
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}.")
        self.encoder = ResidualEncoder(
            spatial_dims,
            in_channels,
            widths=widths,
            output_stride=output_stride,
            blocks=blocks,
            norm=norm,
        )
        self.low_index = self.encoder.strides.index(4)
        self.aspp = ASPP(
            spatial_dims,
            self.encoder.widths[-1],
            aspp_channels,
            rates=default_rates(output_stride, rates),
            norm=norm,
        )
        self.decoder = V3PlusDecoder(
            spatial_dims,
            aspp_channels,
            self.encoder.widths[self.low_index],
            out_channels,
            low_channels=low_level_channels,
            norm=norm,
        )
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *spatial)`` for ``x`` ``(B, in_channels, *spatial)``."""
        check_input(x, self.spatial_dims, "DeepLabV3Plus")
        padded, shape = pad_to_multiple(x, self.encoder.total_stride)
        features = self.encoder(padded)
        logits = self.decoder(self.aspp(features[-1]), features[self.low_index])
        return crop_to(upsample_to(logits, padded.shape[2:]), shape)
