"""Instance inference with a detector (Mask R-CNN): whole images, or tiles merged by class-wise NMS.

A detector here is a module with ``num_classes`` (K) and ``detect(image, score_threshold=)``
returning :class:`~medseg.architectures.detection.detections.Detections` per image.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from medseg.architectures.detection.detections import Detections
from medseg.inference.sliding_window import window_starts
from medseg.instances.boxes import paste_masks
from medseg.instances.encoding import encode

__all__ = ["detect_instances", "merge_tiles"]

#: a tile's box within this many voxels of an inner tile edge counts as cut by it
EDGE_MARGIN = 1.0


def detect_instances(
    network: nn.Module,
    image: np.ndarray,
    *,
    patch_size: Sequence[int],
    overlap: float = 0.25,
    device: torch.device | str = "cpu",
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> tuple[np.ndarray, dict[int, float]]:
    """The encoded instance label of one image, and a score per instance.

    An image no larger than ``patch_size`` is detected whole (the network pads it to its
    stride). A larger one is cut into overlapping tiles of ``patch_size`` (the last flush with
    the end, as the sliding window places them); each tile's boxes are shifted into the image,
    and duplicates across tiles are removed class by class: boxes that no inner tile edge cuts
    come first, then by score; a box goes when its IoU with a kept box of its class exceeds 0.5,
    or when it is cut and lies mostly (> 70 %) inside a kept box. The kept masks are pasted onto
    the image with :func:`~medseg.instances.boxes.paste_masks` (the higher score wins overlaps).

    Args:
        network: the detector (moved to ``device`` and used in eval mode).
        image: ``(C, *spatial)`` float image on the model's (preprocessed) grid.
        patch_size: the tile size, one per spatial axis (the training patch size).
        overlap: tile overlap fraction per axis, in ``[0, 1)``.
        device: where the network runs.
        score_threshold: detections scoring at or below it are dropped.
        mask_threshold: mask probability at which a voxel joins its instance.

    Returns:
        ``(encoded, scores)``: the encoded label (int32, :mod:`medseg.instances.encoding`, on the
        input's grid) and ``{instance number: score}`` (instance 1 scores highest).

    Example:
        >>> encoded, scores = detect_instances(net, image, patch_size=(256, 256))  # doctest: +SKIP
    """
    spatial = tuple(image.shape[1:])
    if len(patch_size) != len(spatial):
        raise ValueError(
            f"patch_size={tuple(patch_size)} must give one size per spatial axis of the image "
            f"(C, *spatial) = {tuple(image.shape)}."
        )
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}.")
    network = network.to(device)
    tensor = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if all(s <= p for s, p in zip(spatial, patch_size)):
        found = network.detect(tensor[None].to(device), score_threshold=score_threshold)[0].to("cpu")
    else:
        found = _tiled(network, tensor, patch_size, overlap, device, score_threshold)
    return _paste(found, spatial, int(network.num_classes), mask_threshold)


def _tiled(
    network: nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int],
    overlap: float,
    device: torch.device | str,
    score_threshold: float,
) -> Detections:
    """Detections of every tile, shifted into the image and merged."""
    spatial = tuple(image.shape[1:])
    patch = [min(int(p), s) for p, s in zip(patch_size, spatial)]
    parts, cuts = [], []
    for origin in itertools.product(*window_starts(spatial, patch, [overlap] * len(spatial))):
        window = (slice(None), *(slice(o, o + p) for o, p in zip(origin, patch)))
        found = network.detect(image[window][None].to(device), score_threshold=score_threshold)[0].to("cpu")
        shift = torch.as_tensor(list(origin) * 2, dtype=found.boxes.dtype)
        found.boxes = found.boxes + shift
        parts.append(found)
        cuts.append(_cut(found.boxes, origin, patch, spatial))
    merged = Detections(*(torch.cat([getattr(p, name) for p in parts]) for name in ("boxes", "labels", "scores", "masks")))
    return merged.select(merge_tiles(merged.boxes, merged.labels, merged.scores, torch.cat(cuts)))


def _cut(boxes: torch.Tensor, origin: Sequence[int], patch: Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """``(N,)`` bool: boxes touching an edge of their tile that is not an edge of the image."""
    d = len(origin)
    cut = torch.zeros(boxes.shape[0], dtype=torch.bool)
    for axis in range(d):
        if origin[axis] > 0:
            cut |= boxes[:, axis] <= origin[axis] + EDGE_MARGIN
        if origin[axis] + patch[axis] < spatial[axis]:
            cut |= boxes[:, d + axis] >= origin[axis] + patch[axis] - EDGE_MARGIN
    return cut


def merge_tiles(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    cut: torch.Tensor,
    iou_threshold: float = 0.5,
    inside_threshold: float = 0.7,
) -> torch.Tensor:
    """Indices of the detections kept when tiles are merged (see :func:`detect_instances`).

    Args:
        boxes: ``(N, 2D)`` in image coordinates.
        labels: ``(N,)`` classes; only boxes of one class suppress each other.
        scores: ``(N,)``.
        cut: ``(N,)`` bool, boxes cut by an inner tile edge (ranked after uncut ones).
        iou_threshold: IoU with a kept box above which a box goes.
        inside_threshold: a cut box goes when this fraction of it lies inside a kept box.
    """
    order = np.lexsort((-scores.numpy(), cut.numpy()))  # uncut first, then by score
    b = boxes.double().numpy()
    d = b.shape[1] // 2
    volume = np.prod(np.clip(b[:, d:] - b[:, :d], 0, None), axis=1)
    kept: list[int] = []
    for i in order:
        same = [k for k in kept if labels[k] == labels[i]]
        if same:
            sides = np.minimum(b[same, d:], b[i, d:]) - np.maximum(b[same, :d], b[i, :d])
            inter = np.prod(np.clip(sides, 0, None), axis=1)
            iou = inter / np.maximum(volume[same] + volume[i] - inter, 1e-12)
            inside = inter / max(volume[i], 1e-12)
            if (iou > iou_threshold).any() or (bool(cut[i]) and (inside > inside_threshold).any()):
                continue
        kept.append(int(i))
    return torch.as_tensor(sorted(kept, key=lambda k: -float(scores[k])), dtype=torch.long)


def _paste(found: Detections, shape: Sequence[int], num_classes: int, mask_threshold: float) -> tuple[np.ndarray, dict[int, float]]:
    """The encoded label and scores of ``found`` pasted on an image of ``shape``."""
    instance_map, classes, scores = paste_masks(
        found.boxes.numpy(), found.masks.float().numpy(), found.labels.numpy(), found.scores.numpy(),
        tuple(shape), mask_threshold=mask_threshold,
    )
    encoded = encode(instance_map, classes, num_classes)
    return encoded, {int(k): float(v) for k, v in scores.items()}
