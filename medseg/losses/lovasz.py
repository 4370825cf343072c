"""Lovász-softmax loss (Berman et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medseg.errors import look_up_option
from medseg.losses.base import Loss, as_labels, check_flag, one_hot, valid_mask

__all__ = ["LovaszSoftmaxLoss", "lovasz_gradient"]


def lovasz_gradient(truth_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss along sorted errors.

    Args:
        truth_sorted: binary ground truth ``(..., N)``, ordered by decreasing error.

    Returns:
        ``(..., N)``: ``J(i) - J(i - 1)``, with ``J(i)`` the Jaccard loss of the set of the
        ``i + 1`` largest errors.
    """
    total = truth_sorted.sum(-1, keepdim=True)
    intersection = total - truth_sorted.cumsum(-1)
    union = total + (1.0 - truth_sorted).cumsum(-1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


class LovaszSoftmaxLoss(Loss):
    """A convex surrogate of the Jaccard loss, per class (Berman et al. 2018).

    For each class, the errors ``|g - p|`` are sorted in decreasing order and dotted with the
    gradient of the Lovász extension of the Jaccard loss; the class losses are averaged. At a
    hard prediction the loss of a class is exactly its ``1 - IoU``. Ignored voxels get error 0
    and truth 0: they sort last and add nothing, as if they were not there (Berman's filtering).

    Args:
        classes: ``"present"`` (average the classes present in the target), ``"all"``, or a
            sequence of class indices.
        per_image: compute the loss per sample and average, instead of over the whole batch.

    Example:
        >>> LovaszSoftmaxLoss()(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).ndim
        0
    """

    def __init__(self, classes: str | Sequence[int] = "present", per_image: bool = False) -> None:
        super().__init__()
        if isinstance(classes, str):
            self.classes: str | list[int] = look_up_option(
                classes, ("present", "all"), argument="classes"
            )
        else:
            try:
                self.classes = [int(c) for c in classes]
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f'classes must be "present", "all" or class indices, got {classes!r}.'
                ) from error
            if not self.classes or any(
                c < 0 or c != k for c, k in zip(self.classes, classes, strict=True)
            ):
                raise ValueError(
                    f"classes must be a non-empty sequence of indices >= 0, got {classes!r}."
                )
        self.per_image = check_flag(per_image, "per_image")

    def _class_indices(self, num_classes: int) -> list[int]:
        if isinstance(self.classes, str):
            return list(range(num_classes))
        if max(self.classes) >= num_classes:
            raise ValueError(
                f"classes {self.classes} holds an index >= the {num_classes} classes of the logits."
            )
        return self.classes

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor
    ) -> torch.Tensor:
        """Args: logits ``(B, C, *spatial)``, target ``(B, [1,] *spatial)``. Returns a scalar."""
        labels = as_labels(logits, target)
        indices = self._class_indices(logits.shape[1])
        valid = valid_mask(labels).unsqueeze(1)
        probs = (torch.softmax(logits.float(), dim=1)[:, indices] * valid).flatten(2)
        truth = one_hot(labels, logits.shape[1])[:, indices].flatten(2)
        if not self.per_image:  # one group: the whole batch, (1, K, B * N)
            probs = probs.transpose(0, 1).reshape(1, len(indices), -1)
            truth = truth.transpose(0, 1).reshape(1, len(indices), -1)
        errors, order = (truth - probs).abs().sort(dim=-1, descending=True)
        per_class = (errors * lovasz_gradient(truth.gather(-1, order))).sum(-1)
        if self.classes != "present":
            return per_class.mean()
        present = (truth.sum(-1) > 0).float()
        per_group = (per_class * present).sum(-1) / present.sum(-1).clamp_min(1.0)
        return per_group.mean()

    def extra_repr(self) -> str:
        return f"classes={self.classes!r}, per_image={self.per_image}"
