"""``init``, ``next`` and ``ingest``: propose, rank, and take corrections back."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, MedsegError
from ..inference.postprocess import to_label_values
from ..io import Sample, find_images, load_image, read_image_file, write_label_file
from ..io.cases import files_per_case
from ..preprocessing import preprocess
from .corrections import case_of, check_grid, check_values, read_correction, region_dice
from .retrain import refuse_format_data
from .state import ReviewState, now
from .uncertainty import case_uncertainty
from .viewers import itksnap_command, slicer_command

__all__ = ["ingest", "init", "next_cases"]

log = logging.getLogger(__name__)


def _load_run(run: str | os.PathLike, device: str | None = None):
    from ..pipeline import Pipeline

    pipe = Pipeline.load(run, device=device)
    if pipe.is_instance:  # proposals, uncertainty and retrain scores are per class, not per object
        raise MedsegError(f"{run}: an instance run (task 'instance'); `medseg review` corrects semantic runs only. "
                          "Correct its instance maps in a viewer and train again with the corrected labels.")
    return pipe


def init(
    run: str | os.PathLike,
    unlabeled: str | os.PathLike,
    out: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    held_out: Sequence[str] | int | None = None,
    score: bool = True,
    device: str | None = None,
) -> ReviewState:
    """Predict every unlabelled scan not yet corrected, score its uncertainty, rank the queue.

    Writes ``out/labels/original/CASE<suffix>`` (the proposal, in the scan's format and exact
    geometry; never edited), ``out/queue.csv`` (most uncertain first) and ``out/review.json``.
    Run again on the same ``out`` (e.g. with the retrained run) to re-rank what is left.

    Args:
        run: a run folder (``medseg train``) or a cross-validation folder (a fold ensemble).
        unlabeled: a folder (or file) of scans without labels.
        out: the review folder.
        data: the run's training dataset, which ``retrain`` trains on again (kept from an
            earlier ``init`` of ``out`` when not given).
        held_out: the cases ``retrain`` scores on (default: the run's validation split); fixed
            once chosen. A number ``N`` takes the last ``N`` cases of ``data`` (sorted by id)
            that the run did not train on.
        score: ``False`` skips the uncertainty (one forward pass per case, queue in id order).
        device: where the network runs.
    """
    out, pipe = Path(out), _load_run(run, device)
    if isinstance(held_out, int):
        held_out = _last_cases(held_out, data, pipe)
    state = _state_for(out, pipe, run=run, unlabeled=unlabeled, data=data, held_out=held_out)
    if state.data is not None:
        refuse_format_data(state.data)  # before predicting anything
    found = find_images(unlabeled, channels=files_per_case(unlabeled, pipe.plan.in_channels))
    clash = sorted(set(found) & set(state.train + state.held_out))
    if clash:
        raise DataError(f"{unlabeled}: cases {clash[:5]} are training or held-out cases of the run; remove them "
                        "from the unlabelled folder.")
    for case, files in found.items():
        if case in state.corrections:
            continue
        image, geometry = load_image(files)
        prepared = preprocess(Sample(case, image, geometry), pipe.preprocessing)
        if score:
            probabilities, uncertainty, state.method = case_uncertainty(pipe, prepared.image)
        else:
            probabilities, uncertainty, state.method = pipe.predict_probabilities(prepared.image), None, "none"
        labels = to_label_values(probabilities, pipe.plan.label_spec, prepared=prepared,
                                 largest_component=pipe.inference.largest_component or False)
        written = pipe.write_prediction(labels, geometry, out / "labels" / "original", case=case, like=files[0])
        state.cases[case] = {"images": [str(Path(f).resolve()) for f in files],
                             "proposal": str(written.relative_to(out)), "uncertainty": uncertainty,
                             "proposed_by": str(Path(run).resolve())}
        log.info("%s: uncertainty %s", case, uncertainty)
    state.save()
    return state


def _last_cases(n: int, data: str | os.PathLike | None, pipe: Any) -> list[str]:
    """The last ``n`` cases of ``data`` by id that the run did not train on."""
    from ..io import open_dataset

    if data is None:
        raise ValueError(f"held_out={n}: choosing held-out cases by number needs the run's data (--data DATA).")
    trained = set((getattr(pipe, "split", {}) or {}).get("train") or [])
    left = sorted(c for c in open_dataset(data).case_ids if c not in trained)
    if n < 1 or n > len(left):
        raise ValueError(f"held_out={n}: give 1..{len(left)} (the cases of {data} the run did not train on).")
    return left[-n:]


def _state_for(out: Path, pipe: Any, *, run: str | os.PathLike, unlabeled: str | os.PathLike,
               data: str | os.PathLike | None, held_out: Sequence[str] | None) -> ReviewState:
    """The review in ``out`` (its data and held-out cases kept), or a new one."""
    if (out / "review.json").is_file():
        state = ReviewState.load(out)
        if held_out is not None and list(held_out) != state.held_out:
            raise ValueError(f"held_out: {out} scores on {len(state.held_out)} fixed held-out cases "
                             f"(e.g. {state.held_out[:3]}); leave it out, or start a review in another folder.")
        state.run, state.unlabeled = str(Path(run).resolve()), str(Path(unlabeled).resolve())
        state.data = str(Path(data).resolve()) if data is not None else state.data
        return state
    split = getattr(pipe, "split", {}) or {}
    return ReviewState(folder=out, run=str(Path(run).resolve()), unlabeled=str(Path(unlabeled).resolve()),
                       data=None if data is None else str(Path(data).resolve()),
                       train=list(split.get("train") or []),
                       held_out=list(held_out if held_out is not None else split.get("val") or []))


def next_cases(review: str | os.PathLike, n: int = 5) -> list[dict[str, Any]]:
    """The ``n`` most uncertain cases still to correct, each with the commands that open scan and
    proposal in 3D Slicer and ITK-SNAP, and where to save the correction."""
    if n < 1:
        raise ValueError(f"n={n}: ask for at least one case.")
    state = ReviewState.load(review)
    rows = []
    for rank, case in enumerate(state.pending()[:n], start=1):
        entry = state.cases[case]
        proposal = state.path(entry["proposal"]).resolve()
        rows.append({"rank": rank, "case": case, "uncertainty": entry.get("uncertainty"),
                     "image": entry["images"][0], "proposal": str(proposal),
                     "slicer": slicer_command(entry["images"], proposal),
                     "itksnap": itksnap_command(entry["images"], proposal),
                     "save_as": str((state.folder / "corrected" / f"{case}.seg.nrrd").resolve())})
    return rows


def format_next(rows: list[dict[str, Any]], review: str | os.PathLike) -> str:
    """What ``medseg review next`` prints."""
    if not rows:
        return f"{review}: every case is corrected; `medseg review retrain {review} --out RUN2` retrains.\n"
    lines = []
    for row in rows:
        score = "" if row["uncertainty"] is None else f"  uncertainty {row['uncertainty']:.4f}"
        lines += [f"#{row['rank']} {row['case']}{score}",
                  f"  3D Slicer: {row['slicer']}",
                  f"  ITK-SNAP:  {row['itksnap']}",
                  f"  save the corrected segmentation as {row['save_as']} (or .nii.gz / .nrrd), then",
                  f"  medseg review ingest {review} {row['save_as']}"]
    return "\n".join(lines) + "\n"


def ingest(review: str | os.PathLike, files: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Check corrected label files against their scans and store the accepted ones.

    Each file is matched to its case by name, read (NIfTI, NRRD, 3D Slicer ``.seg.nrrd``), and
    refused unless it lies on its scan's grid (shape, spacing, direction, origin) and holds only
    the run's label values. An accepted file is written (in dataset values, on the scan's exact
    geometry) to ``labels/final/`` atomically, with the Dice between proposal and correction and
    the time of ingest in ``review.json`` and ``queue.csv``.

    Returns:
        One record per accepted file.

    Raises:
        DataError: listing every refused file with its reason (the accepted ones are stored).
    """
    state = ReviewState.load(review)
    spec = _load_run(state.run, "cpu").plan.label_spec
    accepted, refused = [], []
    for file in map(Path, files):
        try:
            accepted.append(_ingest_one(state, file, spec))
        except DataError as error:
            refused.append(f"{file}: {str(error).removeprefix(f'{file}: ')}")
        state.save()
    if refused:
        raise DataError(f"refused {len(refused)} of {len(files)} file(s) ({len(accepted)} accepted): "
                        + " | ".join(refused))
    return accepted


def _ingest_one(state: ReviewState, file: Path, spec: Any) -> dict[str, Any]:
    case = case_of(file, state.cases)
    entry = state.cases[case]
    values, geometry = read_correction(file, spec)
    _, scan = load_image([Path(p) for p in entry["images"]])
    reason = check_grid(geometry, scan) or check_values(values, spec)
    if reason:
        raise DataError(f"{file}: refused for case {case!r}: {reason}")
    proposal_path = state.path(entry["proposal"])
    final = write_label_file(values, scan, state.folder / "labels" / "final" / proposal_path.name)
    proposal = read_image_file(proposal_path)[0][0]
    per_class = region_dice(proposal, values, spec)
    record = {"case": case, "source": str(file.resolve()), "final": str(final.relative_to(state.folder)),
              "proposal_dice": float(np.mean(list(per_class.values()))) if per_class else 1.0,
              "dice_per_class": {str(k): v for k, v in per_class.items()}, "ingested_at": now()}
    state.corrections[case] = {k: v for k, v in record.items() if k != "case"}
    log.info("%s: accepted (Dice proposal vs correction %.4f)", case, record["proposal_dice"])
    return record
