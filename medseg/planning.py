"""Planning: defaults read off the data, like nnU-Net's fingerprint but small and readable.

Target spacing is the median spacing (coarsened when the median image would not fit the compute
budget), the patch covers the median image where the budget allows, classes and channels come
from the data, CT data gets CT normalisation, and mirroring (augmentation and TTA) leaves out the
axes along which the classes keep one order in the labels.

RGB photographs (channels declared ``R, G, B``, as the VOC, Cityscapes, CamVid and COCO readers
declare them) get the natural-image plan: pixels as they are (no resampling, images of any size),
ImageNet channel statistics, the patch from the median image size in pixels (a random crop of
larger images, padding of smaller ones), and scale augmentation (0.5-2x, the literature's range).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .errors import DataError
from .io.datasets import Dataset
from .io.headers import read_header
from .io.labels import LabelSpec
from .label_layout import mirror_axes
from .preprocessing.base import Fingerprint

__all__ = ["Plan", "fingerprint_dataset", "plan_dataset", "plan_topology"]

# Voxels per training batch the default plan aims at, by device: enough context per patch,
# enough steps per minute. Measured on the hippocampus and HC18 data (see README).
_BATCH_VOXELS = {("cpu", 2): 6 * 320 * 224, ("cpu", 3): 4 * 40 * 56 * 40,
                 ("cuda", 2): 12 * 512 * 512, ("cuda", 3): 2 * 128 * 128 * 128}
# Largest median image (voxels) trained at full resolution; larger data is coarsened.
_IMAGE_VOXELS = {("cpu", 2): 192 * 192, ("cpu", 3): 160 ** 3, ("cuda", 2): 1024 * 1024, ("cuda", 3): 320 ** 3}
_MAX_BATCH = {2: 16, 3: 8}
_MIN_EDGE = 4  # smallest bottleneck edge in voxels (nnU-Net's min feature map size)
_MIN_OBJECT_VOXELS = 8  # an instance keeps this many voxels across when the planner coarsens the grid
_MAX_POOLS = {2: 5, 3: 4}  # most downsamplings per axis


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
        pool_kernels: the U-Net's downsampling per stage after the first, one stride per axis
            (``len(features) - 1`` entries); default 2 on every axis (plans saved before it).
        conv_kernels: the convolution kernel per stage, one size per axis (``len(features)``
            entries); default 3 on every axis.
        augmentation: the augmentation preset (:data:`~medseg.sampling.AUGMENTATIONS`), ``"auto"``
            for ``2d``/``3d`` by the network; ``"natural"`` (scaling 0.5-2x) for RGB photographs.
        mirror_axes: the network's axes (0-based) that augmentation and mirroring TTA mirror;
            ``None`` (default): every axis. The planner leaves out an axis along which two classes
            keep one order (the hippocampus' head before its tail, a left organ beside a right
            one): mirroring would show the network layouts no case has.
        task: ``"semantic"``, or ``"instance"`` (:mod:`medseg.instance_tasks`).
        instances: for an instance task, ``{"mode", "target", "labels"}``: how labels became
            instances, what the network learns (``"instances"`` or ``"bordercore"``) and the
            semantic classes; ``None`` otherwise.
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
    pool_kernels: tuple[tuple[int, ...], ...] = field(default_factory=tuple)
    conv_kernels: tuple[tuple[int, ...], ...] = field(default_factory=tuple)
    augmentation: str = "auto"
    task: str = "semantic"
    instances: dict[str, Any] | None = None
    mirror_axes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        stages, dims = len(self.features), self.spatial_dims
        pools = tuple(tuple(int(k) for k in s) for s in self.pool_kernels) or ((2,) * dims,) * (stages - 1)
        convs = tuple(tuple(int(k) for k in s) for s in self.conv_kernels) or ((3,) * dims,) * stages
        if len(pools) != stages - 1 or len(convs) != stages or any(len(k) != dims for k in (*pools, *convs)):
            raise ValueError(
                f"Plan: features {self.features} sets {stages} stages, so pool_kernels needs {stages - 1} and "
                f"conv_kernels {stages} entries of {dims} sizes each; got pool_kernels={pools}, conv_kernels="
                f"{convs}. Replace them together with features (pool_kernels=(), conv_kernels=() gives the "
                "isotropic default).")
        object.__setattr__(self, "pool_kernels", pools)
        object.__setattr__(self, "conv_kernels", convs)
        if self.mirror_axes is not None:
            axes = tuple(sorted({int(a) for a in self.mirror_axes}))
            if any(not 0 <= a < dims for a in axes):
                raise ValueError(f"Plan: mirror_axes {list(self.mirror_axes)} must be axes 0..{dims - 1} of the network, or None.")
            object.__setattr__(self, "mirror_axes", axes)

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
        """The plan as JSON types; ``augmentation``, ``task``, ``instances`` and ``mirror_axes``
        only when not at their defaults, so that the settings digest of runs and cross-validations
        saved before the fields existed is unchanged."""
        data = json.loads(json.dumps(asdict(self)))
        for key, default in (("augmentation", "auto"), ("task", "semantic"), ("instances", None), ("mirror_axes", None)):
            if data.get(key, default) == default:
                data.pop(key, None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        fields["intensity"] = tuple(data.get("intensity", ()))
        if data.get("labels") is not None:
            fields["labels"] = LabelSpec.from_dict(data["labels"])
        return cls(**fields)

    def __str__(self) -> str:
        rows = [f"  {k:<15} {v}" for k, v in asdict(self).items()
                if k not in ("intensity", "labels", "pool_kernels", "conv_kernels", "task", "instances", "mirror_axes")]
        rows.append(f"  {'pool_kernels':<15} {' '.join('x'.join(map(str, k)) for k in self.pool_kernels)}")
        rows.append(f"  {'conv_kernels':<15} {' '.join('x'.join(map(str, k)) for k in self.conv_kernels)}")
        if self.mirror_axes is not None:
            kept = [a for a in range(self.spatial_dims) if a not in self.mirror_axes]
            rows.append(f"  {'mirror_axes':<15} {self.mirror_axes or 'none'} (classes keep one order along axis "
                        f"{', '.join(map(str, kept))})")
        if self.task != "semantic":
            found = self.instances or {}
            rows.append(f"  {'task':<15} {self.task}: {found.get('target')}, instances by {found.get('mode')}")
        spec = self.label_spec
        if spec.ignore is not None or spec.regions or not spec.is_identity:
            rows.append(f"  {'label values':<15} {list(spec.values)}"
                        + (f", ignore {spec.ignore}" if spec.ignore is not None else "")
                        + (f", regions {dict(zip(spec.region_names, spec.regions_class_order))}" if spec.regions else ""))
        return "Plan\n" + "\n".join(rows)


def _case_facts(dataset: Dataset, case: str, intensity: bool) -> dict[str, Any]:
    files = dataset.cases[case]
    facts: dict[str, Any] = {}
    if intensity or dataset.label_spec is None:
        sample = dataset.load(case)
        facts["shape"], facts["spacing"] = sample.geometry.shape, sample.geometry.spacing
        facts["channels"] = int(sample.image.shape[0])
        facts["classes"] = np.unique(sample.label).tolist() if sample.label is not None else [0]
        if intensity and sample.label is not None:
            rng = np.random.default_rng(0)
            foreground = sample.image[:, sample.label > 0]
            take = rng.choice(foreground.shape[1], min(10000, foreground.shape[1]), replace=False)
            facts["foreground"] = foreground[:, take]
    else:
        headers = [read_header(file) for file in files.images]  # one file per channel group
        facts["shape"], facts["spacing"] = headers[0][:2]
        facts["channels"] = sum(h[2] for h in headers)
        facts["classes"] = list(range(dataset.label_spec.num_classes))
    return facts


def fingerprint_dataset(dataset: Dataset, *, workers: int = 4) -> tuple[Fingerprint, list[int]]:
    """Spacings, shapes, classes and (for CT) foreground intensity statistics of a dataset."""
    ct = any(m.upper() == "CT" for m in dataset.modality)
    with ThreadPoolExecutor(workers) as pool:
        facts = list(pool.map(lambda c: _case_facts(dataset, c, ct), dataset.case_ids))
    classes = sorted({c for f in facts for c in f["classes"]})
    counts = [f["channels"] for f in facts]
    if is_natural(dataset, len(facts[0]["shape"])):  # a grey photograph among colour ones is read as RGB
        counts = [3 if count == 1 else count for count in counts]
    channels = _common_channels(dataset, counts)
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
        channels=channels,
    )
    return fingerprint, classes


def _common_channels(dataset: Dataset, counts: Sequence[int]) -> int:
    """The channel count every case has; a :class:`DataError` names a case that differs."""
    common = Counter(counts).most_common(1)[0][0]
    for case, count in zip(dataset.case_ids, counts, strict=True):
        if count != common:
            example = dataset.case_ids[counts.index(common)]
            files = ", ".join(str(f) for f in dataset.cases[case].images)
            raise DataError(
                f"case {case!r} ({files}) has {count} image channel(s), the other cases {common} (e.g. "
                f"{example!r}); every case needs the same channels: fix or remove {case!r}.")
    return int(common)


def plan_topology(
    size: Sequence[float], spacing: Sequence[float], max_pools: int | Sequence[int]
) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Per-axis downsampling and kernels of a U-Net, nnU-Net's rule (``get_pool_and_conv_props``).

    Stage by stage, an axis is halved while its spacing is under twice the finest spacing of the
    axes still large enough to halve (a halved axis doubles its spacing), it stays at least
    ``_MIN_EDGE`` voxels, and it was halved fewer than ``max_pools`` times; a lone axis is halved
    only while it is at least three times ``_MIN_EDGE``. A kernel is 1 along an axis over twice as
    coarse as the finest, else 3, and stays 3 once it is; the bottleneck's is 3 on every axis.

    Args:
        size: the patch (or image) size per axis.
        spacing: its voxel spacing.
        max_pools: the most halvings per axis.

    Returns:
        ``(pool_kernels, conv_kernels)``: one stride tuple per downsampling, one kernel tuple per
        stage (one more).

    Example:
        >>> plan_topology((20, 320, 320), (3.6, 0.6, 0.6), 4)[0]
        ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))
    """
    size, spacing = [float(n) for n in size], [float(s) for s in spacing]
    dims = len(size)
    caps = [int(max_pools)] * dims if isinstance(max_pools, int) else [int(m) for m in max_pools]
    pooled, kernel = [0] * dims, [1] * dims
    pools: list[tuple[int, ...]] = []
    convs: list[tuple[int, ...]] = []
    while True:
        kernel = [3 if k == 3 or sp < 2 * min(spacing) else 1 for k, sp in zip(kernel, spacing, strict=True)]
        convs.append(tuple(kernel))
        large = [a for a in range(dims) if size[a] / 2 >= _MIN_EDGE]
        finest = min((spacing[a] for a in large), default=0.0)
        axes = [a for a in large if spacing[a] < 2 * finest and pooled[a] < caps[a]]
        if not axes or (len(axes) == 1 and size[axes[0]] < 3 * _MIN_EDGE):
            break
        pools.append(tuple(2 if a in axes else 1 for a in range(dims)))
        for a in axes:
            pooled[a], size[a], spacing[a] = pooled[a] + 1, size[a] / 2, spacing[a] * 2
    convs[-1] = (3,) * dims
    return tuple(pools), tuple(convs)


def _strides(pool_kernels: Sequence[Sequence[int]], dims: int) -> list[int]:
    """The total downsampling per axis: the patch must be a multiple of it."""
    return [math.prod(k[a] for k in pool_kernels) for a in range(dims)]


def _patch_size(shape: Sequence[float], budget: int, multiples: Sequence[int]) -> tuple[int, ...]:
    """The median shape rounded up to multiples of the network's strides, shrunk to ``budget``:
    the longest axis (in voxels) first, by its multiple."""
    patch = [max(m, math.ceil(s / m) * m) for s, m in zip(shape, multiples, strict=True)]
    while math.prod(patch) > budget and any(p > m for p, m in zip(patch, multiples, strict=True)):
        axis = max((a for a in range(len(patch)) if patch[a] > multiples[a]), key=lambda a: patch[a])
        patch[axis] -= multiples[axis]
    return tuple(patch)


def _network_plan(
    shape: Sequence[float], spacing: Sequence[float], budget: int
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Patch, pool kernels and conv kernels: the topology of the median image, the patch that
    fits the budget, then the topology again on that patch (never deeper than the first)."""
    dims = len(shape)
    pools, _ = plan_topology(shape, spacing, _MAX_POOLS[dims])
    if not pools:  # tiny images: one downsampling anyway, as the U-Net needs two stages
        pools = ((2,) * dims,)
    patch = _patch_size(shape, budget, _strides(pools, dims))
    per_axis = [int(math.log2(m)) for m in _strides(pools, dims)]
    final, convs = plan_topology(patch, spacing, per_axis)
    if not final:
        final, convs = pools[:1], ((3,) * dims,) * 2
    return patch, final, convs


def _coarsening_limit(dataset: Dataset, spacing: np.ndarray) -> float:
    """How much an instance dataset's grid may be coarsened: the objects (their 10th-percentile
    smallest extent) keep ``_MIN_OBJECT_VOXELS`` voxels across, else instances would vanish or
    merge (nuclei of 10 pixels); no limit for semantic data. Patches then cover part of each image."""
    extents = getattr(dataset, "object_extents", None)
    extents = extents() if extents is not None else np.zeros((0, len(spacing)))
    if not len(extents):
        return math.inf
    smallest = float(np.percentile(extents.min(axis=1), 10))
    return max(1.0, smallest / (_MIN_OBJECT_VOXELS * float(np.max(spacing))))


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
    natural = is_natural(dataset, data_dims)
    spacing = np.asarray(fingerprint.median_spacing)
    shape = np.median(np.asarray(fingerprint.shapes) * np.asarray(fingerprint.spacings), axis=0) / spacing
    if natural:  # photographs: pixels as they are, whatever a file's DPI; crops of the median size
        spacing, shape = np.ones(data_dims), np.median(np.asarray(fingerprint.shapes), axis=0)
    budget = _IMAGE_VOXELS[(kind, data_dims)]
    if np.prod(shape) > budget and not natural:  # too large for this device at full resolution: coarsen evenly
        factor = min((np.prod(shape) / budget) ** (1.0 / data_dims), _coarsening_limit(dataset, spacing))
        spacing, shape = spacing * factor, shape / factor
    slice_axis = None
    if spatial_dims < data_dims:  # the coarsest axis, or the last (z) when isotropic
        slice_axis = int(np.argmax(spacing)) if spacing.max() > 1.5 * spacing.min() else data_dims - 1
    in_plane = shape if slice_axis is None else np.delete(shape, slice_axis)
    in_plane_spacing = spacing if slice_axis is None else np.delete(spacing, slice_axis)
    patch, pool_kernels, conv_kernels = _network_plan(in_plane, in_plane_spacing,
                                                      _BATCH_VOXELS[(kind, spatial_dims)] // 2)
    batch = int(np.clip(_BATCH_VOXELS[(kind, spatial_dims)] // math.prod(patch), 2, _MAX_BATCH[spatial_dims]))
    # nnU-Net's widths on a GPU; half of them on a CPU, where a step must stay under a second
    base, cap = (32, 320 if spatial_dims == 3 else 512) if kind == "cuda" else (16, 256)
    features = tuple(min(base * 2**i, cap) for i in range(len(conv_kernels)))
    ct = any(m.upper() == "CT" for m in dataset.modality)
    # declared classes, else the values found in the label files (0, 1, 2, 4 -> four classes)
    spec = dataset.label_spec if dataset.label_spec is not None else LabelSpec.from_values(classes)
    return Plan(
        spatial_dims=spatial_dims,
        in_channels=fingerprint.channels or max(1, len(dataset.modality)),
        num_classes=spec.num_classes,
        class_names=spec.names,
        target_spacing=tuple(round(float(s), 6) for s in spacing),
        normalization="ct" if ct else "imagenet" if natural else "zscore",
        patch_size=patch,
        batch_size=batch,
        features=features,
        median_shape=tuple(int(round(s)) for s in shape),
        slice_axis=slice_axis,
        intensity=fingerprint.intensity,
        labels=spec,
        pool_kernels=pool_kernels,
        conv_kernels=conv_kernels,
        augmentation="natural" if natural else "auto",
        mirror_axes=mirror_axes(dataset, spec, data_dims, slice_axis),
    )


def is_natural(dataset: Dataset, data_dims: int = 2) -> bool:
    """Whether the data are RGB photographs: 2D, channels declared ``R, G, B`` (the benchmark
    formats declare them; ``--modality R,G,B`` does for any folder)."""
    return data_dims == 2 and tuple(m.upper() for m in dataset.modality) == ("R", "G", "B")
