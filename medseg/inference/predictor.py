"""Whole-case prediction: sliding window (3D, or slice by slice for 2D networks on 3D data),
optional mirroring test-time augmentation, and fold ensembles."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..errors import look_up_option
from .sliding_window import sliding_window_inference

__all__ = ["InferenceConfig", "predict_probabilities"]


@dataclass(frozen=True)
class InferenceConfig:
    """How a Pipeline predicts.

    Args:
        overlap: window overlap (nnU-Net: 0.5).
        mode: ``"gaussian"`` or ``"constant"`` blending.
        sw_batch_size: windows per forward pass.
        mirror: test-time augmentation by mirroring along every spatial axis (2**dims passes).
        largest_component: keep only the largest connected component of each class (of each
            region, for region labels); a list keeps it for those classes only, named by their
            label values (regions by their ``regions_class_order`` values); ``None`` lets
            :meth:`Pipeline.fit` decide per class on the validation cases (nnU-Net's rule).
        score_threshold: of a detector (Mask R-CNN): instances scoring at or below it are not
            written; ``None`` lets :meth:`Pipeline.fit` decide on the validation cases (0.5
            when there are none).
    """

    overlap: float = 0.5
    mode: str = "gaussian"
    sw_batch_size: int = 4
    mirror: bool = False
    largest_component: bool | tuple[int, ...] | None = None
    score_threshold: float | None = None

    def __post_init__(self) -> None:
        chosen = self.largest_component
        if chosen is not None and not isinstance(chosen, (bool, np.bool_)):
            object.__setattr__(self, "largest_component", tuple(sorted(int(value) for value in chosen)))
        elif chosen is not None:
            object.__setattr__(self, "largest_component", bool(chosen))

    def to_dict(self) -> dict:
        settings = asdict(self)
        if settings["score_threshold"] is None:  # semantic runs' settings as before it existed
            del settings["score_threshold"]
        return settings


ACTIVATIONS = {"softmax": lambda out: torch.softmax(out, dim=1), "sigmoid": torch.sigmoid}
"""Output activations: softmax over class channels, or a sigmoid per region channel."""


def _forward(network: nn.Module, mirror_axes: Sequence[int], activation: str = "softmax"):
    """``x -> mean activation over the mirror images of x`` (just ``softmax(net(x))`` without axes)."""
    activate = ACTIVATIONS[activation]

    def run(x: torch.Tensor) -> torch.Tensor:
        combos = [()] + [c for r in range(1, len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)]
        total = None
        for axes in combos:
            flipped = torch.flip(x, axes) if axes else x
            out = network(flipped)
            out = out[0] if isinstance(out, (tuple, list)) else out
            probabilities = activate(out.float())
            probabilities = torch.flip(probabilities, axes) if axes else probabilities
            total = probabilities if total is None else total + probabilities
        assert total is not None
        return total / len(combos)

    return run


@torch.inference_mode()
def predict_probabilities(
    networks: nn.Module | Sequence[nn.Module],
    image: np.ndarray,
    *,
    roi_size: Sequence[int],
    config: InferenceConfig = InferenceConfig(),
    slice_axis: int | None = None,
    device: torch.device | str = "cpu",
    activation: str = "softmax",
    mirror_axes: Sequence[int] | None = None,
) -> np.ndarray:
    """Class (or region) probabilities for one preprocessed case.

    Args:
        networks: a network, or several (a fold ensemble: their activated outputs are averaged).
        image: ``(C, *spatial)`` on the preprocessed grid.
        roi_size: the window (the network's spatial dims).
        config: overlap, blending, mirroring.
        slice_axis: for a 2D network on 3D data, the axis slices are taken across.
        device: where the networks run; the blended output stays on the CPU.
        activation: ``"softmax"`` over the class channels, or ``"sigmoid"`` on each channel (one
            per region); mirrored passes and ensemble members average the activated outputs.
        mirror_axes: the network's spatial axes (0-based) that ``config.mirror`` mirrors; default
            every axis (a plan's ``mirror_axes``: the axes training mirrored).

    Returns:
        ``(K, *spatial)`` float32 probabilities (class probabilities sum to 1 per voxel; region
        probabilities each lie in [0, 1]).
    """
    activation = look_up_option(activation, tuple(ACTIVATIONS), argument="activation")
    networks = [networks] if isinstance(networks, nn.Module) else list(networks)
    device = torch.device(device)
    array = np.ascontiguousarray(image, dtype=np.float32)
    x = torch.from_numpy(array if array.flags.writeable else array.copy())  # no copy unless read-only
    if slice_axis is not None:  # slices become the batch
        x = x.movedim(slice_axis + 1, 0)
    else:
        x = x[None]
    spatial = x.ndim - 2
    axes = range(spatial) if mirror_axes is None else mirror_axes
    mirror_axes = tuple(2 + int(a) for a in axes) if config.mirror else ()
    total = None
    for network in networks:
        network.eval()
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            out = sliding_window_inference(
                x, tuple(roi_size), config.sw_batch_size, _forward(network, mirror_axes, activation),
                overlap=config.overlap, mode=config.mode, sw_device=device, device="cpu",
            )
        total = out.float() if total is None else total.add_(out)  # in place: one buffer for the ensemble
    assert total is not None
    total /= len(networks)
    total = total.movedim(0, slice_axis + 1) if slice_axis is not None else total[0]
    return total.numpy()
