"""Mask R-CNN's per-region parts: multi-level RoIAlign, the box and mask heads, RoI sampling."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data.box_utils import box_iou
from torch import nn

from medseg.architectures.detection.roi_align import roi_align
from medseg.architectures.detection.rpn import box_centres_ignored
from medseg.architectures.detection.targets import InstanceTargets
from medseg.architectures.layers import conv_type, transposed_conv_type

__all__ = ["BoxHead", "MaskHead", "level_of", "pool_rois", "sample_rois"]

#: a box goes to the finest level where it spans fewer than this many feature cells (per side,
#: geometric mean), else to the coarsest (FPN paper's level assignment, in cells not pixels)
LEVEL_CELLS = 16


def level_of(boxes: torch.Tensor, strides: Sequence[int]) -> torch.Tensor:
    """``(R,)`` the pyramid level each box is pooled from, by its size."""
    d = boxes.shape[1] // 2
    sides = (boxes[:, d:] - boxes[:, :d]).clamp(min=1e-3)
    size = sides.log().mean(dim=1).exp()  # geometric mean side
    level = torch.floor(torch.log2(size / (LEVEL_CELLS * strides[0]))) + 1
    return level.clamp(0, len(strides) - 1).long()


def pool_rois(
    features: Sequence[torch.Tensor],
    strides: Sequence[int],
    boxes: Sequence[torch.Tensor],
    output_size: int,
) -> torch.Tensor:
    """RoIAlign of every box of every image on its level: ``(R, C, *output_size)``, boxes in order.

    Args:
        features: per level ``(B, C, *S_l)``.
        strides: per level.
        boxes: per image ``(R_b, 2D)`` boxes in input voxels.
        output_size: bins per axis.
    """
    rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]).float()
    d = rois.shape[1] // 2
    # float32 whatever autocast does: grid_sample runs in float32 under it
    out = features[0].new_zeros((rois.shape[0], features[0].shape[1], *([output_size] * d)), dtype=torch.float32)
    if rois.shape[0] == 0:
        return out + sum(f.sum() for f in features) * 0.0  # keeps the graph for empty batches
    levels = level_of(rois[:, 1:], strides)
    for level, (feature, stride) in enumerate(zip(features, strides)):
        chosen = torch.nonzero(levels == level).flatten()
        if chosen.numel():
            pooled = roi_align(feature.float(), rois[chosen], output_size, 1.0 / stride, sampling_ratio=2)
            out = out.index_copy(0, chosen, pooled)
    return out


class BoxHead(nn.Module):
    """Two fully connected layers on the pooled region, then class logits and per-class deltas.

    Shapes: ``(R, C, *roi)`` to logits ``(R, K)`` and deltas ``(R, K, 2D)``.
    """

    def __init__(self, spatial_dims: int, channels: int, num_classes: int, roi_size: int, width: int) -> None:
        super().__init__()
        self.spatial_dims, self.num_classes = spatial_dims, num_classes
        self.fc1 = nn.Linear(channels * roi_size**spatial_dims, width)
        self.fc2 = nn.Linear(width, width)
        self.cls = nn.Linear(width, num_classes)
        self.reg = nn.Linear(width, num_classes * 2 * spatial_dims)
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.reg.weight, std=0.001)
        for layer in (self.cls, self.reg):
            nn.init.zeros_(layer.bias)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.leaky_relu(self.fc2(F.leaky_relu(self.fc1(pooled.flatten(1)), 0.01)), 0.01)  # no dead head
        return self.cls(x), self.reg(x).view(-1, self.num_classes, 2 * self.spatial_dims)


class MaskHead(nn.Module):
    """3x3 convolutions, a 2x transposed convolution, and one mask logit map per class.

    Shapes: ``(R, C, *m)`` to ``(R, K, *2m)``.
    """

    def __init__(self, spatial_dims: int, channels: int, num_classes: int, convs: int, width: int) -> None:
        super().__init__()
        conv = conv_type(spatial_dims)
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [conv(channels if i == 0 else width, width, 3, padding=1), nn.LeakyReLU(0.01, inplace=True)]
        source = width if convs else channels
        layers += [transposed_conv_type(spatial_dims)(source, width, 2, stride=2), nn.LeakyReLU(0.01, inplace=True)]
        self.body = nn.Sequential(*layers)
        self.logits = conv(width, num_classes, 1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.logits(self.body(pooled))


def sample_rois(
    proposals: Sequence[torch.Tensor],
    targets: Sequence[InstanceTargets],
    batch_per_image: int,
    positive_fraction: float,
    fg_iou: float = 0.5,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image, the sampled regions ``(rois, labels, matched gt index)``.

    The gt boxes join the proposals; a region is foreground (its gt's class) at IoU >= ``fg_iou``
    with a gt box, else background (label 0, gt index -1); background regions centred on
    ignored voxels are left out. At most ``positive_fraction`` of ``batch_per_image`` are
    foreground, chosen at random, and background fills the rest.
    """
    samples = []
    for boxes, target in zip(proposals, targets):
        boxes = torch.cat([boxes, target.boxes.to(boxes)])
        if target.boxes.shape[0]:
            iou = box_iou(target.boxes, boxes).to(boxes.device)
            best, matched = iou.max(dim=0)
        else:
            best = torch.zeros(boxes.shape[0], device=boxes.device)
            matched = torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device)
        foreground = best >= fg_iou
        background = ~foreground & ~box_centres_ignored(boxes, target.ignore)
        positive = torch.nonzero(foreground).flatten()
        negative = torch.nonzero(background).flatten()
        count = min(positive.numel(), math.ceil(batch_per_image * positive_fraction))
        positive = positive[torch.randperm(positive.numel(), device=boxes.device)[:count]]
        negative = negative[torch.randperm(negative.numel(), device=boxes.device)[: batch_per_image - count]]
        chosen = torch.cat([positive, negative])
        labels = torch.zeros(chosen.numel(), dtype=torch.long, device=boxes.device)
        gt = torch.full_like(labels, -1)
        if count:
            gt[:count] = matched[positive]
            labels[:count] = target.labels[gt[:count]]
        samples.append((boxes[chosen], labels, gt))
    return samples
