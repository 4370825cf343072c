"""The region proposal network: objectness and box deltas per anchor on every pyramid level.

Anchors come from MONAI's :class:`AnchorGeneratorWithAnchorShape` (``ij`` indexing: boxes in
array-index order), box deltas from MONAI's :class:`BoxCoder`, anchor matching from MONAI's
:class:`ATSSMatcher` (or an IoU matcher), and the sampled anchors from MONAI's
:class:`HardNegativeSampler`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
from monai.apps.detection.utils.box_coder import BoxCoder
from monai.apps.detection.utils.hard_negative_sampler import HardNegativeSampler
from monai.data.box_utils import box_iou
from torch import nn

from medseg.architectures.detection.detections import batched_nms, clip_boxes, remove_small_boxes
from medseg.architectures.detection.targets import InstanceTargets
from medseg.architectures.layers import conv_type
from medseg.errors import look_up_option

__all__ = ["RegionProposalNetwork", "box_centres_ignored", "iou_matches"]

logging.getLogger("monai").setLevel(logging.WARNING)  # the matcher and sampler log at INFO per build


def iou_matches(
    boxes: torch.Tensor, anchors: torch.Tensor, high: float, low: float, low_quality: bool = True
) -> torch.Tensor:
    """Faster R-CNN's matching: per anchor, the index of its gt box, -1 background, -2 ignored.

    An anchor matches the gt box it overlaps most when that IoU is at least ``high``; below
    ``low`` it is background; in between it is ignored. With ``low_quality``, each gt box also
    takes the anchors that overlap it most, whatever the IoU.
    """
    if boxes.shape[0] == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    iou = box_iou(boxes, anchors).to(anchors.device)  # (N, A)
    best, matches = iou.max(dim=0)
    original = matches.clone()
    matches[best < high] = -2
    matches[best < low] = -1
    if low_quality:
        top = iou.max(dim=1, keepdim=True).values
        _, anchor = torch.nonzero((iou == top) & (top > 0), as_tuple=True)
        matches[anchor] = original[anchor]
    return matches


def box_centres_ignored(boxes: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: whether the voxel at each box's centre is ignored (``ignore``: ``(*S)``)."""
    if boxes.shape[0] == 0 or not bool(ignore.any()):
        return torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    d = ignore.ndim
    centre = ((boxes[:, :d] + boxes[:, d:]) / 2).floor().long()
    upper = torch.as_tensor(ignore.shape, device=boxes.device) - 1
    centre = torch.minimum(centre.clamp(min=0), upper)
    return ignore[tuple(centre.T)]


class RPNHead(nn.Module):
    """A shared 3x3 conv + LeakyReLU, then per anchor one objectness logit and ``2 * D`` deltas."""

    def __init__(self, spatial_dims: int, channels: int, anchors: int) -> None:
        super().__init__()
        conv = conv_type(spatial_dims)
        self.spatial_dims = spatial_dims
        self.conv = conv(channels, channels, 3, padding=1)
        self.objectness = conv(channels, anchors, 1)
        self.deltas = conv(channels, anchors * 2 * spatial_dims, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level, objectness ``(B, A * S_l)`` and deltas ``(B, A * S_l, 2D)`` in anchor order."""
        objectness, deltas = [], []
        for x in features:
            x = F.leaky_relu(self.conv(x), 0.01)
            logits, codes = self.objectness(x), self.deltas(x)
            batch, anchors, d = x.shape[0], logits.shape[1], self.spatial_dims
            spatial = list(range(2, 2 + d))
            objectness.append(logits.permute(0, *spatial, 1).reshape(batch, -1))
            codes = codes.view(batch, anchors, 2 * d, *codes.shape[2:]).permute(0, *[s + 1 for s in spatial], 1, 2)
            deltas.append(codes.reshape(batch, -1, 2 * d))
        return objectness, deltas


class RegionProposalNetwork(nn.Module):
    """Anchors, objectness, box deltas, their training losses and the proposals.

    Args:
        spatial_dims: 2 or 3.
        channels: pyramid channels.
        strides: the stride of each pyramid level.
        anchor_shapes: anchor sides in units of the level's stride, one tuple of ``D`` per anchor
            shape (every location of every level gets each shape).
        matcher: ``"atss"`` (adaptive IoU threshold, Zhang et al. 2020) or ``"iou"`` (>= 0.7
            foreground, < 0.3 background).
        batch_per_image: anchors sampled per image for the losses.
        positive_fraction: at most this fraction of them positive.
        pre_nms: proposals kept per level before NMS.
        post_nms: proposals kept per image after NMS, ``(training, inference)``.
        nms_threshold: IoU of the proposals' NMS.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        strides: Sequence[int],
        *,
        anchor_shapes: Sequence[Sequence[float]],
        matcher: str = "atss",
        batch_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms: int = 1000,
        post_nms: tuple[int, int] = (512, 256),
        nms_threshold: float = 0.7,
    ) -> None:
        super().__init__()
        if any(len(shape) != spatial_dims for shape in anchor_shapes):
            raise ValueError(f"anchor_shapes must hold {spatial_dims} sides per shape, got {anchor_shapes!r}.")
        self.spatial_dims, self.strides = spatial_dims, list(strides)
        self.anchors = AnchorGeneratorWithAnchorShape(strides, [list(map(float, s)) for s in anchor_shapes])
        self.head = RPNHead(spatial_dims, channels, len(anchor_shapes))
        self.coder = BoxCoder(weights=(1.0,) * (2 * spatial_dims))
        self.matcher_name = look_up_option(matcher, ("atss", "iou"), argument="rpn_matcher")
        self.matcher = ATSSMatcher(num_candidates=4, center_in_gt=False)
        self.sampler = HardNegativeSampler(
            batch_per_image, positive_fraction, min_neg=max(batch_per_image // 4, 1), pool_size=10
        )
        self.pre_nms, self.post_nms, self.nms_threshold = pre_nms, tuple(post_nms), nms_threshold

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The head's objectness and deltas per level (see :class:`RPNHead`)."""
        return self.head(features)

    def anchors_for(self, shape: Sequence[int], features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per level, the ``(A * S_l, 2D)`` anchors of an image of (padded) ``shape``."""
        grids = [list(f.shape[2:]) for f in features]
        device = features[0].device
        strides = [[torch.tensor(shape[a] // g[a], device=device) for a in range(self.spatial_dims)] for g in grids]
        self.anchors.set_cell_anchors(torch.float32, device)
        return self.anchors.grid_anchors(grids, strides)

    def _match(self, target: InstanceTargets, anchors: torch.Tensor, per_level: list[int]) -> torch.Tensor:
        """Per anchor, the index of its gt box, -1 background, -2 ignored."""
        if self.matcher_name != "atss" or target.boxes.shape[0] == 0:
            return iou_matches(target.boxes, anchors, 0.7, 0.3)
        locations = [n // self.head.objectness.out_channels for n in per_level]
        quality, matches = self.matcher(target.boxes, anchors, locations, self.head.objectness.out_channels)
        # ATSS leaves a box without anchors when its candidates tie (std 0 lifts the threshold
        # above them all, common with one anchor shape on a 3D grid): it gets its best anchor
        unmatched = torch.nonzero(torch.bincount(matches[matches >= 0], minlength=len(target.boxes)) == 0)
        for box in unmatched.flatten().tolist():
            matches[quality[box].argmax()] = box
        return matches

    def loss(
        self,
        objectness: list[torch.Tensor],
        deltas: list[torch.Tensor],
        anchors: list[torch.Tensor],
        targets: list[InstanceTargets],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objectness BCE, box smooth L1)`` over the sampled anchors of the batch."""
        per_level = [a.shape[0] for a in anchors]
        all_anchors = torch.cat(anchors)
        logits, codes = torch.cat(objectness, dim=1), torch.cat(deltas, dim=1)
        labels, matched = [], []
        for target in targets:
            matches = self._match(target, all_anchors, per_level)
            label = (matches >= 0).long()
            label[matches == -2] = -1
            label[(matches == -1) & box_centres_ignored(all_anchors, target.ignore)] = -1
            labels.append(label)
            matched.append(matches)
        positive, negative = self.sampler(labels, torch.sigmoid(logits.detach().float()).flatten())
        positive, negative = torch.stack(positive).bool(), torch.stack(negative).bool()
        sampled = positive | negative
        count = max(int(sampled.sum()), 1)
        cls = F.binary_cross_entropy_with_logits(
            logits[sampled].float(), positive[sampled].float(), reduction="sum"
        ) / count
        reg = codes.sum() * 0.0
        for b, target in enumerate(targets):
            chosen = positive[b]
            if chosen.any():
                goal = self.coder.encode_single(target.boxes[matched[b][chosen]], all_anchors[chosen])
                reg = reg + F.smooth_l1_loss(codes[b][chosen].float(), goal, beta=1 / 9, reduction="sum")
        return cls, reg / count

    @torch.no_grad()
    def proposals(
        self,
        objectness: list[torch.Tensor],
        deltas: list[torch.Tensor],
        anchors: list[torch.Tensor],
        shape: Sequence[int],
    ) -> list[torch.Tensor]:
        """Per image, up to ``post_nms`` proposal boxes ``(P, 2D)`` (detached), best first."""
        keep_count = self.post_nms[0] if self.training else self.post_nms[1]
        results = []
        for b in range(objectness[0].shape[0]):
            boxes, scores, levels = [], [], []
            for level, (logits, codes, cells) in enumerate(zip(objectness, deltas, anchors)):
                top = logits[b].topk(min(self.pre_nms, logits.shape[1])).indices
                boxes.append(self.coder.decode_single(codes[b][top].float(), cells[top]))
                scores.append(logits[b][top].float())
                levels.append(torch.full_like(top, level))
            boxes_b = clip_boxes(torch.cat(boxes), shape)
            scores_b, levels_b = torch.cat(scores), torch.cat(levels)
            valid = remove_small_boxes(boxes_b, 0.5)
            boxes_b, scores_b, levels_b = boxes_b[valid], scores_b[valid], levels_b[valid]
            keep = batched_nms(boxes_b, scores_b, levels_b, self.nms_threshold, keep_count)
            results.append(boxes_b[keep])
        return results
