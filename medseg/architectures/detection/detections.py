"""What a detector returns per image, and the box operations its heads and inference share.

Boxes are MONAI ``StandardMode`` ``[min_0, min_1, (min_2), max_0, max_1, (max_2)]`` in continuous
voxel coordinates (voxel ``i`` spans ``[i, i + 1)``); the overlaps come from
:func:`monai.data.box_utils.box_iou`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Detections", "batched_nms", "clip_boxes", "nms", "remove_small_boxes"]


@dataclass
class Detections:
    """The detections of one image, best score first.

    Attributes:
        boxes: ``(N, 2 * D)`` float boxes in the input's voxel coordinates.
        labels: ``(N,)`` long class indices ``1 .. K-1``.
        scores: ``(N,)`` float scores in ``[0, 1]``.
        masks: ``(N, *mask_size)`` mask probabilities laid over each box (the box's extent is
            the mask's extent; :func:`medseg.instances.boxes.paste_masks` puts them on the image).
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: torch.device | str) -> Detections:
        """The same detections on ``device``."""
        return Detections(*(t.to(device) for t in (self.boxes, self.labels, self.scores, self.masks)))

    def select(self, index: torch.Tensor) -> Detections:
        """The detections at ``index`` (a long index or a boolean mask)."""
        return Detections(self.boxes[index], self.labels[index], self.scores[index], self.masks[index])


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, max_keep: int = -1) -> torch.Tensor:
    """Greedy non-maximum suppression: indices kept, best score first.

    The result of :func:`monai.data.box_utils.non_max_suppression` (a box goes when its IoU with a
    kept, higher-scoring box exceeds ``threshold``; ties keep the earlier box), computed one kept
    box at a time against the boxes after it, on the CPU.

    Args:
        boxes: ``(N, 2 * D)``.
        scores: ``(N,)``.
        threshold: the IoU above which the lower-scoring box goes.
        max_keep: keep at most this many (``-1``: no limit).
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores.detach(), descending=True, stable=True)
    sorted_boxes = boxes.detach()[order].double().cpu().numpy()
    d = sorted_boxes.shape[1] // 2
    low, high = sorted_boxes[:, :d], sorted_boxes[:, d:]
    volume = np.prod(np.clip(high - low, 0, None), axis=1)
    removed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        if len(keep) == max_keep:
            break
        sides = np.minimum(high[i], high[i + 1 :]) - np.maximum(low[i], low[i + 1 :])
        inter = np.prod(np.clip(sides, 0, None), axis=1)
        union = volume[i] + volume[i + 1 :] - inter
        removed[i + 1 :] |= inter > threshold * np.maximum(union, 1e-12)
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float, max_keep: int = -1
) -> torch.Tensor:
    """NMS within each group (class or image) separately: indices kept, best score first."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    detached = boxes.detach()
    offset = detached.max() - detached.min() + 1  # boxes of different groups never overlap
    shifted = detached + (groups.to(detached.dtype) * offset)[:, None]
    return nms(shifted, scores, threshold, max_keep)


def clip_boxes(boxes: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Clamp ``(N, 2 * D)`` boxes into the image ``[0, shape)`` (a new tensor)."""
    upper = torch.as_tensor(list(shape) * 2, dtype=boxes.dtype, device=boxes.device)
    lower = torch.zeros_like(upper)
    return torch.maximum(torch.minimum(boxes, upper), lower)


def remove_small_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Indices of the boxes whose every side is at least ``min_size``."""
    d = boxes.shape[1] // 2
    sides = boxes[:, d:] - boxes[:, :d]
    return torch.nonzero((sides >= min_size).all(dim=1)).flatten()
