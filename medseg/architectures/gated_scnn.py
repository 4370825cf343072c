"""Gated-SCNN (Takikawa et al. 2019): a regular stream, a gated shape stream, fused by ASPP."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from medseg.architectures.aspp import ASPP
from medseg.architectures.boundary import (
    balanced_bce,
    dual_task_loss,
    gradient_magnitude,
    label_edges,
    squeeze_target,
)
from medseg.architectures.deeplab import V3PlusDecoder, default_rates
from medseg.architectures.encoder import ResidualEncoder
from medseg.architectures.layers import (
    ResidualBlock,
    check_input,
    check_positive_ints,
    check_spatial_dims,
    conv_type,
    crop_to,
    norm_layer,
    pad_to_multiple,
    upsample_to,
)

__all__ = ["GatedConv", "GatedSCNN"]


class GatedConv(nn.Module):
    """Gated convolution of the shape stream: regular-stream cues gate the shape features.

    ``alpha = sigmoid(norm(conv(act(conv(norm([x, g]))))))`` (1x1 convs) and the output is a
    1x1 conv of ``x * (1 + alpha)``.

    Shapes:
        ``x (B, in_channels, *s)``, ``gate (B, 1, *s)`` to ``(B, out_channels, *s)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        conv, c = conv_type(spatial_dims), in_channels + 1
        self.attention = nn.Sequential(
            norm_layer(norm, spatial_dims, c),
            conv(c, c, 1),
            nn.LeakyReLU(0.01, inplace=True),
            conv(c, 1, 1),
            norm_layer(norm, spatial_dims, 1),
            nn.Sigmoid(),
        )
        self.conv = conv(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        alpha = self.attention(torch.cat([x, gate], dim=1))
        return self.conv(x * (1.0 + alpha))


class GatedSCNN(nn.Module):
    """Gated-SCNN for 2D and 3D.

    The regular stream is a residual encoder at output stride 8. The shape stream starts from
    its stride-2 map at full resolution and runs residual blocks and three gated convolutions,
    gated by 1x1 projections of the stride-4, stride-8 and last encoder maps, ending in one
    boundary-logit channel. The boundary map, fused with the input's gradient magnitude, joins
    ASPP as an extra branch; the V3+ decoder gives the segmentation. In training mode
    ``forward`` returns ``(logits, boundary_logits)``; in eval mode the logits alone.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes, background included.
        widths: regular-stream channels per stage (at least four stages).
        output_stride: 8 (the paper's) or 16.
        rates: ASPP rates; default as :class:`DeepLabV3Plus`.
        aspp_channels: channels of ASPP and decoder.
        low_level_channels: channels of the decoder's stride-4 skip.
        shape_channels: channels of the three gated layers of the shape stream.
        blocks: residual blocks per encoder stage.
        norm: ``"instance"`` or ``"batch"``.
        boundary_weight: weight of the balanced boundary BCE (20, as the authors' code).
        consistency_weight: weight of the dual-task consistency term.
        tau: Gumbel-softmax temperature of the consistency term.

    Shapes:
        ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)`` and, in
        training, boundary logits ``(B, 1, *spatial)``.

    Example:
        >>> net = GatedSCNN(2, 1, 3, widths=(8, 8, 16, 16), aspp_channels=16).eval()
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
        output_stride: int = 8,
        rates: Sequence[int] | None = None,
        aspp_channels: int = 64,
        low_level_channels: int = 16,
        shape_channels: Sequence[int] = (16, 8, 4),
        blocks: int = 1,
        norm: str = "instance",
        boundary_weight: float = 20.0,
        consistency_weight: float = 1.0,
        tau: float = 0.5,
    ) -> None:
        hparams = {"name": "gatedscnn", **{k: v for k, v in locals().items() if k not in ("self", "__class__")}}
        super().__init__()
        self.hparams = hparams  # the constructor arguments, so a Pipeline can save and rebuild it
        spatial_dims = check_spatial_dims(spatial_dims)
        shape_channels = check_positive_ints(shape_channels, argument="shape_channels")
        if len(shape_channels) != 3 or len(widths) < 4 or output_stride not in (8, 16):
            raise ValueError(
                "GatedSCNN needs 3 shape_channels, at least 4 widths and output_stride 8 or 16; "
                f"got shape_channels={shape_channels}, widths={tuple(widths)}, "
                f"output_stride={output_stride!r}."
            )
        self.spatial_dims = spatial_dims
        self.weights = (float(boundary_weight), float(consistency_weight), float(tau))
        self.encoder = ResidualEncoder(
            spatial_dims,
            in_channels,
            widths=widths,
            output_stride=output_stride,
            blocks=blocks,
            norm=norm,
        )
        w = self.encoder.widths
        self.low_index = self.encoder.strides.index(4)
        gate_stages = (self.low_index, self.low_index + 1, len(w) - 1)
        conv = conv_type(spatial_dims)
        self.gate_sources = nn.ModuleList([conv(w[i], 1, 1) for i in gate_stages])
        self.gate_stages = gate_stages
        c = shape_channels
        self.shape_in = conv(w[1], c[0], 1)
        self.shape_blocks = nn.ModuleList(
            [ResidualBlock(spatial_dims, ch, ch, norm=norm) for ch in c]
        )
        self.gates = nn.ModuleList(
            [GatedConv(spatial_dims, c[k], c[min(k + 1, 2)], norm) for k in range(3)]
        )
        self.boundary_head = conv(c[2], 1, 1)
        self.fuse_gradient = nn.Sequential(conv(2, 1, 1), nn.Sigmoid())
        self.aspp = ASPP(
            spatial_dims,
            w[-1],
            aspp_channels,
            rates=default_rates(output_stride, rates),
            norm=norm,
            extra_channels=1,
        )
        self.decoder = V3PlusDecoder(
            spatial_dims,
            aspp_channels,
            w[self.low_index],
            out_channels,
            low_channels=low_level_channels,
            norm=norm,
        )

    def _shape_stream(self, features: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        """Boundary logits ``(B, 1, *size)`` from the regular stream's maps."""
        x = self.shape_in(upsample_to(features[1], size))
        for block, gate, source, stage in zip(
            self.shape_blocks, self.gates, self.gate_sources, self.gate_stages, strict=True
        ):
            x = gate(block(x), upsample_to(source(features[stage]), size))
        return self.boundary_head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits, or ``(logits, boundary_logits)`` in training mode."""
        check_input(x, self.spatial_dims, "GatedSCNN")
        padded, shape = pad_to_multiple(x, self.encoder.total_stride)
        size = padded.shape[2:]
        features = self.encoder(padded)
        boundary = self._shape_stream(features, size)
        image_gradient = gradient_magnitude(padded.mean(dim=1, keepdim=True))
        edge_cue = self.fuse_gradient(torch.cat([torch.sigmoid(boundary), image_gradient], 1))
        high = self.aspp(features[-1], edge_cue)
        logits = crop_to(upsample_to(self.decoder(high, features[self.low_index]), size), shape)
        if self.training:
            return logits, crop_to(boundary, shape)
        return logits

    def training_loss(
        self,
        outputs: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        loss_fn: Callable[..., torch.Tensor],
        **extras: torch.Tensor,
    ) -> torch.Tensor:
        """Segmentation loss + weighted boundary BCE + weighted dual-task consistency.

        ``loss_fn(logits, target, **extras)`` + ``boundary_weight`` * class-balanced BCE of the
        boundary logits against the target's edges (:func:`label_edges`, radius 1) +
        ``consistency_weight`` * :func:`dual_task_loss` of the logits.

        Args:
            outputs: ``(logits, boundary_logits)`` from training mode (a lone tensor gets the
                segmentation loss only).
            target: integer labels ``(B, *spatial)`` or ``(B, 1, *spatial)``.
            loss_fn: a medseg loss ``(logits, target, **extras) -> scalar``.
        """
        if isinstance(outputs, torch.Tensor):
            return loss_fn(outputs, target, **extras)
        logits, boundary = outputs
        boundary_weight, consistency_weight, tau = self.weights
        labels = squeeze_target(target, self.spatial_dims)
        loss = loss_fn(logits, target, **extras)
        loss = loss + boundary_weight * balanced_bce(boundary, label_edges(labels))
        # float32, autocast or not: float16 rounds the Gumbel noise's clamp to 0 and 1 and the
        # gradient magnitude's epsilon to 0, and the term (or its gradient) turns NaN
        with torch.autocast(logits.device.type, enabled=False):
            consistency = dual_task_loss(logits.float(), labels, tau=tau)
        return loss + consistency_weight * consistency
