"""``medseg review init|next|ingest|retrain``: the correction loop on the command line, a thin
layer over :mod:`medseg.review`."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser"]


def _held_out(text: str) -> int | list[str]:
    """``--held-out 10`` (a number of cases) or ``--held-out a,b,c`` (case ids)."""
    if text.strip().isdigit():
        return int(text)
    ids = [t.strip() for t in text.split(",") if t.strip()]
    if not ids:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of cases or case ids, e.g. 10 or case_1,case_2")
    return ids


def _init(args: argparse.Namespace) -> int:
    from .review import init

    state = init(args.run, args.unlabeled, args.out, data=args.data, held_out=args.held_out, device=args.device)
    pending = state.pending()
    print(f"{len(state.cases)} case(s) proposed in {args.out}/labels/original; {len(pending)} to correct, ranked "
          f"by {state.method} in {args.out}/queue.csv")
    for rank, case in enumerate(pending[:5], start=1):
        print(f"  #{rank} {case}  uncertainty {state.cases[case]['uncertainty']:.4f}")
    print(f"next: medseg review next {args.out}")
    return 0


def _next(args: argparse.Namespace) -> int:
    from .review import format_next, next_cases

    print(format_next(next_cases(args.review, n=args.n), args.review), end="")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from .review import ingest

    for record in ingest(args.review, args.files):
        print(f"accepted {record['case']}: {record['final']} (Dice proposal vs correction "
              f"{record['proposal_dice']:.4f}, {record['ingested_at']})")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from .review import retrain

    result = retrain(args.review, args.out, steps=args.steps, epochs=args.epochs, time_limit=args.time_limit,
                     overwrite=args.overwrite, device=args.device)
    print(f"trained on {result['trained_on']} cases ({result['corrected']} corrected); held-out Dice on "
          f"{result['held_out']} cases:")
    print(f"  RUN  {result['run']}: {result['dice_run']:.4f}")
    print(f"  RUN2 {result['run2']}: {result['dice_run2']:.4f}")
    print(f"re-rank what is left: medseg review init {result['run2']} UNLABELED --out {args.review}", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``medseg review`` and its four steps on the main parser's subcommands."""
    review = sub.add_parser("review", help="correct the least certain predictions in a viewer and retrain")
    steps = review.add_subparsers(dest="step", required=True)
    init = steps.add_parser("init", help="predict unlabelled scans and rank them by uncertainty")
    init.add_argument("run", help="a run (medseg train) or cross-validation (medseg cv) folder")
    init.add_argument("unlabeled", help="a folder of scans without labels")
    init.add_argument("--out", required=True, help="the review folder")
    init.add_argument("--data", default=None, help="the run's training data (needed by retrain)")
    init.add_argument("--held-out", type=_held_out, default=None,
                      help="cases retrain scores on: N, or case ids a,b,c (default: the run's validation split)")
    init.add_argument("--device", default=None)
    init.set_defaults(func=_init)
    nxt = steps.add_parser("next", help="print the next cases with 3D Slicer and ITK-SNAP command lines")
    nxt.add_argument("review")
    nxt.add_argument("--n", type=int, default=5)
    nxt.set_defaults(func=_next)
    ingest = steps.add_parser("ingest", help="check corrected label files against their scans and keep them")
    ingest.add_argument("review")
    ingest.add_argument("files", nargs="+", help="NIfTI, NRRD or 3D Slicer .seg.nrrd files named after their case")
    ingest.set_defaults(func=_ingest)
    retrain = steps.add_parser("retrain", help="fine-tune the run on its data plus the corrections; score both")
    retrain.add_argument("review")
    retrain.add_argument("--out", required=True, help="the new run folder (the old run is never written)")
    retrain.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the saved epochs)")
    retrain.add_argument("--epochs", type=int, default=None)
    retrain.add_argument("--time-limit", type=float, default=None, help="seconds of training")
    retrain.add_argument("--overwrite", action="store_true", help="replace a run in --out")
    retrain.add_argument("--device", default=None)
    retrain.set_defaults(func=_retrain)
