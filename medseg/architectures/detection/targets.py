"""Detection targets from a batch of ENCODED instance labels (medseg.instances.encoding).

``value = (n - 1) * (K - 1) + c`` for instance ``n`` of class ``c``; 0 background; -1 ignored.
Decoded here in torch, on the label's device, without a per-instance mask volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medseg.io.labels import IGNORE_INDEX

__all__ = ["InstanceTargets", "instance_targets"]


@dataclass
class InstanceTargets:
    """The instances of one patch.

    Attributes:
        encoded: ``(*spatial)`` the encoded label (long).
        values: ``(N,)`` the encoded value of each instance, ascending.
        labels: ``(N,)`` class indices ``1 .. K-1``.
        boxes: ``(N, 2 * D)`` float boxes ``[min, max + 1)`` per axis.
    """

    encoded: torch.Tensor
    values: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor

    @property
    def ignore(self) -> torch.Tensor:
        """``(*spatial)`` bool: the ignored voxels."""
        return self.encoded == IGNORE_INDEX


def _boxes(encoded: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per value, the bounding box of its voxels (``values`` ascending, all present)."""
    flat = encoded.flatten()
    positive = flat > 0
    rank = torch.searchsorted(values, flat[positive])
    lows, highs = [], []
    for axis, size in enumerate(encoded.shape):
        shape = [1] * encoded.ndim
        shape[axis] = size
        coords = torch.arange(size, device=encoded.device).view(shape).expand(encoded.shape).flatten()[positive]
        low = torch.full((len(values),), size, dtype=torch.long, device=encoded.device)
        high = torch.full((len(values),), -1, dtype=torch.long, device=encoded.device)
        lows.append(low.scatter_reduce(0, rank, coords, reduce="amin"))
        highs.append(high.scatter_reduce(0, rank, coords, reduce="amax") + 1)
    return torch.stack(lows + highs, dim=1).float()


def instance_targets(encoded: torch.Tensor, num_classes: int) -> list[InstanceTargets]:
    """Decode a ``(B, *spatial)`` encoded batch into per-patch targets.

    Args:
        encoded: integer labels, the encoding of :mod:`medseg.instances.encoding`.
        num_classes: ``K``, background included.

    Returns:
        One :class:`InstanceTargets` per patch; a patch without instances has ``N = 0``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background and a class), got {num_classes}.")
    targets = []
    for label in encoded.long():
        values = torch.unique(label[label > 0])
        labels = (values - 1) % (num_classes - 1) + 1
        targets.append(InstanceTargets(label, values, labels, _boxes(label, values)))
    return targets
