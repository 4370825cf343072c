"""One way to write metric values into every table medseg produces (CSV, JSON, summaries).

Metrics are often not finite: a surface distance is ``inf`` when one mask is empty, a precision
``nan`` when nothing was predicted (see :mod:`medseg.evaluation.metrics`). Standard JSON has no
token for either, so every medseg file spells them as CSV does:

- JSON (:mod:`medseg.io.json_files`, re-exported here): NaN becomes the string ``"nan"``, infinities ``"inf"`` and ``"-inf"``; NumPy scalars
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
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.files import atomic_path
from ..io.json_files import from_json, read_json, to_json, write_json

__all__ = ["csv_cell", "from_json", "read_json", "to_json", "write_csv", "write_json"]


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
