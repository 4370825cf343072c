"""MONAI's networks by name, wrapped so that they take inputs of any size.

Each builder takes ``spatial_dims``, ``in_channels``, ``out_channels`` and the network's own
keyword arguments (MONAI's defaults unless said otherwise) and returns a :class:`PadCrop` around
the MONAI module, which pads the input to what the network accepts and crops the logits back.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks import nets
from torch import nn

from medseg.architectures.layers import check_spatial_dims, crop_to, pad_to_multiple

__all__ = ["PadCrop", "dynunet", "dynunet_plan", "segresnet", "swinunetr", "unetr"]


class PadCrop(nn.Module):
    """Run ``net`` on the input zero-padded to a multiple of ``multiple`` (or to exactly
    ``size``), then crop its output back to the input's spatial shape.

    Shapes:
        ``(B, C, *spatial)`` to ``(B, out_channels, *spatial)``.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        multiple: Sequence[int] | None = None,
        size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if (multiple is None) == (size is None):
            raise ValueError("PadCrop takes exactly one of `multiple` and `size`.")
        self.net = net
        self.multiple = None if multiple is None else tuple(multiple)
        self.size = None if size is None else tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[2:])
        if self.multiple is not None:
            return crop_to(self.net(pad_to_multiple(x, self.multiple)[0]), shape)
        if any(s > t for s, t in zip(shape, self.size, strict=True)):
            raise ValueError(
                f"Input spatial shape {shape} exceeds the network's img_size {self.size}; "
                "use sliding-window inference or build it with a larger img_size."
            )
        pad: list[int] = []
        for s, t in zip(reversed(shape), reversed(self.size), strict=True):
            pad += [0, t - s]
        return crop_to(self.net(F.pad(x, pad)), shape)


def _require_einops(name: str) -> None:
    if importlib.util.find_spec("einops") is None:
        raise ImportError(
            f"{name} needs the optional package einops (MONAI's transformer blocks use it): "
            "pip install einops"
        )


def dynunet_plan(
    patch_size: Sequence[int], spacing: Sequence[float] | None = None, max_levels: int = 6
) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net-style kernels and strides for a patch size (and voxel spacing).

    An axis is halved while its size is at least 8 and its spacing at most twice the finest;
    a level's kernel is 1 along axes still over twice as coarse as the finest, else 3.

    Returns:
        ``(kernels, strides)``, one per level; the first stride is all ones.
    """
    sizes = [float(s) for s in patch_size]
    spacing = [1.0] * len(sizes) if spacing is None else [float(s) for s in spacing]
    if len(spacing) != len(sizes):
        raise ValueError(f"spacing {tuple(spacing)} must match patch_size {tuple(patch_size)}.")

    def kernel() -> list[int]:
        return [3 if sp <= 2 * min(spacing) else 1 for sp in spacing]

    kernels, strides = [kernel()], [[1] * len(sizes)]
    while len(strides) < max_levels:
        stride = [
            2 if sp <= 2 * min(spacing) and n >= 8 else 1
            for sp, n in zip(spacing, sizes, strict=True)
        ]
        if all(s == 1 for s in stride):
            break
        sizes = [n / s for n, s in zip(sizes, stride, strict=True)]
        spacing = [sp * s for sp, s in zip(spacing, stride, strict=True)]
        strides.append(stride)
        kernels.append(kernel())
    return kernels, strides


def dynunet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    filters: Sequence[int] | None = None,
    pool_kernels: Sequence[Sequence[int]] | None = None,
    conv_kernels: Sequence[Sequence[int]] | None = None,
    **kwargs,
) -> PadCrop:
    """MONAI's DynUNet (nnU-Net's network) planned from the patch size, nnU-Net style.

    Args:
        patch_size: the training patch size; default 128 per axis in 3D, 256 in 2D.
        spacing: voxel spacing, for anisotropic kernels/strides; default isotropic.
        filters: channels per level; default nnU-Net's ``32 * 2**i`` capped at 320 (3D) / 512.
        pool_kernels: per-axis strides of each level after the first, and ``conv_kernels``
            per-axis kernels of every level (one more): a :class:`~medseg.planning.Plan`'s
            topology, used instead of planning from ``patch_size`` (give both or neither).
        **kwargs: other ``monai.networks.nets.DynUNet`` arguments (not deep supervision: use
            :class:`~medseg.architectures.UNet` ``(deep_supervision=True)``).
    """
    spatial_dims = check_spatial_dims(spatial_dims)
    if kwargs.get("deep_supervision"):
        raise ValueError("dynunet: deep_supervision is not supported here; use 'unet' instead.")
    if patch_size is None:
        patch_size = (128,) * 3 if spatial_dims == 3 else (256,) * 2
    if len(patch_size) != spatial_dims:
        raise ValueError(f"patch_size {tuple(patch_size)} must have {spatial_dims} entries.")
    if (pool_kernels is None) != (conv_kernels is None):
        raise ValueError("dynunet: give pool_kernels and conv_kernels together (a plan's), or neither.")
    if pool_kernels is not None:
        strides = [[1] * spatial_dims, *([int(k) for k in s] for s in pool_kernels)]
        kernels = [[int(k) for k in s] for s in conv_kernels]
        if len(kernels) != len(strides) or any(len(k) != spatial_dims for k in (*kernels, *strides)):
            raise ValueError(f"dynunet: conv_kernels needs one entry more than pool_kernels, each of "
                             f"{spatial_dims} sizes; got {conv_kernels!r} and {pool_kernels!r}.")
    else:
        kernels, strides = dynunet_plan(patch_size, spacing)
    cap = 320 if spatial_dims == 3 else 512
    if filters is None:
        filters = [min(32 * 2**i, cap) for i in range(len(strides))]
    net = nets.DynUNet(
        spatial_dims,
        in_channels,
        out_channels,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(filters),
        **kwargs,
    )
    multiple = [math.prod(s[axis] for s in strides) for axis in range(spatial_dims)]
    return PadCrop(net, multiple=multiple)


def segresnet(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> PadCrop:
    """MONAI's SegResNet (Myronenko 2018); ``**kwargs`` as ``monai.networks.nets.SegResNet``."""
    spatial_dims = check_spatial_dims(spatial_dims)
    net = nets.SegResNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs
    )
    levels = len(kwargs.get("blocks_down", (1, 2, 2, 4)))
    return PadCrop(net, multiple=[2 ** (levels - 1)] * spatial_dims)


def swinunetr(
    spatial_dims: int, in_channels: int, out_channels: int, *, patch_size: int = 2, **kwargs
) -> PadCrop:
    """MONAI's SwinUNETR (Hatamizadeh et al. 2022); inputs are padded to a multiple of
    ``patch_size * 2**len(depths)`` (32 by default). ``**kwargs`` as
    ``monai.networks.nets.SwinUNETR`` (MONAI 1.6 no longer takes ``img_size``)."""
    spatial_dims = check_spatial_dims(spatial_dims)
    _require_einops("swinunetr")
    net = nets.SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        patch_size=patch_size,
        spatial_dims=spatial_dims,
        **kwargs,
    )
    stride = patch_size * 2 ** len(kwargs.get("depths", (2, 2, 2, 2)))
    return PadCrop(net, multiple=[stride] * spatial_dims)


def unetr(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    img_size: Sequence[int] | int | None = None,
    **kwargs,
) -> PadCrop:
    """MONAI's UNETR (Hatamizadeh et al. 2022) for inputs up to ``img_size``.

    Args:
        img_size: the (largest) input size, required, a multiple of 16 per axis (the ViT's
            patch size); smaller inputs are padded to it.
        **kwargs: other ``monai.networks.nets.UNETR`` arguments.
    """
    spatial_dims = check_spatial_dims(spatial_dims)
    if img_size is None:
        raise ValueError(
            "unetr needs img_size, the training patch size (a multiple of 16 per axis), e.g. "
            "create_architecture('unetr', ..., img_size=(96, 96, 96))."
        )
    size = (img_size,) * spatial_dims if isinstance(img_size, int) else tuple(img_size)
    if len(size) != spatial_dims or any(s % 16 for s in size):
        raise ValueError(
            f"img_size must have {spatial_dims} entries, each a multiple of 16, got {img_size!r}."
        )
    _require_einops("unetr")
    net = nets.UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=size,
        spatial_dims=spatial_dims,
        **kwargs,
    )
    return PadCrop(net, size=size)
