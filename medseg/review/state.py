"""A review folder's state: ``review.json`` (which run, data and held-out cases; each case's
proposal and correction; the retraining rounds) and the ranked ``queue.csv``."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..io import atomic_path
from ..io.json_files import write_json

__all__ = ["FORMAT", "ReviewState", "now"]

FORMAT = "medseg-review/1"
QUEUE_COLUMNS = ("rank", "case", "uncertainty", "method", "status", "proposal_dice", "ingested_at", "image",
                 "proposal")


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class ReviewState:
    """What ``review.json`` holds (JSON only, never pickle).

    Args:
        folder: the review folder.
        run: the run whose proposals are in ``labels/original/`` (the latest ``init``).
        unlabeled: the folder of unlabelled scans.
        data: the run's training dataset (needed by ``retrain``), or ``None``.
        train: the run's training cases.
        held_out: the fixed cases ``retrain`` scores both runs on.
        method: how uncertainty was scored (``entropy-tta``, ``fold-disagreement`` or ``none``).
        cases: ``{case: {"images": [...], "proposal": path, "uncertainty": float, "proposed_by": run}}``.
        corrections: ``{case: {"source", "final", "proposal_dice", "dice_per_class", "ingested_at"}}``.
        rounds: one record per ``retrain``.
    """

    folder: Path
    run: str
    unlabeled: str
    data: str | None = None
    train: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)
    method: str = "entropy-tta"
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    corrections: dict[str, dict[str, Any]] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ReviewState:
        """Read ``folder/review.json``.

        Raises:
            DataError: naming the folder when it is no review folder.
        """
        folder = Path(folder)
        path = folder / "review.json"
        if not path.is_file():
            raise DataError(f"{folder}: no review.json; create the review with `medseg review init RUN UNLABELED "
                            f"--out {folder}`.")
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT:
            raise DataError(f"{path}: format {raw.get('format')!r} is not {FORMAT!r}; recreate it with "
                            "`medseg review init`.")
        raw.pop("format")
        return cls(folder=folder, **raw)

    def save(self) -> None:
        """Write ``review.json`` and ``queue.csv`` atomically."""
        data = {"format": FORMAT, **{k: v for k, v in asdict(self).items() if k != "folder"}}
        write_json(self.folder / "review.json", data)
        with atomic_path(self.folder / "queue.csv") as tmp:
            tmp.write_text(self.queue_text())

    def path(self, relative: str) -> Path:
        """A path stored relative to the review folder."""
        return self.folder / relative

    def pending(self) -> list[str]:
        """Cases without a correction, most uncertain first (ties: by case id)."""
        left = [c for c in self.cases if c not in self.corrections]
        return sorted(left, key=lambda c: (-float(self.cases[c].get("uncertainty") or 0.0), c))

    def queue_rows(self) -> list[dict[str, Any]]:
        """The rows of ``queue.csv``: pending cases ranked, then the corrected ones."""
        rows = []
        for rank, case in enumerate(self.pending(), start=1):
            rows.append(self._row(case, rank, "pending"))
        rows += [self._row(case, "", "corrected") for case in sorted(self.corrections) if case in self.cases]
        return rows

    def _row(self, case: str, rank: int | str, status: str) -> dict[str, Any]:
        entry, done = self.cases[case], self.corrections.get(case, {})
        score = entry.get("uncertainty")
        return {"rank": rank, "case": case, "uncertainty": "" if score is None else f"{score:.6f}",
                "method": self.method, "status": status,
                "proposal_dice": "" if "proposal_dice" not in done else f"{done['proposal_dice']:.4f}",
                "ingested_at": done.get("ingested_at", ""), "image": entry["images"][0],
                "proposal": str(self.path(entry["proposal"]))}

    def queue_text(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=QUEUE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.queue_rows())
        return buffer.getvalue()
