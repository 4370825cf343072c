"""Planning: defaults read off the data, like nnU-Net's fingerprint but small and readable.

Target spacing is the median spacing (coarsened when the median image would not fit the compute
budget), the patch covers the median image where the budget allows, classes and channels come
from the data, and CT data gets CT normalisation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from .io.datasets import Dataset
from .io.files import full_suffix
from .io.labels import LabelSpec
from .io.readers import NiftiIO, read_image_file
from .preprocessing.base import Fingerprint

__all__ = ["Plan", "fingerprint_dataset", "plan_dataset"]

# Voxels per training batch the default plan aims at, by device: enough context per patch,
# enough steps per minute. Measured on the hippocampus and HC18 data (see README).
_BATCH_VOXELS = {("cpu", 2): 6 * 320 * 224, ("cpu", 3): 4 * 40 * 56 * 40,
                 ("cuda", 2): 12 * 512 * 512, ("cuda", 3): 2 * 128 * 128 * 128}
# Largest median image (voxels) trained at full resolution; larger data is coarsened.
_IMAGE_VOXELS = {("cpu", 2): 192 * 192, ("cpu", 3): 160 ** 3, ("cuda", 2): 1024 * 1024, ("cuda", 3): 320 ** 3}
_MAX_BATCH = {2: 16, 3: 8}


@dataclass(frozen=True)
class Plan:
    """Every default a Pipeline takes from the data; each can be overridden with ``replace``.

    Args:
        spatial_dims: 2 or 3, the dimensionality of the network.
        in_channels: image channels.
        num_classes: classes including background.
        class_names: one name per class.
        target_spacing: the spacing cases are resampled to (one value per data axis).
        normalization: ``"zscore"`` or ``"ct"``.
        patch_size: the training patch (``spatial_dims`` values).
        batch_size: patches per step.
        features: U-Net widths per stage (its length sets the depth).
        median_shape: the median case shape after resampling.
        slice_axis: for a 2D network on 3D data, the axis slices are taken across.
        intensity: per channel foreground statistics (CT only).
        labels: what the dataset's label values mean (values, names, ignore label, regions);
            ``None`` in plans saved before it existed (classes ``0..num_classes-1``).
    """

    spatial_dims: int
    in_channels: int
    num_classes: int
    class_names: tuple[str, ...]
    target_spacing: tuple[float, ...]
    normalization: str
    patch_size: tuple[int, ...]
    batch_size: int
    features: tuple[int, ...]
    median_shape: tuple[int, ...] = field(default_factory=tuple)
    slice_axis: int | None = None
    intensity: tuple[dict[str, float], ...] = field(default_factory=tuple)
    labels: LabelSpec | None = None

    @property
    def label_spec(self) -> LabelSpec:
        """The plan's :class:`~medseg.io.labels.LabelSpec` (classes ``0..K-1`` if none was saved)."""
        if self.labels is not None:
            return self.labels
        return LabelSpec(tuple(range(self.num_classes)), self.class_names)

    @property
    def out_channels(self) -> int:
        """Network outputs: one per class (softmax), or one per region (sigmoid)."""
        return self.label_spec.out_channels

    def replace(self, **changes: Any) -> Plan:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        fields["intensity"] = tuple(data.get("intensity", ()))
        if data.get("labels") is not None:
            fields["labels"] = LabelSpec.from_dict(data["labels"])
        return cls(**fields)

    def __str__(self) -> str:
        rows = [f"  {k:<15} {v}" for k, v in asdict(self).items() if k not in ("intensity", "labels")]
        spec = self.label_spec
        if spec.ignore is not None or spec.regions or not spec.is_identity:
            rows.append(f"  {'label values':<15} {list(spec.values)}"
                        + (f", ignore {spec.ignore}" if spec.ignore is not None else "")
                        + (f", regions {dict(zip(spec.region_names, spec.regions_class_order))}" if spec.regions else ""))
        return "Plan\n" + "\n".join(rows)


def _header(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Shape and spacing from the header alone where the format allows."""
    if full_suffix(path) in NiftiIO.suffixes:
        header = nib.load(str(path)).header
        shape = header.get_data_shape()[:3]
        return tuple(int(s) for s in shape), tuple(float(z) for z in header.get_zooms()[: len(shape)])
    if path.is_file():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return tuple(reader.GetSize()), tuple(reader.GetSpacing())
    _, geometry = read_image_file(path)
    return geometry.shape, geometry.spacing


def _case_facts(dataset: Dataset, case: str, intensity: bool) -> dict[str, Any]:
    files = dataset.cases[case]
    facts: dict[str, Any] = {}
    if intensity or dataset.label_spec is None:
        sample = dataset.load(case)
        facts["shape"], facts["spacing"] = sample.geometry.shape, sample.geometry.spacing
        facts["classes"] = np.unique(sample.label).tolist() if sample.label is not None else [0]
        if intensity and sample.label is not None:
            rng = np.random.default_rng(0)
            foreground = sample.image[:, sample.label > 0]
            take = rng.choice(foreground.shape[1], min(10000, foreground.shape[1]), replace=False)
            facts["foreground"] = foreground[:, take]
    else:
        facts["shape"], facts["spacing"] = _header(files.images[0])
        facts["classes"] = list(range(dataset.label_spec.num_classes))
    return facts


def fingerprint_dataset(dataset: Dataset, *, workers: int = 4) -> tuple[Fingerprint, list[int]]:
    """Spacings, shapes, classes and (for CT) foreground intensity statistics of a dataset."""
    ct = any(m.upper() == "CT" for m in dataset.modality)
    with ThreadPoolExecutor(workers) as pool:
        facts = list(pool.map(lambda c: _case_facts(dataset, c, ct), dataset.case_ids))
    classes = sorted({c for f in facts for c in f["classes"]})
    stats: list[dict[str, float]] = []
    if ct:
        values = np.concatenate([f["foreground"] for f in facts if "foreground" in f], axis=1)
        for channel in values:
            p00_5, p99_5 = np.percentile(channel, [0.5, 99.5])
            stats.append({"mean": float(channel.mean()), "std": float(channel.std()),
                          "p00_5": float(p00_5), "p99_5": float(p99_5)})
    fingerprint = Fingerprint(
        spacings=tuple(tuple(f["spacing"]) for f in facts),
        shapes=tuple(tuple(f["shape"]) for f in facts),
        intensity=tuple(stats),
        classes=tuple(classes),
    )
    return fingerprint, classes


def _patch_size(shape: Sequence[float], budget: int, pools: int) -> tuple[int, ...]:
    """The median shape rounded up to a multiple of ``2**pools``, shrunk to fit ``budget``."""
    multiple = 2**pools
    patch = [max(multiple, math.ceil(s / multiple) * multiple) for s in shape]
    while math.prod(patch) > budget and max(patch) > multiple:
        axis = int(np.argmax(patch))
        patch[axis] -= multiple
    return tuple(patch)


def _pools(shape: Sequence[float], spatial_dims: int) -> int:
    """Downsamplings until the smallest axis would fall under 4 voxels (at most 5 in 2D, 4 in 3D)."""
    return max(1, min(5 if spatial_dims == 2 else 4, int(math.log2(max(min(shape), 8) / 4))))


def plan_dataset(
    dataset: Dataset,
    *,
    spatial_dims: int | None = None,
    device: str = "cpu",
    fingerprint: Fingerprint | None = None,
) -> Plan:
    """Derive a :class:`Plan` from the data.

    Args:
        dataset: the training cases.
        spatial_dims: 2 trains slice by slice on 3D data; default the data's own dimensionality.
        device: ``"cpu"`` or ``"cuda"``; sets the compute budget for patch and batch size.
        fingerprint: a fingerprint already read (else it is read here).

    Example:
        >>> plan = plan_dataset(MSDDataset("Task04_Hippocampus"))  # doctest: +SKIP
    """
    if fingerprint is None:
        fingerprint, classes = fingerprint_dataset(dataset)
    else:
        classes = list(fingerprint.classes)
    data_dims = len(fingerprint.shapes[0])
    spatial_dims = spatial_dims or data_dims
    if spatial_dims not in (2, 3) or spatial_dims > data_dims:
        raise ValueError(f"spatial_dims={spatial_dims} does not fit {data_dims}D data; use 2 or {data_dims}.")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    spacing = np.asarray(fingerprint.median_spacing)
    shape = np.median(np.asarray(fingerprint.shapes) * np.asarray(fingerprint.spacings), axis=0) / spacing
    budget = _IMAGE_VOXELS[(kind, data_dims)]
    if np.prod(shape) > budget:  # too large for this device at full resolution: coarsen evenly
        factor = (np.prod(shape) / budget) ** (1.0 / data_dims)
        spacing, shape = spacing * factor, shape / factor
    slice_axis = None
    if spatial_dims < data_dims:  # the coarsest axis, or the last (z) when isotropic
        slice_axis = int(np.argmax(spacing)) if spacing.max() > 1.5 * spacing.min() else data_dims - 1
    in_plane = shape if slice_axis is None else np.delete(shape, slice_axis)
    pools = _pools(in_plane, spatial_dims)
    patch = _patch_size(in_plane, _BATCH_VOXELS[(kind, spatial_dims)] // 2, pools)
    batch = int(np.clip(_BATCH_VOXELS[(kind, spatial_dims)] // math.prod(patch), 2, _MAX_BATCH[spatial_dims]))
    # nnU-Net's widths on a GPU; half of them on a CPU, where a step must stay under a second
    base, cap = (32, 320 if spatial_dims == 3 else 512) if kind == "cuda" else (16, 256)
    features = tuple(min(base * 2**i, cap) for i in range(pools + 1))
    ct = any(m.upper() == "CT" for m in dataset.modality)
    # declared classes, else the values found in the label files (0, 1, 2, 4 -> four classes)
    spec = dataset.label_spec if dataset.label_spec is not None else LabelSpec.from_values(classes)
    return Plan(
        spatial_dims=spatial_dims,
        in_channels=len(dataset.modality) if isinstance(dataset.modality, tuple) and len(dataset.modality) > 0 else 1,
        num_classes=spec.num_classes,
        class_names=spec.names,
        target_spacing=tuple(round(float(s), 6) for s in spacing),
        normalization="ct" if ct else "zscore",
        patch_size=patch,
        batch_size=batch,
        features=features,
        median_shape=tuple(int(round(s)) for s in shape),
        slice_axis=slice_axis,
        intensity=fingerprint.intensity,
        labels=spec,
    )
