"""``retrain``: fine-tune the run on its training cases plus every corrected case, and score the
old and the new run on the same held-out cases."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..io import CaseFiles, Dataset, open_dataset
from .state import ReviewState, now

__all__ = ["held_out_dice", "refuse_format_data", "retrain", "reviewed_dataset"]

log = logging.getLogger(__name__)
_RUN_FILES = ("pipeline.json", "model.pt", "checkpoint.pt")


def refuse_format_data(data: str | os.PathLike) -> None:
    """Refuse a benchmark-format dataset (VOC, Cityscapes, CamVid, COCO) as the review's data:
    its labels decode through the format, which the corrected cases (plain label files) lack."""
    from ..io.formats import detect_format

    name = detect_format(data) if Path(data).is_dir() else None
    if name is not None:
        raise DataError(f"--data {data}: a {name} folder; `medseg review` (init, retrain) works on plain "
                        f"datasets only (MSD, images/ + labels/), as corrections are plain label files and "
                        f"{name} labels decode through the format. Review a run trained on a plain folder.")


def reviewed_dataset(state: ReviewState) -> Dataset:
    """The run's training data with every corrected case added (its scan and final label)."""
    if state.data is None:
        raise DataError(f"{state.folder}: the review does not know the run's training data; run "
                        f"`medseg review init RUN UNLABELED --out {state.folder} --data DATA` once.")
    refuse_format_data(state.data)
    base = open_dataset(state.data)
    missing = [c for c in [*state.train, *state.held_out] if c not in base.cases]
    if missing:
        raise DataError(f"{state.data}: has no cases {missing[:5]} that the run trained or holds out; is this "
                        "the run's dataset?")
    cases = {c: base.cases[c] for c in dict.fromkeys([*state.train, *state.held_out])}
    for case, done in state.corrections.items():
        cases[case] = CaseFiles(tuple(Path(p) for p in state.cases[case]["images"]), state.path(done["final"]))
    return Dataset(cases, modality=base.modality if base.channels is not None else None, groups=base.groups,
                   root=base.root, label_spec=base.label_spec)


def held_out_dice(pipe: Any, case_ids: list[str]) -> float:
    """Mean over cases of the mean Dice over the scored classes, on each case's own grid."""
    scores = pipe.evaluate(case_ids)
    return float(np.mean([np.nanmean([s["dice"] for s in per.values()]) for per in scores.values()]))


def _claim(out: Path, run: Path, overwrite: bool) -> None:
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents:
        raise ValueError(f"--out {out}: retraining never writes into the run {run}; choose another folder.")
    existing = [name for name in _RUN_FILES if (out / name).is_file()]
    if existing and not overwrite:
        raise ValueError(f"--out {out} already holds a run ({', '.join(existing)}); choose another folder "
                         "or pass --overwrite.")
    for name in existing:
        (out / name).unlink()


def retrain(
    review: str | os.PathLike,
    out: str | os.PathLike,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    time_limit: float | None = None,
    overwrite: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """Fine-tune the review's run, from its weights and with its saved settings, on its training
    cases plus every corrected case; write the new run to ``out``; score both on the held-out cases.

    The run's folder is only read. A cross-validation run fine-tunes its first fold's network.

    Args:
        review: the review folder.
        out: the new run folder.
        steps: optimiser steps in all (one epoch of ``steps``), instead of the saved epochs.
        epochs: replaces the saved number of epochs.
        time_limit: seconds; the schedule ends when they are spent.
        overwrite: replace a run already in ``out``.
        device: where to train.

    Returns:
        ``{"run", "run2", "held_out", "dice_run", "dice_run2", "trained_on", "corrected"}``.
    """
    from ..pipeline import Pipeline

    state = ReviewState.load(review)
    if not state.held_out:
        raise DataError(f"{state.folder}: no held-out cases to score on (the run held none out); start the review "
                        "with `medseg review init ... --held-out N` (or a list of case ids).")
    out, run = Path(out), Path(state.run)
    _claim(out, run, overwrite)
    data = reviewed_dataset(state)
    pipe = Pipeline.load(run, data, device=device)
    pipe.ensemble = []  # a fold ensemble: its first fold is fine-tuned
    train_ids = list(dict.fromkeys([*state.train, *sorted(state.corrections)]))
    if steps is not None:
        epochs, iterations = 1, steps
    else:
        iterations = None
    pipe.fit(train_ids, None, epochs=epochs, iterations_per_epoch=iterations, time_limit=time_limit,
             output_dir=out)
    before = Pipeline.load(run, data, device=device)
    result = {"run": str(run), "run2": str(out.resolve()), "held_out": len(state.held_out),
              "dice_run": held_out_dice(before, state.held_out), "dice_run2": held_out_dice(pipe, state.held_out),
              "trained_on": len(train_ids), "corrected": len(state.corrections), "at": now()}
    state.rounds.append(result)
    state.save()
    return result
