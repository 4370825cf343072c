"""Segmentation networks for 2D and 3D images.

Every network takes ``spatial_dims`` (2 or 3), ``in_channels`` and ``out_channels`` and maps
``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)`` for any input size
(padding inside and cropping back). A network may define
``training_loss(outputs, target, loss_fn, **extras)``, which the trainer calls instead of
``loss_fn(outputs, target, **extras)``; inference takes ``out[0]`` of a tuple.
"""

from medseg.architectures.aspp import ASPP
from medseg.architectures.deeplab import DeepLabV3Plus
from medseg.architectures.detection.maskrcnn import MaskRCNN
from medseg.architectures.encoder import ResidualEncoder
from medseg.architectures.fastfcn import JPU, FastFCN
from medseg.architectures.gated_scnn import GatedConv, GatedSCNN
from medseg.architectures.monai_nets import PadCrop, dynunet_plan
from medseg.architectures.registry import (
    ARCHITECTURES,
    DETECTORS,
    create_architecture,
    describe_architectures,
)
from medseg.architectures.unet import UNet, deep_supervision_weights, downsample_labels

__all__ = [
    "ARCHITECTURES",
    "ASPP",
    "DETECTORS",
    "DeepLabV3Plus",
    "FastFCN",
    "GatedConv",
    "GatedSCNN",
    "JPU",
    "MaskRCNN",
    "PadCrop",
    "ResidualEncoder",
    "UNet",
    "create_architecture",
    "deep_supervision_weights",
    "describe_architectures",
    "downsample_labels",
    "dynunet_plan",
]
