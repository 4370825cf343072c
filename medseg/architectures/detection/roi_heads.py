"""The second stage of Mask R-CNN: box classification and refinement, and masks, per region."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.apps.detection.utils.box_coder import BoxCoder
from torch import nn

from medseg.architectures.detection.detections import (
    Detections,
    batched_nms,
    clip_boxes,
    remove_small_boxes,
)
from medseg.architectures.detection.heads import BoxHead, MaskHead, pool_rois, sample_rois
from medseg.architectures.detection.targets import InstanceTargets
from medseg.instances.boxes import masks_in_boxes
from medseg.losses.iou_balanced import (
    iou_balanced_classification_loss,
    iou_balanced_localisation_loss,
)

__all__ = ["RoIHeads", "paired_iou"]

logger = logging.getLogger(__name__)


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N,)`` IoU of ``a[i]`` with ``b[i]`` (StandardMode boxes ``(N, 2D)``)."""
    d = a.shape[1] // 2
    low, high = torch.maximum(a[:, :d], b[:, :d]), torch.minimum(a[:, d:], b[:, d:])
    inter = (high - low).clamp(min=0).prod(dim=1)
    union = (a[:, d:] - a[:, :d]).prod(dim=1) + (b[:, d:] - b[:, :d]).prod(dim=1) - inter
    return inter / union.clamp(min=1e-6)


class RoIHeads(nn.Module):
    """Box and mask heads with their sampling, losses and post-processing.

    Args:
        spatial_dims: 2 or 3.
        channels: pyramid channels.
        num_classes: ``K``, background included.
        strides: the pyramid's strides.
        roi_size: RoIAlign bins per axis for the box head.
        mask_roi_size: RoIAlign bins per axis for the mask head (masks are twice that).
        width: the box head's hidden width (and the mask head's channels).
        mask_convs: 3x3 convolutions of the mask head.
        batch_per_image, positive_fraction: the sampled regions per image.
        iou_balanced: weight the positives' losses by the IoU of their boxes (Wu et al.).
        eta, lam: the IoU exponents of the classification and localisation losses.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        num_classes: int,
        strides: Sequence[int],
        *,
        roi_size: int,
        mask_roi_size: int,
        width: int,
        mask_convs: int,
        batch_per_image: int = 128,
        positive_fraction: float = 0.25,
        iou_balanced: bool = True,
        eta: float = 1.5,
        lam: float = 1.5,
    ) -> None:
        super().__init__()
        self.spatial_dims, self.num_classes, self.strides = spatial_dims, num_classes, list(strides)
        self.roi_size, self.mask_roi_size = roi_size, mask_roi_size
        self.box_head = BoxHead(spatial_dims, channels, num_classes, roi_size, width)
        self.mask_head = MaskHead(spatial_dims, channels, num_classes, mask_convs, width)
        self.coder = BoxCoder(weights=(10.0,) * spatial_dims + (5.0,) * spatial_dims)
        self.batch_per_image, self.positive_fraction = batch_per_image, positive_fraction
        self.iou_balanced, self.eta, self.lam = iou_balanced, eta, lam

    def loss(
        self,
        features: Sequence[torch.Tensor],
        proposals: Sequence[torch.Tensor],
        targets: Sequence[InstanceTargets],
    ) -> dict[str, torch.Tensor]:
        """``{"box_cls", "box_reg", "mask"}`` losses of the regions sampled from ``proposals``."""
        samples = sample_rois(proposals, targets, self.batch_per_image, self.positive_fraction)
        rois = [s[0] for s in samples]
        labels = torch.cat([s[1] for s in samples])
        pooled = pool_rois(features, self.strides, rois, self.roi_size)
        logits, deltas = self.box_head(pooled)
        positive = torch.nonzero(labels > 0).flatten()
        boxes = torch.cat(rois)[positive]
        gt_boxes = torch.cat([t.boxes[s[2][s[1] > 0]] for s, t in zip(samples, targets)])
        predicted = deltas[positive, labels[positive]].float()
        goal = self.coder.encode_single(gt_boxes, boxes) if positive.numel() else predicted.detach()
        with torch.no_grad():
            regressed = self.coder.decode_single(predicted.detach(), boxes) if positive.numel() else boxes
            ious = torch.ones(labels.shape, device=labels.device)
            ious[positive] = paired_iou(regressed, gt_boxes)  # the regressed boxes' IoU, as the authors
        eta = self.eta if self.iou_balanced else 0.0
        lam = self.lam if self.iou_balanced else 0.0
        cls = iou_balanced_classification_loss(logits.float(), labels, ious, eta=eta)
        reg = iou_balanced_localisation_loss(predicted, goal, ious[positive], lam=lam, beta=1 / 9)
        reg = reg * positive.numel() / max(labels.numel(), 1)  # per sampled region, as Faster R-CNN
        mask = self._mask_loss(features, samples, targets)
        return {"box_cls": cls, "box_reg": reg, "mask": mask}

    def _mask_loss(
        self,
        features: Sequence[torch.Tensor],
        samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        targets: Sequence[InstanceTargets],
    ) -> torch.Tensor:
        """BCE of the gt class's mask logits against the gt mask resampled into each positive."""
        rois = [s[0][s[1] > 0] for s in samples]
        pooled = pool_rois(features, self.strides, rois, self.mask_roi_size)
        logits = self.mask_head(pooled)
        labels = torch.cat([s[1][s[1] > 0] for s in samples])
        if labels.numel() == 0:
            return logits.sum() * 0.0
        logits = logits[torch.arange(labels.numel(), device=labels.device), labels]
        goals = [
            masks_in_boxes(target.encoded, boxes[label > 0], logits.shape[1:], ids=target.values[gt[label > 0]])
            for (boxes, label, gt), target in zip(samples, targets)
            if bool((label > 0).any())
        ]
        return F.binary_cross_entropy_with_logits(logits.float(), (torch.cat(goals) >= 0.5).float())

    @torch.no_grad()
    def detect(
        self,
        features: Sequence[torch.Tensor],
        proposals: Sequence[torch.Tensor],
        shape: Sequence[int],
        *,
        score_threshold: float,
        nms_threshold: float,
        max_detections: int,
    ) -> list[Detections]:
        """Per image: class scores, class-wise boxes, score threshold, class-wise NMS, top-k, masks."""
        pooled = pool_rois(features, self.strides, proposals, self.roi_size)
        logits, deltas = self.box_head(pooled)
        probabilities = torch.softmax(logits.float(), dim=1)
        results = []
        start = 0
        for b, boxes in enumerate(proposals):
            stop = start + boxes.shape[0]
            found = self._select(
                boxes, probabilities[start:stop], deltas[start:stop].float(), shape,
                score_threshold, nms_threshold, max_detections,
            )
            start = stop
            results.append(self._masks(features, b, *found))
        return results

    def _select(
        self,
        boxes: torch.Tensor,
        probabilities: torch.Tensor,
        deltas: torch.Tensor,
        shape: Sequence[int],
        score_threshold: float,
        nms_threshold: float,
        max_detections: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The kept ``(boxes, labels, scores)`` of one image."""
        k, d2 = self.num_classes, 2 * self.spatial_dims
        count = boxes.shape[0]
        decoded = self.coder.decode_single(deltas.reshape(count, k * d2), boxes).view(count, k, d2)
        decoded = clip_boxes(decoded[:, 1:].reshape(-1, d2), shape)
        scores = probabilities[:, 1:].reshape(-1)
        labels = torch.arange(1, k, device=boxes.device).repeat(count)
        keep = torch.nonzero(scores > score_threshold).flatten()
        decoded, scores, labels = decoded[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(decoded, 0.5)
        decoded, scores, labels = decoded[keep], scores[keep], labels[keep]
        keep = batched_nms(decoded, scores, labels, nms_threshold, max_detections)
        return decoded[keep], labels[keep], scores[keep]

    def _masks(
        self, features: Sequence[torch.Tensor], b: int, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor
    ) -> Detections:
        """The detections of image ``b`` with the mask probabilities of their classes."""
        image_features = [f[b : b + 1] for f in features]
        logits = self.mask_head(pool_rois(image_features, self.strides, [boxes], self.mask_roi_size))
        masks = torch.sigmoid(logits[torch.arange(labels.numel(), device=labels.device), labels].float())
        return Detections(boxes, labels, scores, masks)
