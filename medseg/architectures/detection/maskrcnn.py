"""Mask R-CNN (He et al. 2017) in 2D and 3D, from torch and MONAI's detection utilities.

A residual encoder with a feature pyramid, a region proposal network, RoIAlign on the pyramid
level that suits each region's size, a box head (class + class-specific deltas, IoU-balanced
losses by default) and a mask head (per-class mask logits). Trained on the ENCODED instance label
(:mod:`medseg.instances.encoding`) of a patch batch; :meth:`MaskRCNN.detect` returns
:class:`Detections` per image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from medseg.architectures.detection.detections import Detections, clip_boxes
from medseg.architectures.detection.fpn import FeaturePyramid
from medseg.architectures.detection.roi_heads import RoIHeads
from medseg.architectures.detection.rpn import RegionProposalNetwork
from medseg.architectures.detection.targets import instance_targets
from medseg.architectures.layers import (
    check_input,
    check_positive_ints,
    check_spatial_dims,
    pad_to_multiple,
)

__all__ = ["MaskRCNN"]

logger = logging.getLogger(__name__)


class MaskRCNN(nn.Module):
    """Mask R-CNN for 2D and 3D images.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: ``K``, background included (the Pipeline's ``out_channels``).
        widths: encoder widths per stage (stage ``i`` at stride ``2**i``).
        fpn_levels: the encoder stages the pyramid reads, finest first; default the last three.
        fpn_channels: channels of every pyramid level.
        anchor_shapes: anchor sides in units of each level's stride; default one cube of 4.
        rpn_matcher: ``"atss"`` or ``"iou"``.
        rpn_batch: anchors sampled per image for the RPN losses.
        rpn_pre_nms: proposals per level before NMS.
        rpn_post_nms: proposals per image after NMS, ``(training, inference)``.
        roi_batch: regions sampled per image for the box and mask losses (25% positive at most).
        roi_size: RoIAlign bins per axis for the box head; default 7 (2D) or 5 (3D).
        mask_roi_size: RoIAlign bins per axis for the mask head (masks are twice as large);
            default 14 (2D) or 8 (3D).
        head_width: hidden width of the box head and channels of the mask head.
        mask_convs: 3x3 convolutions of the mask head.
        iou_balanced: IoU-balanced classification and localisation losses in the box head.
        eta, lam: their IoU exponents.
        score_threshold, nms_threshold, max_detections: :meth:`detect`'s defaults.
        norm: the encoder's normalisation, ``"instance"`` or ``"batch"``.

    Shapes:
        ``forward``: ``(B, in_channels, *spatial)`` to the raw outputs (a dict) that
        :meth:`training_loss` takes; :meth:`detect`: ``(B, in_channels, *spatial)`` to ``B``
        :class:`Detections`.

    Example:
        >>> net = MaskRCNN(2, 1, 2, widths=(8, 16, 32), fpn_channels=16)
        >>> len(net.detect(torch.zeros(1, 1, 32, 32)))
        1
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        fpn_levels: Sequence[int] | None = None,
        fpn_channels: int = 64,
        anchor_shapes: Sequence[Sequence[float]] | None = None,
        rpn_matcher: str = "atss",
        rpn_batch: int = 256,
        rpn_pre_nms: int = 1000,
        rpn_post_nms: Sequence[int] = (512, 1000),
        roi_batch: int = 128,
        roi_size: int | None = None,
        mask_roi_size: int | None = None,
        head_width: int = 128,
        mask_convs: int = 2,
        iou_balanced: bool = True,
        eta: float = 1.5,
        lam: float = 1.5,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        max_detections: int = 1000,
        norm: str = "instance",
    ) -> None:
        arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        arguments["out_channels"] = arguments.pop("num_classes")  # create_architecture's keyword
        self.hparams = {"name": "maskrcnn", **{k: list(v) if isinstance(v, tuple) else v for k, v in arguments.items()}}
        self.spatial_dims = d = check_spatial_dims(spatial_dims)
        check_positive_ints((in_channels,), argument="in_channels")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes (out_channels) must be an int >= 2: background and a class, got {num_classes!r}.")
        self.num_classes = num_classes
        widths = check_positive_ints(widths, argument="widths")
        levels = tuple(fpn_levels) if fpn_levels is not None else tuple(range(max(len(widths) - 3, 0), len(widths)))
        self.fpn = FeaturePyramid(d, in_channels, widths=widths, levels=levels, channels=fpn_channels, norm=norm)
        shapes = anchor_shapes if anchor_shapes is not None else [(4.0,) * d]
        self.rpn = RegionProposalNetwork(
            d, fpn_channels, self.fpn.strides, anchor_shapes=shapes, matcher=rpn_matcher,
            batch_per_image=rpn_batch, pre_nms=rpn_pre_nms, post_nms=tuple(rpn_post_nms),
        )
        self.roi_heads = RoIHeads(
            d, fpn_channels, num_classes, self.fpn.strides,
            roi_size=roi_size or (7 if d == 2 else 5), mask_roi_size=mask_roi_size or (14 if d == 2 else 8),
            width=head_width, mask_convs=mask_convs, batch_per_image=roi_batch,
            iou_balanced=iou_balanced, eta=eta, lam=lam,
        )
        self.thresholds = (score_threshold, nms_threshold, max_detections)

    @property
    def total_stride(self) -> int:
        """Inputs are padded (at their far end) to a multiple of this."""
        return self.fpn.total_stride

    def forward(self, image: torch.Tensor) -> dict[str, Any]:
        """The pyramid and the RPN's raw outputs: ``{"features", "objectness", "deltas"}``."""
        check_input(image, self.spatial_dims, "MaskRCNN")
        padded, _ = pad_to_multiple(image, self.total_stride)
        features = self.fpn(padded)
        objectness, deltas = self.rpn(features)
        return {"features": features, "objectness": objectness, "deltas": deltas}

    def training_loss(
        self,
        outputs: dict[str, Any],
        target: torch.Tensor,
        loss: Callable[..., torch.Tensor] | None = None,
        **extras: torch.Tensor,
    ) -> torch.Tensor:
        """The summed RPN, box and mask losses of a batch.

        Args:
            outputs: :meth:`forward`'s outputs.
            target: ``(B, *spatial)`` (or ``(B, 1, *spatial)``) ENCODED instance labels.
            loss: the Pipeline's segmentation loss; not used.
            **extras: ignored.
        """
        return sum(self.loss_terms(outputs, target).values())

    def loss_terms(self, outputs: dict[str, Any], target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms: ``rpn_cls``, ``rpn_reg``, ``box_cls``, ``box_reg``, ``mask``."""
        if target.ndim == self.spatial_dims + 2:
            target = target[:, 0]
        features = outputs["features"]
        padded, _ = pad_to_multiple(target[:, None].float(), self.total_stride)
        shape = padded.shape[2:]
        targets = instance_targets(padded[:, 0].long(), self.num_classes)
        anchors = self.rpn.anchors_for(shape, features)
        rpn_cls, rpn_reg = self.rpn.loss(outputs["objectness"], outputs["deltas"], anchors, targets)
        proposals = self.rpn.proposals(outputs["objectness"], outputs["deltas"], anchors, shape)
        terms = {"rpn_cls": rpn_cls, "rpn_reg": rpn_reg, **self.roi_heads.loss(features, proposals, targets)}
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Mask R-CNN losses: %s", {k: round(float(v.detach()), 4) for k, v in terms.items()})
        return terms

    @torch.no_grad()
    def detect(
        self,
        image: torch.Tensor,
        *,
        score_threshold: float | None = None,
        nms_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> list[Detections]:
        """Detections per image, in eval mode (the training mode is restored).

        Args:
            image: ``(B, in_channels, *spatial)``.
            score_threshold: keep detections scoring above it (default: the constructor's).
            nms_threshold: the class-wise NMS IoU (default: the constructor's).
            max_detections: at most this many per image (default: the constructor's).
        """
        defaults = self.thresholds
        was_training = self.training
        self.eval()
        try:
            shape = image.shape[2:]
            outputs = self(image)
            features = outputs["features"]
            anchors = self.rpn.anchors_for([f * self.total_stride for f in features[-1].shape[2:]], features)
            proposals = self.rpn.proposals(outputs["objectness"], outputs["deltas"], anchors, shape)
            proposals = [clip_boxes(p, shape) for p in proposals]
            return self.roi_heads.detect(
                features, proposals, shape,
                score_threshold=defaults[0] if score_threshold is None else score_threshold,
                nms_threshold=defaults[1] if nms_threshold is None else nms_threshold,
                max_detections=defaults[2] if max_detections is None else max_detections,
            )
        finally:
            self.train(was_training)
