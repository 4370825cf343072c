"""One way to write metric values into every table medseg produces (CSV, JSON, summaries).

Metrics are often not finite: a surface distance is ``inf`` when one mask is empty, a precision
``nan`` when nothing was predicted (see :mod:`medseg.evaluation.metrics`). Standard JSON has no
token for either, so every medseg file spells them as CSV does:

- JSON: NaN becomes the string ``"nan"``, infinities ``"inf"`` and ``"-inf"``; NumPy scalars
  become Python numbers, tuples lists, mapping keys strings. :func:`from_json` undoes it.
- CSV: floats are written at full precision with ``repr`` (``0.5``, ``nan``, ``inf``), which
  ``float()`` reads back; ``None`` is an empty cell.

Example:
    >>> to_json({"hd": float("inf"), "precision": float("nan"), 1: np.float32(0.5)})
    {'hd': 'inf', 'precision': 'nan', '1': 0.5}
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.files import atomic_path

__all__ = ["csv_cell", "from_json", "read_json", "to_json", "write_csv", "write_json"]

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


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``to_json(data)`` to ``path`` atomically (indented, strictly standard JSON)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_json(data), indent=2, allow_nan=False) + "\n")
    return path


def read_json(path: str | os.PathLike) -> Any:
    """The JSON data in ``path`` (non-finite strings left as they are; see :func:`from_json`)."""
    return json.loads(Path(path).read_text())


def csv_cell(value: Any) -> str:
    """One CSV cell: floats at full precision (``nan``, ``inf`` included), ``None`` empty."""
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return repr(float(value))
    return str(value.item() if isinstance(value, np.generic) else value)


def write_csv(path: str | os.PathLike, columns: Sequence[str], records: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``records`` (missing keys as empty cells) under a header of ``columns``, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([csv_cell(record.get(column)) for column in columns] for record in records)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    return path
