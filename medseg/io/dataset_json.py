"""``dataset.json``: reading the MSD and nnU-Net (v1, v2) manifests, and writing nnU-Net v2's.

MSD and nnU-Net v1 write ``labels`` as ``{"0": "background", "1": "tumour"}``, ``modality`` and a
``training`` list. nnU-Net v2 writes ``labels`` as ``{"background": 0, "tumour": 1}`` (a label
named ``ignore`` marks voxels to ignore; a list of values is a *region*, trained with a sigmoid,
with ``regions_class_order``), ``channel_names``, ``numTraining`` and ``file_ending``, and finds the
cases by file name (``imagesTr/CASE_0000<file_ending>``, ``labelsTr/CASE<file_ending>``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from .files import full_suffix
from .json_files import write_json
from .labels import LabelSpec

__all__ = ["DatasetJson", "label_spec_from_json", "read_dataset_json", "write_dataset_json"]


@dataclass(frozen=True)
class DatasetJson:
    """What a ``dataset.json`` declares (``None`` where it says nothing)."""

    modality: tuple[str, ...] | None
    label_spec: LabelSpec | None
    file_ending: str | None
    training: tuple[Mapping[str, Any], ...] | None
    num_training: int | None


def _as_int(value: Any, source: Path, name: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())):
        raise DataError(f"{source}: label {name!r} has value {value!r}; a label value is a whole number.")
    return int(value)


def _entries(raw: Mapping[str, Any], source: Path) -> list[tuple[str, tuple[int, ...], bool]]:
    """``(name, values, written as a list)`` per entry, MSD's and nnU-Net v2's forms alike."""
    entries = []
    for key, value in raw.items():
        if isinstance(value, (list, tuple)):
            if not value:
                raise DataError(f"{source}: label {key!r} lists no values.")
            entries.append((str(key), tuple(_as_int(v, source, key) for v in value), True))
        elif isinstance(value, str) and str(key).lstrip("-").isdigit():  # MSD: {"1": "tumour"}
            entries.append((value, (int(key),), False))
        else:  # nnU-Net v2: {"tumour": 1}
            entries.append((str(key), (_as_int(value, source, key),), False))
    return entries


def _region_spec(entries: list, ignore: int | None, order: Any, source: Path) -> LabelSpec:
    if not isinstance(order, (list, tuple)):
        raise DataError(f"{source}: region-based labels (lists of values) need \"regions_class_order\": one "
                        "label value per region, the value a voxel of that region is written with.")
    regions = [(name, values) for name, values, _ in entries if values != (0,)]
    values = sorted({0, *(v for _, vs in regions for v in vs)})
    names = {0: next((n for n, vs, _ in entries if vs == (0,)), "background")}
    names.update({vs[0]: n for n, vs, as_list in entries if len(vs) == 1 and not as_list and vs[0] != 0})
    return LabelSpec(
        values=tuple(values),
        names=tuple(names.get(v, f"class_{v}") for v in values),
        ignore=ignore,
        regions=tuple(tuple(values.index(v) for v in vs) for _, vs in regions),
        region_names=tuple(n for n, _ in regions),
        regions_class_order=tuple(_as_int(v, source, "regions_class_order") for v in order),
    )


def label_spec_from_json(raw: Any, regions_class_order: Any = None, *, source: Path) -> LabelSpec | None:
    """The :class:`LabelSpec` of a ``labels`` entry (``None`` when empty).

    Raises:
        DataError: naming ``source`` for a malformed entry.
    """
    if raw is None or raw == {}:
        return None
    if not isinstance(raw, Mapping):
        raise DataError(f"{source}: \"labels\" must map values to names (or names to values), got {raw!r}.")
    entries = _entries(raw, source)
    ignores = [vs for n, vs, _ in entries if n.lower() == "ignore"]
    if any(len(vs) != 1 for vs in ignores) or len(ignores) > 1:
        raise DataError(f"{source}: the \"ignore\" label must be one value, got {ignores}.")
    ignore = ignores[0][0] if ignores else None
    entries = [e for e in entries if e[0].lower() != "ignore"]
    try:
        if any(len(vs) > 1 for _, vs, _ in entries):
            return _region_spec(entries, ignore, regions_class_order, source)
        seen: dict[int, str] = {}
        for name, (value,), _ in entries:
            if value in seen:
                raise DataError(f"labels {seen[value]!r} and {name!r} share the value {value}.")
            seen[value] = name
        return LabelSpec.from_values(list(seen), seen, ignore=ignore)
    except DataError as error:
        raise DataError(f"{source}: {error}") from None


def _channels(meta: Mapping[str, Any], source: Path) -> tuple[str, ...] | None:
    channels = meta.get("channel_names") or meta.get("modality")
    if channels is None:
        return None
    if not isinstance(channels, Mapping) or not all(str(k).isdigit() for k in channels):
        raise DataError(f"{source}: \"channel_names\"/\"modality\" must map channel numbers to names "
                        f"({{\"0\": \"T2\", \"1\": \"ADC\"}}), got {channels!r}.")
    keys = sorted(channels, key=int)
    if [int(k) for k in keys] != list(range(len(keys))):
        raise DataError(f"{source}: channels must be numbered 0..{len(keys) - 1}, got {keys}.")
    return tuple(str(channels[k]) for k in keys)


def read_dataset_json(path: str | os.PathLike) -> DatasetJson:
    """Parse a ``dataset.json`` (MSD, nnU-Net v1 or v2).

    Raises:
        DataError: naming the file when it is not JSON or an entry is malformed.
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error}).") from error
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(meta).__name__}.")
    training = meta.get("training")
    if training is not None and (not isinstance(training, list) or not all(
            isinstance(e, dict) and isinstance(e.get("image"), str) and isinstance(e.get("label"), str)
            for e in training)):
        raise DataError(f"{path}: \"training\" must list {{\"image\": ..., \"label\": ...}} entries.")
    ending = meta.get("file_ending")
    if ending is not None and (not isinstance(ending, str) or not ending.startswith(".")):
        raise DataError(f"{path}: \"file_ending\" must be a suffix like \".nii.gz\", got {ending!r}.")
    count = meta.get("numTraining")
    return DatasetJson(
        modality=_channels(meta, path),
        label_spec=label_spec_from_json(meta.get("labels"), meta.get("regions_class_order"), source=path),
        file_ending=ending,
        training=None if training is None else tuple(training),
        num_training=count if isinstance(count, int) and not isinstance(count, bool) else None,
    )


def _labels_json(spec: LabelSpec) -> dict[str, Any]:
    if spec.regions:
        labels: dict[str, Any] = {spec.names[0]: 0}
        for name, region in zip(spec.region_names, spec.regions):
            values = [spec.values[i] for i in region]
            labels[name] = values if len(values) > 1 else values[0]
    else:
        labels = dict(zip(spec.names, spec.values))
    if spec.ignore is not None:
        labels["ignore"] = spec.ignore
    expected = (len(spec.regions) + 1 if spec.regions else len(spec.values)) + (spec.ignore is not None)
    if len(labels) != expected:
        raise DataError(f"label names must be distinct (and no class may be called 'ignore'), got "
                        f"{list(spec.region_names or spec.names)}.")
    return labels


def write_dataset_json(
    data: Any,
    folder: str | os.PathLike,
    *,
    channel_names: Sequence[str] | None = None,
    file_ending: str | None = None,
    num_training: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write an nnU-Net v2 ``dataset.json`` into ``folder`` (atomically).

    Args:
        data: a :class:`~medseg.io.Dataset` (its label spec, modality, case count and file
            ending are used) or a :class:`LabelSpec`.
        folder: the dataset folder.
        channel_names: one name per channel (default: the dataset's modality, else ``MRI``).
        file_ending: the image suffix (default: the dataset's first image's, else ``.nii.gz``).
        num_training: ``numTraining`` (default: the dataset's case count, else 0).
        extra: more entries (``name``, ``description``, ``licence``...).

    Returns:
        The path written.

    Example:
        >>> write_dataset_json(LabelSpec((0, 1, 2, 4)), "Dataset001", channel_names=["T2"])  # doctest: +SKIP
    """
    spec = data if isinstance(data, LabelSpec) else getattr(data, "label_spec", None)
    if spec is None:
        raise DataError(f"{data!r}: its classes are not known yet; pass classes= to the dataset, or the "
                        "plan's LabelSpec (pipeline.plan.label_spec).")
    if not isinstance(data, LabelSpec):
        channel_names = channel_names or getattr(data, "modality", None)
        num_training = len(data) if num_training is None else num_training
        if file_ending is None and getattr(data, "cases", None):
            first = next(iter(data.cases.values())).images[0]
            file_ending = full_suffix(first) if first.is_file() else ".nii.gz"
    meta = {
        "channel_names": {str(i): str(n) for i, n in enumerate(channel_names or ("MRI",))},
        "labels": _labels_json(spec),
        "numTraining": int(num_training or 0),
        "file_ending": file_ending or ".nii.gz",
    }
    if spec.regions:
        meta["regions_class_order"] = list(spec.regions_class_order)
    meta.update(dict(extra or {}))
    path = Path(folder) / "dataset.json"
    return write_json(path, meta)
