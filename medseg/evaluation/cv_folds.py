"""The files folds share when they train in separate processes or machines.

:mod:`medseg.evaluation.cross_validation` trains each fold of a run under a lock, so the folds
of one ``output_dir`` can go to different GPUs or nodes at once (``medseg cv --fold K``):

- ``cv.json`` is written once (:func:`write_once`): the same content whoever writes it first,
  and a process that finds it reads it instead;
- ``locks/fold_<k>.lock`` (:func:`fold_lock`) names the host and pid training fold ``k``;
- :func:`unfinished_message` says which folds a report still waits for, and who trains them;
- :func:`clear_cross_validation` (``--overwrite`` of a whole run) deletes a run only while no
  process trains one of its folds.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import MedsegError
from ..io.locks import LockHeld, OwnerLock, lock_holder
from .tables import to_json

__all__ = ["check_fold_flags", "clear_cross_validation", "fold_lock", "unfinished_message", "write_once"]


def fold_lock(output_dir: Path, fold: int) -> OwnerLock:
    """The lock a process holds while it trains fold ``fold`` of the run in ``output_dir``."""
    return OwnerLock(output_dir / "locks" / f"fold_{fold}.lock", what=f"fold {fold} of {output_dir}")


def write_once(path: Path, record: dict[str, Any]) -> bool:
    """Write ``record`` as JSON to ``path`` unless it exists: whole (a temporary file hard-linked
    into place) and exclusive; ``False`` when another process wrote it first."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(to_json(record), indent=2, allow_nan=False) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: replace, unless someone wrote it meanwhile
        if path.exists():
            return False
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def unfinished_message(output_dir: Path, missing: Sequence[int], folds: int) -> str:
    """Why the report cannot be built yet: each missing fold, and who trains it."""
    states = []
    for fold in missing:
        owner = lock_holder(output_dir / "locks" / f"fold_{fold}.lock")
        states.append(f"fold {fold} is being trained by host {owner.get('host')!r}, pid {owner.get('pid')}"
                      if owner else f"fold {fold} has not finished")
    return (f"{output_dir}: cannot build the report, fold(s) {list(missing)} of {folds} have no "
            f"fold_<k>/metrics.json ({'; '.join(states)}); train them (medseg cv DATA --out {output_dir} "
            f"--fold K, with the settings of the other folds) and build the report again.")


def clear_cross_validation(output_dir: str | os.PathLike[str]) -> None:
    """Delete a cross-validation (``cv.json``, ``fold_*``, ``report``, ``locks``) for a fresh start.

    Refused while a process trains one of its folds (a lock that is not stale, see
    :mod:`medseg.io.locks`): deleting a folder under a running fold would mix two runs. Run it
    once, before starting the fold processes.

    Raises:
        LockHeld: naming the fold and the host and pid of its process.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return
    for lock in sorted((output_dir / "locks").glob("fold_*.lock")):
        owner = lock_holder(lock)
        if owner is not None:
            raise LockHeld(f"{output_dir}: not deleted, {lock.stem.replace('_', ' ')} is being trained by host "
                           f"{owner.get('host')!r}, pid {owner.get('pid')} (lock {lock}); stop it first, or "
                           "overwrite only your own fold with --fold K --overwrite.")
    for path in [output_dir / "cv.json", output_dir / "report", output_dir / "locks", *output_dir.glob("fold_*")]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def check_fold_flags(fold: int | None, report: bool, overwrite: bool) -> None:
    """``--fold``/``--report``/``--overwrite`` combinations that make sense."""
    if report and fold is not None:
        raise MedsegError("--report builds the report of all folds, --fold K trains one: give one of them.")
    if report and overwrite:
        raise MedsegError("--report reads the finished folds, --overwrite would delete them: give one of them.")
