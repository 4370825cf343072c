"""The architecture registry: names the CLI and configs use, mapped to builders."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from medseg.architectures.deeplab import DeepLabV3Plus
from medseg.architectures.detection.maskrcnn import MaskRCNN
from medseg.architectures.fastfcn import FastFCN
from medseg.architectures.gated_scnn import GatedSCNN
from medseg.architectures.layers import check_spatial_dims
from medseg.architectures.monai_nets import dynunet, segresnet, swinunetr, unetr
from medseg.architectures.unet import UNet
from medseg.errors import look_up_option

__all__ = ["ARCHITECTURES", "create_architecture", "describe_architectures"]

#: name -> builder ``(spatial_dims, in_channels, out_channels, **kwargs) -> nn.Module``.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "deeplabv3plus": DeepLabV3Plus,
    "fastfcn": FastFCN,
    "gatedscnn": GatedSCNN,
    "dynunet": dynunet,
    "segresnet": segresnet,
    "swinunetr": swinunetr,
    "unetr": unetr,
    "maskrcnn": MaskRCNN,
}

DETECTORS = frozenset({"maskrcnn"})
"""Architectures that find instances (``detect()``, ``training_loss`` on encoded instance labels)
rather than give one score map per class."""

_DESCRIPTIONS = {
    "unet": "nnU-Net-style U-Net; residual, max-pool and deep-supervision options",
    "deeplabv3plus": "DeepLabV3+: atrous residual encoder, ASPP, decoder with a stride-4 skip",
    "fastfcn": "FastFCN: plain-stride encoder, Joint Pyramid Upsampling, ASPP head",
    "gatedscnn": "Gated-SCNN: residual stream + gated shape stream, boundary and dual-task losses",
    "dynunet": "MONAI DynUNet planned nnU-Net-style from patch_size (default 128^3 / 256^2)",
    "segresnet": "MONAI SegResNet (Myronenko 2018), residual encoder-decoder",
    "swinunetr": "MONAI SwinUNETR, Swin transformer encoder (needs einops)",
    "unetr": "MONAI UNETR, ViT encoder; needs img_size (counted at 96 per axis) and einops",
    "maskrcnn": "Mask R-CNN (instances): FPN, RPN, RoIAlign, box and mask heads; out_channels = K",
}

# Arguments a builder requires that describe_architectures supplies for its count.
_DESCRIBE_KWARGS: dict[str, dict[str, object]] = {"unetr": {"img_size": 96}}


def create_architecture(
    name: str | nn.Module,
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    **kwargs: object,
) -> nn.Module:
    """Build a registered network by name (a ready ``nn.Module`` is returned as it is).

    Args:
        name: one of :data:`ARCHITECTURES` (case-insensitive, ``-`` for ``_``), or any module.
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes, background included.
        **kwargs: the architecture's own keyword arguments (``features=``, ``widths=``...).

    Returns:
        A module mapping ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``.

    Example:
        >>> net = create_architecture("unet", spatial_dims=2, in_channels=1, out_channels=3)
    """
    if isinstance(name, nn.Module):
        if kwargs:
            raise TypeError(f"Keyword arguments {sorted(kwargs)} cannot apply to a built module.")
        return name
    key = look_up_option(name, ARCHITECTURES, argument="architecture")
    spatial_dims = check_spatial_dims(spatial_dims)
    try:
        return ARCHITECTURES[key](spatial_dims, in_channels, out_channels, **kwargs)
    except TypeError as error:
        raise TypeError(f"architecture {key!r}: {error}") from error


def describe_architectures(
    spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2
) -> list[tuple[str, int, str]]:
    """``(name, parameter count at default width, one-line description)`` per architecture.

    Networks are built on PyTorch's meta device where they allow it (no memory, no
    initialisation cost). A network
    that cannot be built here (a missing optional package) is listed with a count of 0 and the
    reason appended to its description.
    """
    rows = []
    for name in ARCHITECTURES:
        description = _DESCRIPTIONS[name]
        build = functools.partial(
            create_architecture,
            name,
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            **_DESCRIBE_KWARGS.get(name, {}),
        )
        try:
            try:
                with torch.device("meta"):
                    net = build()
            except RuntimeError:  # a builder that reads tensor values (SwinUNETR) needs real ones
                net = build()
            count = sum(p.numel() for p in net.parameters())
        except ImportError as error:
            count, description = 0, f"{description} [unavailable: {error}]"
        rows.append((name, count, description))
    return rows
