"""``medseg export RUN --format onnx|torchscript --out DIR``: parser and handler."""

from __future__ import annotations

import argparse

__all__ = ["DEFAULT_FORMAT", "add_parser"]

DEFAULT_FORMAT = "onnx"
"""The format ``medseg export`` writes unless told (see bench/bench_export.py)."""


def _export(args: argparse.Namespace) -> int:
    from .export import export_run

    out = export_run(args.run, args.out, format=args.format)
    print(f"exported {args.run} as {args.format} to {out}; predict with: medseg predict {out} INPUT --out PRED")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``medseg export`` on the CLI's subcommands."""
    export = sub.add_parser("export", help="export a trained run as ONNX or TorchScript, with its settings")
    export.add_argument("run", help="a run folder from `medseg train` (or `medseg cv`: every fold is exported)")
    export.add_argument("--format", choices=("onnx", "torchscript"), default=DEFAULT_FORMAT,
                        help=f"onnx (ONNX Runtime; pip install 'medseg[onnx]') or torchscript (default {DEFAULT_FORMAT})")
    export.add_argument("--out", required=True, help="the export folder: network file(s) and pipeline.json")
    export.set_defaults(func=_export)
