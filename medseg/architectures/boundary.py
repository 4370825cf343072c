"""Boundary terms of Gated-SCNN's training loss (Takikawa et al. 2019), for 2D and 3D.

All functions reduce over ``range(2, x.ndim)``-style spatial axes, so they work at any rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "balanced_bce",
    "dual_task_loss",
    "gradient_magnitude",
    "label_edges",
    "squeeze_target",
]


def squeeze_target(target: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Integer labels ``(B, *spatial)`` from ``(B, *spatial)`` or ``(B, 1, *spatial)``."""
    if target.ndim == spatial_dims + 2:
        if target.shape[1] != 1:
            raise ValueError(
                f"target must be (B, *spatial) or (B, 1, *spatial) labels, got {tuple(target.shape)}."
            )
        target = target[:, 0]
    return target.long()


def label_edges(target: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Binary edges of a label map: voxels with a differently labelled neighbour.

    A voxel is an edge when the maximum and the minimum label within ``radius`` (a cube)
    differ; the image border is not an edge (replicate padding).

    Args:
        target: integer labels ``(B, *spatial)``.
        radius: half-width of the neighbourhood.

    Returns:
        float ``(B, 1, *spatial)`` of 0/1.
    """
    t = target.unsqueeze(1).float()
    spatial_dims = t.ndim - 2
    k = 2 * radius + 1
    t = F.pad(t, [radius] * (2 * spatial_dims), mode="replicate")
    pool = F.max_pool2d if spatial_dims == 2 else F.max_pool3d
    return (pool(t, k, stride=1) != -pool(-t, k, stride=1)).float()


def balanced_bce(logits: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy (HED; Gated-SCNN's boundary loss).

    Edge voxels are weighted by the fraction of non-edge voxels in the batch and vice versa,
    so the rare edges weigh as much as the background in total.

    Args:
        logits: boundary logits ``(B, 1, *spatial)``.
        edges: 0/1 targets of the same shape.
    """
    positives = edges.sum()
    total = float(edges.numel())
    weight = torch.where(edges > 0.5, (total - positives) / total, positives / total)
    return F.binary_cross_entropy_with_logits(logits, edges, weight=weight.detach())


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Per-channel magnitude of the central-difference gradient, ``(B, C, *spatial)``.

    Borders are replicated, so a constant map has zero gradient everywhere.
    """
    spatial_dims = x.ndim - 2
    padded = F.pad(x, [1] * (2 * spatial_dims), mode="replicate")
    squared = torch.zeros_like(x)
    for axis in range(2, x.ndim):
        n = x.shape[axis]
        diff = padded.narrow(axis, 2, n) - padded.narrow(axis, 0, n)
        for other in range(2, x.ndim):  # drop the padding of the other axes
            if other != axis:
                diff = diff.narrow(other, 1, x.shape[other])
        squared = squared + (0.5 * diff) ** 2
    return torch.sqrt(squared + 1e-12)


def dual_task_loss(
    logits: torch.Tensor, target: torch.Tensor, *, tau: float = 0.5, threshold: float = 1e-4
) -> torch.Tensor:
    """Gated-SCNN's dual-task regulariser: boundaries of the predicted segmentation vs the truth.

    The segmentation is made near one-hot and differentiable with a Gumbel-softmax sample at
    temperature ``tau``; the gradient magnitudes of that and of the one-hot target are compared
    with an L1 distance averaged over the voxels on either boundary (half each), as in the paper.

    Args:
        logits: segmentation logits ``(B, K, *spatial)``.
        target: integer labels ``(B, *spatial)``.
        tau: Gumbel-softmax temperature.
        threshold: magnitude above which a voxel counts as on a boundary (the magnitude of a
            constant map is 1e-6, from the square root's epsilon).
    """
    uniform = torch.rand_like(logits).clamp(1e-10, 1.0 - 1e-7)
    soft = torch.softmax((logits - torch.log(-torch.log(uniform))) / tau, dim=1)
    one_hot = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    predicted, truth = gradient_magnitude(soft), gradient_magnitude(one_hot)
    distance = (predicted - truth).abs()
    total = logits.new_zeros(())
    for boundary in (predicted.detach() >= threshold, truth >= threshold):
        mask = boundary.to(logits.dtype)
        total = total + 0.5 * (distance * mask).sum() / (mask.sum() + 1e-10)
    return total
