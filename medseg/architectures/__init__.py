"""Segmentation networks for 2D and 3D images.

Every network takes ``spatial_dims`` (2 or 3), ``in_channels`` and ``out_channels`` and maps
``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)`` for any input size.
"""

from medseg.architectures.unet import UNet, deep_supervision_weights, downsample_labels

__all__ = ["UNet", "deep_supervision_weights", "downsample_labels"]
