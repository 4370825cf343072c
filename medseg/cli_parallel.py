"""The command line over many processes: ``medseg cv --fold K`` / ``--report``, and ``medseg
predict`` sharded by torchrun's ``RANK``/``WORLD_SIZE`` or by ``--part K --parts N``.

``--overwrite`` with parallel folds: ``medseg cv --fold K --overwrite`` retrains fold K from
scratch under its lock and touches nothing else (``cv.json``, other folds and the report stay),
so every process of a fold array may pass it. ``medseg cv --overwrite`` without ``--fold``
deletes the whole run, and is refused while a process trains one of its folds; run it once,
before the fold processes. ``--report --overwrite`` is refused (it would delete the folds).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .errors import MedsegError

__all__ = ["predict_device", "predict_part", "run_cv"]


def run_cv(pipe: Any, out: Path, args: argparse.Namespace) -> int:
    """``medseg cv`` after its pipeline is built: all folds and the report, one fold, or the report."""
    from .evaluation.cross_validation import (
        cross_validate,
        cross_validate_fold,
        cross_validation_report,
    )
    from .evaluation.cv_folds import check_fold_flags, clear_cross_validation
    from .evaluation.plots import label_title
    from .io.files import remove_stale_temporaries
    from .training.distributed import world_from_env

    if world_from_env().distributed:  # every rank would take the same fold's lock and wait for the others
        raise MedsegError("medseg cv under torchrun (RANK/WORLD_SIZE set): cross-validation runs one fold per "
                          "process; start one plain process per fold with `medseg cv ... --fold K` instead "
                          "(README \"Scaling out\").")
    check_fold_flags(args.fold, args.report, args.overwrite)
    seed = pipe.training.seed
    if args.report:
        summary = cross_validation_report(pipe, output_dir=out)
    elif args.fold is not None:  # other folds may run now, elsewhere: touch only this fold (under its lock)
        summary = cross_validate_fold(pipe, args.fold, args.folds, output_dir=out, seed=seed, resume=not args.overwrite)
    else:
        if args.overwrite:
            clear_cross_validation(out)
        remove_stale_temporaries(out)
        remove_stale_temporaries(pipe.preprocessed_cases().root)
        summary = cross_validate(pipe, folds=args.folds, output_dir=out, seed=seed)
    names = pipe.instance_spec.scored  # the summary is keyed by dataset value (or region); instances: the K classes
    for label, dice in summary["mean_dice"].items():
        print(f"  mean Dice {label_title(label, names)}: {dice:.4f}")
    print(f"report: {summary['report']}" if "report" in summary else f"fold {args.fold}: {summary['output_dir']}")
    return 0


def predict_part(args: argparse.Namespace) -> tuple[int, int] | None:
    """``(k, n)``: this process predicts part k of n (every n-th sorted case from k), from
    ``--part/--parts`` and torchrun's ranks (each machine's part split again over its ranks);
    ``None`` for one process predicting everything."""
    from .training.distributed import world_from_env

    if (args.part is None) != (args.parts is None):
        raise ValueError(f"--part {args.part} --parts {args.parts}: give both (e.g. --part 0 --parts 4 on the "
                         "first of four machines), or neither.")
    part, parts = (0, 1) if args.parts is None else (args.part, args.parts)
    if parts < 1 or not 0 <= part < parts:
        raise ValueError(f"--part {part} --parts {parts}: --parts must be >= 1 and --part one of 0..{parts - 1}.")
    world = world_from_env()
    index, count = part * world.size + world.rank, parts * world.size
    return None if count == 1 else (index, count)


def predict_device(device: str | None) -> str | None:
    """Under torchrun on GPUs each rank takes its own (``cuda:LOCAL_RANK``); else ``device``."""
    import torch

    from .training.distributed import world_from_env

    world = world_from_env()
    wants_cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    return f"cuda:{world.local_rank}" if world.distributed and wants_cuda else device
