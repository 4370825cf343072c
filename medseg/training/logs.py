"""What a training run leaves beside its checkpoint: ``log.csv``, ``model_best.pt`` and, when
TensorBoard is installed (``pip install medseg[tensorboard]``), its scalars."""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

from torch import nn

from ..io.files import atomic_path
from .checkpoint import save_checkpoint

__all__ = ["LOG_COLUMNS", "RunLog"]

log = logging.getLogger(__name__)

LOG_COLUMNS = ("epoch", "loss", "val_dice", "lr", "seconds", "nonfinite_steps")
"""The columns of ``log.csv``, one row per epoch, taken from the history records."""


class RunLog:
    """Writes a run folder's logs after every epoch.

    ``log.csv`` is rewritten from the whole history (atomically, so it always matches the
    checkpoint, resumed runs included); ``model_best.pt`` holds ``{"model", "epoch",
    "val_dice"}`` of the epoch with the best validation Dice so far, written when it improves;
    TensorBoard gets ``train/loss``, ``train/lr`` and ``val/dice`` per epoch under
    ``tensorboard/``.

    Args:
        folder: the run folder.
        history: the records of the epochs already done (a resumed run's).
    """

    def __init__(self, folder: str | Path, history: list[dict[str, Any]]) -> None:
        self.folder = Path(folder)
        scores = [h["val_dice"] for h in history if math.isfinite(h.get("val_dice", math.nan))]
        self.best = max(scores, default=-math.inf)
        self.writer = _summary_writer(self.folder / "tensorboard", purge_step=len(history) + 1)

    def epoch_done(self, history: list[dict[str, Any]], network: nn.Module) -> None:
        """Log the last record of ``history``; ``network`` holds that epoch's weights."""
        record = history[-1]
        if record.get("val_dice", -math.inf) > self.best:  # NaN never improves
            self.best = record["val_dice"]
            save_checkpoint({"model": network.state_dict(), "epoch": record["epoch"],
                             "val_dice": record["val_dice"]}, self.folder / "model_best.pt")
        self.write_csv(history)
        if self.writer is not None:
            step = record["epoch"]
            self.writer.add_scalar("train/loss", record["loss"], step)
            self.writer.add_scalar("train/lr", record["lr"], step)
            if "val_dice" in record:
                self.writer.add_scalar("val/dice", record["val_dice"], step)
            self.writer.flush()

    def write_csv(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``log.csv`` from ``history`` (a missing value is an empty cell)."""
        text = io.StringIO()
        writer = csv.DictWriter(text, LOG_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        with atomic_path(self.folder / "log.csv") as tmp:
            tmp.write_text(text.getvalue())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _summary_writer(folder: Path, purge_step: int) -> Any:
    """A TensorBoard writer, or ``None`` when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.debug("TensorBoard is not installed (pip install medseg[tensorboard]); log.csv only.")
        return None
    # a resumed run drops the events a killed run wrote after its last checkpoint
    return SummaryWriter(str(folder), purge_step=purge_step)
