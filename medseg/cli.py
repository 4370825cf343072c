"""``medseg`` on the command line: a thin layer over :class:`medseg.Pipeline`.

Every error a user can cause ends in one line, ``medseg <command>: error: <message>``, and exit
status 2; an unexpected (internal) error in a one-line summary and status 1. ``medseg -v`` prints
the traceback as well.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import cli_export, cli_instances, cli_review
from .cli_options import (
    Parser,
    add_fold_flags,
    add_part_flags,
    add_settings_flags,
    flag_of,
    parse_classes,
    parse_names,
    settings_from_args,
)

__all__ = ["build_parser", "main"]

# the files a training run writes into --out (removed by --overwrite)
_RUN_FILES = ("pipeline.json", "model.pt", "checkpoint.pt", "model_best.pt", "log.csv")


def _open_data(args: argparse.Namespace) -> Any:
    from .io import open_dataset

    options = {"group_pattern": getattr(args, "group_pattern", None), "modality": args.modality,
               "classes": args.classes, "format": getattr(args, "format", None)}  # --format: else detected
    return open_dataset(args.data, **{k: v for k, v in options.items() if v is not None})


def _check_device(device: str | None) -> None:
    import torch

    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available; use --device cpu")


def _print_config(pipe: Any) -> None:
    import yaml

    from .config import SECTIONS

    settings = {k: v for k, v in pipe.config().items() if k in SECTIONS}
    print(yaml.safe_dump(settings, sort_keys=False, default_flow_style=None, width=120), end="")


def _new_pipeline(data: Any, settings: dict[str, Any], args: argparse.Namespace) -> Any:
    from .inference import InferenceConfig
    from .pipeline import Pipeline
    from .preprocessing import create_step
    from .sampling import PatchSampler
    from .training import TrainingConfig

    steps = settings.get("preprocessing")
    return Pipeline(
        data, plan=settings.get("plan") or None, architecture=settings.get("architecture"), loss=settings.get("loss"),
        preprocessing=None if steps is None else [create_step(**step) for step in steps],
        sampler=PatchSampler(**settings["sampler"]) if settings.get("sampler") else None,
        training=TrainingConfig(**settings.get("training", {})),
        inference=InferenceConfig(**settings.get("inference", {})),
        device=args.device, cache_dir=args.cache_dir, **cli_instances.task_options(args),
    )


def _resumed_pipeline(data: Any, settings: dict[str, Any], args: argparse.Namespace) -> Any:
    """The run in ``--out`` with its saved settings; the call may change only what a run can."""
    from .config import resume_conflicts
    from .inference import InferenceConfig
    from .pipeline import Pipeline
    from .sampling import PatchSampler
    from .training import TrainingConfig

    out = Path(args.out)
    saved = json.loads((out / "pipeline.json").read_text())
    conflicts = resume_conflicts(saved, settings)
    if args.classes is not None:
        labels = (saved["plan"].get("labels") or {}).get("values") or range(saved["plan"]["num_classes"])
        known = dict(zip(labels, saved["plan"]["class_names"]))
        if known != args.classes:
            conflicts.append(("--classes", known, args.classes))
    if conflicts:
        key, before, after = conflicts[0]
        raise ValueError(
            f"{flag_of(key)} cannot change when resuming: the run in {out} has {json.dumps(before)}, this call asks "
            f"for {json.dumps(after)}; leave it out to continue the run, or start another with --overwrite or a new --out.")
    weights = any((out / name).is_file() for name in ("model.pt", "checkpoint.pt"))
    pipe = Pipeline.load(out, data, device=args.device, weights=weights)
    pipe.training = TrainingConfig(**{**pipe.training.to_dict(), **settings.get("training", {})})
    pipe.inference = InferenceConfig(**{**pipe.inference.to_dict(), **settings.get("inference", {})})
    if settings.get("sampler"):
        pipe.sampler = PatchSampler(**{**pipe.sampler.config(), **settings["sampler"]})
    pipe.cache_dir = args.cache_dir
    return pipe


# --- output folders -------------------------------------------------------------------------------


def _clean_temporaries(folder: Path) -> None:
    from .io.files import remove_stale_temporaries

    remove_stale_temporaries(folder)


def _claim_run_folder(out: Path, *, resume: bool, overwrite: bool, clear: bool) -> None:
    """Refuse to write over a run unless asked to continue it (``--resume``) or to replace it
    (``--overwrite``: with ``clear``, its files are deleted); ``clear`` also removes stale temp files."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite deletes it: give one of them.")
    existing = [name for name in _RUN_FILES if (out / name).is_file()]
    if existing and not resume and not overwrite:
        raise ValueError(f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue it, "
                         f"--overwrite to replace it, or choose another --out.")
    if clear:
        for name in existing if overwrite else ():
            (out / name).unlink()
        _clean_temporaries(out)


def _train(args: argparse.Namespace) -> int:
    out = _out_folder(args)
    _check_device(args.device)
    settings = settings_from_args(args)
    data = _open_data(args)
    resume = bool(args.resume and out is not None and (out / "pipeline.json").is_file())
    if out is not None and not args.print_config:
        _claim_run_folder(out, resume=args.resume, overwrite=args.overwrite, clear=False)
    pipe = _resumed_pipeline(data, settings, args) if resume else _new_pipeline(data, settings, args)
    if args.print_config:
        _print_config(pipe)
        return 0
    from .training import distributed

    world, _ = distributed.setup(pipe.device)  # under torchrun: join the run's processes (DDP)
    if world.is_main:  # the others wait at the barrier while rank 0 claims the folder
        _claim_run_folder(out, resume=args.resume, overwrite=args.overwrite, clear=True)
        _clean_temporaries(pipe.preprocessed_cases().root)  # a killed run's half-written cache files
        print(pipe.plan)
    distributed.barrier()
    train_ids, val_ids = (pipe.split.get("train"), pipe.split.get("val")) if resume else (None, None)
    pipe.fit(train_ids, val_ids, val_fraction=args.val_fraction,  # None: the format's split, else 0.2
             output_dir=out, resume=args.resume)
    distributed.shutdown()
    if pipe.split.get("val") and world.is_main:
        cli_instances.print_validation(pipe, _print_dice)
    if world.is_main:
        print(f"saved to {out}")
    return 0


def _out_folder(args: argparse.Namespace) -> Path | None:
    if args.out is None and not args.print_config:
        raise ValueError("--out is required: the folder the run is written to (or give --print-config).")
    return None if args.out is None else Path(args.out)


def _print_dice(scores: dict, names: Mapping[int, str]) -> None:
    """Mean Dice per scored class or region; ``names`` maps the score keys (dataset values) to names."""
    import numpy as np

    labels = sorted({label for case in scores.values() for label in case})
    for label in labels:
        values = [scores[c][label]["dice"] for c in scores]
        print(f"  Dice {names.get(label, label):<12} {np.mean(values):.4f} over {len(values)} cases")
    print(f"  Dice mean         {np.mean([scores[c][k]['dice'] for c in scores for k in labels]):.4f}")


def _predict(args: argparse.Namespace) -> int:
    from .cli_parallel import predict_device, predict_part
    from .inference import InferenceConfig
    from .io import open_dataset
    from .pipeline import Pipeline
    from .training.distributed import shard

    part = predict_part(args)  # (k, n) under torchrun or with --part K --parts N: every n-th case from k
    _check_device(args.device)
    pipe = Pipeline.load(args.run, device=predict_device(args.device))
    if part is None:  # else other processes, maybe on other hosts, write temporaries into --out now
        _clean_temporaries(Path(args.out))
    if args.mirror:
        pipe.inference = InferenceConfig(**{**pipe.inference.to_dict(), "mirror": True})
    if args.split:
        data = open_dataset(args.input)
        cases = pipe.split.get(args.split) or []
        if not cases:
            raise ValueError(f"{args.run}: the run has no {args.split!r} split; predict a folder instead.")
        pipe.data = pipe.task_data(data)  # read as the run was trained
        cases = cases if part is None else shard(sorted(cases), *part)
        pipe.predict_cases(cases, args.out, save_probabilities=args.save_probabilities, probability_maps=args.probability_maps)
        print(f"wrote {len(cases)} predictions to {args.out}")
        return 0
    written = pipe.predict(args.input, args.out, save_probabilities=args.save_probabilities, probability_maps=args.probability_maps,
                           part=part)
    print(f"wrote {len(written)} predictions to {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from .evaluation import confusion, folders

    labels, spec, source = folders.resolve_classes(args.labels, args.run, args.references)
    missing = "empty" if args.allow_missing else "skip" if args.predicted_only else "error"
    targets, scores = folders.score_folders(args.predictions, args.references, labels=labels, spec=spec,
                                            all_metrics=args.all_metrics, missing=missing)
    print(f"classes from {source}: {[t.scored for t in targets]}")
    rows = folders.rows_of(scores)
    for target in targets:
        values = [float(r["dice"]) for r in rows if r["label"] == target.key]
        print(f"label {target.key}: mean Dice {np.mean(values):.4f} over {len(values)} cases")
    block = folders.dataset_block(targets, scores, None if spec is None else dict(zip(spec.values, spec.names)))
    print(f"mean Dice over labels: {np.mean([float(r['dice']) for r in rows]):.4f}"
          + confusion.describe_dataset_block(block))  # mean IoU, pixel accuracy: the matrix summed over cases
    if args.out:
        json_out = str(args.out).lower().endswith(".json")
        written = (folders.write_summary_json(targets, scores, args.out) if json_out
                   else folders.write_metrics_csv(rows, args.out))
        print(f"wrote {written}" + ("" if block is None else f", {folders.write_dataset_block(block, args.out)}"))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from .pipeline import default_device
    from .planning import plan_dataset

    plan = plan_dataset(cli_instances.task_data(_open_data(args), args),  # what `medseg train` would plan from
                        spatial_dims=args.spatial_dims, device=args.device or default_device())
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan)
    return 0


def _architectures(args: argparse.Namespace) -> int:
    from .architectures import describe_architectures

    for name, count, line in describe_architectures(spatial_dims=args.spatial_dims):
        print(f"{name:<15} {count / 1e6:7.2f} M  {line}")
    return 0


def _cv(args: argparse.Namespace) -> int:
    from .cli_parallel import run_cv  # all folds, --fold K or --report; --overwrite there

    out = _out_folder(args)
    _check_device(args.device)
    pipe = _new_pipeline(_open_data(args), settings_from_args(args), args)
    if args.print_config:
        _print_config(pipe)
        return 0
    print(pipe.plan)
    return run_cv(pipe, out, args)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.out, time_limit=args.time_limit)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="medseg", description="Medical image segmentation in one command.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens; show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train on an MSD/nnU-Net folder or images/ + labels/")
    add_settings_flags(train)
    train.add_argument("--out", default=None, help="run folder: checkpoint, pipeline, split")
    train.add_argument("--val-fraction", type=float, default=None, help="held-out share (default: the format's split, else 0.2; 0: none)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out with its saved settings")
    train.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    train.set_defaults(func=_train)

    cv = sub.add_parser("cv", help="k-fold cross-validation with a report; rerun to resume")
    add_settings_flags(cv, per_fold=True)
    cv.add_argument("--out", default=None, help="run folder (folds, predictions, report)")
    cv.add_argument("--folds", type=int, default=5)
    cv.add_argument("--overwrite", action="store_true", help="delete the cross-validation in --out (with --fold: that fold) and start again")
    add_fold_flags(cv)
    cv.set_defaults(func=_cv)

    predict = sub.add_parser("predict", help="predict a file or folder with a trained run")
    predict.add_argument("run", help="a run folder from `medseg train`")
    predict.add_argument("input", help="an image file or folder (or, with --split, the dataset)")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--split", default=None, choices=("val", "train"), help="predict the run's split of the dataset INPUT")
    predict.add_argument("--mirror", action="store_true", help="mirroring test-time augmentation")
    predict.add_argument("--save-probabilities", action="store_true", help="also write <case>.npz: softmax (region sigmoids) on the input grid")
    predict.add_argument("--probability-maps", action="store_true", help="also write <case>.npz and <case>_prob_<class>.nii.gz per channel")
    predict.add_argument("--device", default=None)
    add_part_flags(predict)
    predict.set_defaults(func=_predict)

    evaluate = sub.add_parser("evaluate", help="score predictions against references")
    evaluate.add_argument("predictions")
    evaluate.add_argument("references")
    evaluate.add_argument("--out", default=None, help="per-case metrics: a .csv file, or a .json file in nnU-Net's "
                          "summary.json layout (--task instance: a folder for instances.csv and instances.json)")
    evaluate.add_argument("--all-metrics", action="store_true", help="also IoU, HD, HD95, ASSD, NSD...")
    evaluate.add_argument("--labels", default=None,
                          help="label values to score, e.g. 1,2,4 (default: --run's plan, else a dataset.json "
                               "beside REFERENCES, else every value in references and predictions)")
    evaluate.add_argument("--run", default=None, help="score the classes of this run's plan (medseg train/cv folder)")
    missing = evaluate.add_mutually_exclusive_group()
    missing.add_argument("--allow-missing", action="store_true",
                         help="score a reference without a prediction as an empty prediction (default: error)")
    missing.add_argument("--predicted-only", action="store_true",
                         help="score only the cases that have a prediction (default: error)")
    cli_instances.add_evaluate_flags(evaluate, _evaluate)  # --task instance goes to cli_instances.evaluate

    plan = sub.add_parser("plan", help="print the plan medseg derives from a dataset")
    plan.add_argument("data")
    plan.add_argument("--spatial-dims", type=int, choices=(2, 3), default=None)
    plan.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available), sets the budget")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON (as pipeline.json holds it)")
    plan.add_argument("--modality", type=parse_names, default=None, help="one name per channel: CT, or T1,T2")
    plan.add_argument("--classes", type=parse_classes, default=None, help="label values and names: 1=liver,2=tumour")
    plan.add_argument("--format", default=None, help="dataset layout: voc, cityscapes, camvid, coco (default: detected)")
    cli_instances.add_task_flags(plan)
    plan.set_defaults(func=_plan)

    cli_export.add_parser(sub)  # medseg export (parser and handler there)
    archs = sub.add_parser("architectures", help="list the architectures")
    archs.add_argument("--spatial-dims", type=int, choices=(2, 3), default=3)
    archs.set_defaults(func=_architectures)

    demo = sub.add_parser("demo", help="train on data_samples/ and score unseen cases (a few minutes)")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--time-limit", type=float, default=150.0)
    demo.set_defaults(func=_demo)
    cli_review.add_parser(sub)  # medseg review init/next/ingest/retrain
    return parser


def _one_line(message: str) -> str:
    """A message on one line; an error re-raised from a data loader worker keeps only its last line."""
    if "Original Traceback" in message:
        last = message.strip().splitlines()[-1]
        message = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(message.split())


def _describe(error: BaseException) -> tuple[int, str]:
    """Exit status and one-line message: 2 for what a user can fix, 1 for an internal error."""
    from .errors import MedsegError
    from .io.files import final_path

    if isinstance(error, OSError) and error.strerror:
        where = Path(str(error.filename)) if error.filename else None
        prefix = f"{final_path(where)}: " if where else ""
        hint = {errno.ENOSPC: "; free some disk space and rerun (finished outputs are kept)",
                errno.EACCES: "; check that you may write there", errno.EROFS: "; the file system is read-only",
                errno.EPERM: "; check that you may write there"}.get(error.errno or 0, "")
        return 2, _one_line(f"{prefix}{error.strerror}{hint}")
    if isinstance(error, KeyError):
        key = error.args[0] if error.args else ""
        return 2, _one_line(key if isinstance(key, str) and " " in key else f"unknown case id or name {key!r}")
    if isinstance(error, MedsegError | ValueError | OSError | FloatingPointError):
        return 2, _one_line(str(error))
    if type(error).__name__ == "OutOfMemoryError":
        return 2, "out of GPU memory; lower --batch-size or --patch-size, or use --device cpu"
    return 1, _one_line(f"internal error: {type(error).__name__}: {error}; rerun with -v for the traceback")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``medseg`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error argparse has printed
        return int(done.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"medseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one place every error turns into a message
        if args.verbose:
            traceback.print_exc()
        code, message = _describe(error)
        print(f"medseg {args.command}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
