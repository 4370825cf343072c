"""How unsure a model is of a case: the entropy of its mean softmax under mirroring test-time
augmentation, or, for a fold ensemble, how much the folds disagree (mutual information)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from ..inference import predict_probabilities

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = ["case_uncertainty", "mean_entropy", "voxel_entropy"]


def voxel_entropy(probabilities: np.ndarray, activation: str = "softmax") -> np.ndarray:
    """Entropy in nats per voxel of ``(K, *spatial)`` probabilities: over the classes (softmax),
    or summed over the independent region channels (sigmoid)."""
    p = np.clip(probabilities.astype(np.float64), 1e-12, 1.0)
    if activation == "sigmoid":
        q = np.clip(1.0 - probabilities.astype(np.float64), 1e-12, 1.0)
        return -(p * np.log(p) + q * np.log(q)).sum(axis=0)
    return -(p * np.log(p)).sum(axis=0)


def mean_entropy(probabilities: np.ndarray, activation: str = "softmax") -> float:
    """The mean over voxels of :func:`voxel_entropy`."""
    return float(voxel_entropy(probabilities, activation).mean())


def case_uncertainty(pipe: Pipeline, image: np.ndarray) -> tuple[np.ndarray, float, str]:
    """Probabilities and uncertainty of one preprocessed image ``(C, *spatial)``.

    One network: the mean probabilities over the mirror images (along the plan's mirror axes: 2**axes
    passes) and the mean voxel entropy of that mean (``entropy-tta``). A fold ensemble: each
    fold's probabilities (mirrored as the run's inference says), their mean, and the mean voxel
    mutual information ``H(mean) - mean(H(fold))`` (``fold-disagreement``).

    Returns:
        ``(probabilities (K, *spatial), score in nats, method)``.
    """
    activation = "sigmoid" if pipe.plan.label_spec.is_regions else "softmax"
    networks = [pipe.network, *pipe.ensemble]
    for network in networks:
        network.to(pipe.device)
    config = pipe.inference if len(networks) > 1 else dataclasses.replace(pipe.inference, mirror=True)
    members = [predict_probabilities(network, image, roi_size=tuple(pipe.plan.patch_size), config=config,
                                     slice_axis=pipe.plan.slice_axis, device=pipe.device, activation=activation,
                                     mirror_axes=pipe.plan.mirror_axes)
               for network in networks]
    mean = np.mean(members, axis=0) if len(members) > 1 else members[0]
    if len(members) == 1:
        return mean, mean_entropy(mean, activation), "entropy-tta"
    spread = mean_entropy(mean, activation) - float(np.mean([mean_entropy(m, activation) for m in members]))
    return mean, spread, "fold-disagreement"
