"""The one JSON encoding of medseg's files: standard JSON, with non-finite numbers spelled out.

Metrics are often not finite: a surface distance is ``inf`` when one mask is empty, a precision
``nan`` when nothing was predicted. Standard JSON has no token for either, so every medseg file
spells them as CSV does: NaN becomes the string ``"nan"``, infinities ``"inf"`` and ``"-inf"``;
NumPy scalars and arrays become Python numbers and lists, tuples lists, mapping keys strings,
paths strings. :func:`from_json` undoes it. Every JSON file medseg writes goes through
:func:`write_json` (atomic: a failed write leaves the earlier file).

Example:
    >>> to_json({"hd": float("inf"), "precision": float("nan"), 1: np.float32(0.5)})
    {'hd': 'inf', 'precision': 'nan', '1': 0.5}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_path

__all__ = ["from_json", "read_json", "to_json", "write_json"]

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def to_json(value: Any) -> Any:
    """``value`` as standard JSON data: NaN -> ``"nan"``, +-inf -> ``"inf"``/``"-inf"``."""
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def from_json(record: Mapping[str, Any], keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Undo :func:`to_json` on the values of ``keys`` of one record (all keys when ``None``)."""
    return {
        key: _NON_FINITE[value]
        if isinstance(value, str) and value in _NON_FINITE and (keys is None or key in keys)
        else value
        for key, value in record.items()
    }


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> Path:
    """Write ``to_json(data)`` to ``path`` atomically (strictly standard JSON; ``indent=None``
    writes it compact, for large files)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_json(data), indent=indent, allow_nan=False) + "\n", encoding="utf-8")
    return path


def read_json(path: str | os.PathLike) -> Any:
    """The JSON data in ``path`` (non-finite strings left as they are; see :func:`from_json`)."""
    return json.loads(Path(path).read_text())
