"""The command line's instance segmentation: ``--task instance`` on ``train``/``cv``/``evaluate``
(``--instances MODE``), the scores ``train`` prints, and ``medseg evaluate --task instance``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["add_evaluate_flags", "add_task_flags", "evaluate", "print_validation", "task_options"]

_MODES = ("auto", "map", "components")
_SHOWN = ("match_accuracy", "match_precision", "match_recall", "match_f1", "panoptic_quality", "instance_dice")


def add_task_flags(parser: argparse.ArgumentParser) -> None:
    """``--task`` and ``--instances`` (train, cv and evaluate)."""
    parser.add_argument("--task", choices=("semantic", "instance"), default=None,
                        help="instance: one label per object (--architecture maskrcnn or bordercore)")
    parser.add_argument("--instances", choices=_MODES, default=None,
                        help="how labels become instances: map (instance ids, classes from <label>.json/.csv), "
                             "components (each connected component of a class), auto (default)")


def add_evaluate_flags(parser: argparse.ArgumentParser, semantic: Callable[[argparse.Namespace], int]) -> None:
    """``medseg evaluate``'s ``--task instance`` (and ``--instances`` for the references): the
    handler is :func:`evaluate` for instances, ``semantic`` otherwise."""
    add_task_flags(parser)
    parser.set_defaults(func=lambda args: evaluate(args) if args.task == "instance" else semantic(args))


def task_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Pipeline arguments ``--task``/``--instances`` ask for."""
    options = {"task": getattr(args, "task", None), "instances": getattr(args, "instances", None)}
    return {key: value for key, value in options.items() if value is not None}


def task_data(data: Any, args: argparse.Namespace) -> Any:
    """``data`` as ``--task``/``--instances`` read it: the instance view for ``--task instance``."""
    if getattr(args, "task", None) != "instance":
        return data
    from .io.instances import as_instances

    return as_instances(data, mode=args.instances or "auto")


def print_validation(pipe: Any, print_dice: Callable[[dict, Any], None]) -> None:
    """What ``medseg train`` prints for its validation cases: Dice per class, or the instance scores."""
    if not pipe.is_instance:
        print_dice(pipe.evaluate(), pipe.plan.label_spec.scored)
        return
    scores = pipe.evaluate()
    for name in _SHOWN:
        values = [case[name] for case in scores.values() if np.isfinite(case[name])]  # NaN: nothing to count
        print(f"  {name:<18} {np.mean(values) if values else float('nan'):.4f} over {len(values)} cases")


def evaluate(args: argparse.Namespace) -> int:
    """``medseg evaluate PRED REF --task instance``: instance maps scored against references."""
    from .evaluation.instance_folders import evaluate_instances

    ignored = [flag for flag, value in (("--run", args.run), ("--labels", args.labels)) if value is not None]
    if ignored:
        raise ValueError(f"{' and '.join(ignored)}: not used by --task instance (the references' classes and "
                         "--instances say which labels are instances); leave them out.")
    missing = "empty" if args.allow_missing else "skip" if args.predicted_only else "error"
    result = evaluate_instances(args.predictions, args.references, mode=args.instances or "auto", output=args.out,
                                missing=missing)
    summary = result.get("summary", {})
    print(f"{len(result.get('cases', []))} cases, instances by {result.get('mode')}")
    for name, value in _flat({key: value for key, value in summary.items() if key != "pooled"}):
        print(f"  {name:<32} {value:.4f}")
    if args.out:
        print(f"wrote {args.out}/instances.csv and instances.json")
    return 0


def _flat(summary: Any, prefix: str = "") -> list[tuple[str, float]]:
    """The numbers of a (nested) summary, with dotted names."""
    if isinstance(summary, dict):
        return [item for key, value in summary.items() for item in _flat(value, f"{prefix}{key}.")]
    if isinstance(summary, (int, float)) and not isinstance(summary, bool):
        return [(prefix.rstrip("."), float(summary))]
    return []
