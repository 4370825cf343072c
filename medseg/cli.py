"""``medseg`` on the command line: a thin layer over :class:`medseg.Pipeline`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _train(args: argparse.Namespace) -> int:
    from .io import open_dataset
    from .pipeline import Pipeline
    from .training import TrainingConfig

    config = TrainingConfig(seed=args.seed, workers=args.workers, optimizer=args.optimizer)
    data = open_dataset(args.data, group_pattern=args.group_pattern)
    if args.resume and (Path(args.out) / "pipeline.json").is_file():
        pipe = Pipeline.load(args.out, data, device=args.device)
        pipe.training = config
        train_ids, val_ids = pipe.split.get("train"), pipe.split.get("val")
    else:
        pipe = Pipeline(data, spatial_dims=args.spatial_dims, architecture=args.architecture,
                        loss=args.loss, training=config, device=args.device)
        train_ids = val_ids = None
    print(pipe.plan)
    pipe.fit(train_ids, val_ids, epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
             time_limit=args.time_limit, val_fraction=args.val_fraction, output_dir=args.out,
             resume=args.resume)
    if pipe.split.get("val"):
        scores = pipe.evaluate()
        _print_dice(scores, pipe.plan.class_names)
    print(f"saved to {args.out}")
    return 0


def _print_dice(scores: dict, names: Sequence[str]) -> None:
    import numpy as np

    labels = sorted({label for case in scores.values() for label in case})
    for label in labels:
        values = [scores[c][label]["dice"] for c in scores]
        print(f"  Dice {names[label] if label < len(names) else label:<12} {np.mean(values):.4f} over {len(values)} cases")
    print(f"  Dice mean         {np.mean([scores[c][k]['dice'] for c in scores for k in labels]):.4f}")


def _predict(args: argparse.Namespace) -> int:
    from .inference import InferenceConfig
    from .io import open_dataset
    from .pipeline import Pipeline

    pipe = Pipeline.load(args.run, device=args.device)
    if args.mirror:
        pipe.inference = InferenceConfig(**{**pipe.inference.to_dict(), "mirror": True})
    if args.split:
        data = open_dataset(args.input)
        cases = pipe.split.get(args.split) or []
        if not cases:
            raise SystemExit(f"{args.run}: the run has no {args.split!r} split.")
        from .io import output_suffix, write_label_file

        for case in cases:
            sample = data.load(case)
            files = data.cases[case]
            write_label_file(pipe.predict_sample(sample), sample.geometry,
                             Path(args.out) / f"{case}{output_suffix(files.images[0])}")
        print(f"wrote {len(cases)} predictions to {args.out}")
        return 0
    written = pipe.predict(args.input, args.out)
    print(f"wrote {len(written)} predictions to {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from .evaluation.folders import evaluate_folders, write_metrics_csv

    rows = evaluate_folders(args.predictions, args.references, all_metrics=args.all_metrics)
    for label in sorted({r["label"] for r in rows}):
        values = [float(r["dice"]) for r in rows if r["label"] == label]
        print(f"label {label}: mean Dice {np.mean(values):.4f} over {len(values)} cases")
    print(f"mean Dice over labels: {np.mean([float(r['dice']) for r in rows]):.4f}")
    if args.out:
        print(f"wrote {write_metrics_csv(rows, args.out)}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from .io import open_dataset
    from .planning import plan_dataset

    print(plan_dataset(open_dataset(args.data), spatial_dims=args.spatial_dims, device=args.device or "cpu"))
    return 0


def _architectures(args: argparse.Namespace) -> int:
    from .architectures import describe_architectures

    for name, count, line in describe_architectures(spatial_dims=args.spatial_dims):
        print(f"{name:<15} {count / 1e6:7.2f} M  {line}")
    return 0


def _cv(args: argparse.Namespace) -> int:
    from .evaluation import cross_validate
    from .evaluation.plots import label_title
    from .io import open_dataset
    from .pipeline import Pipeline
    from .training import TrainingConfig

    pipe = Pipeline(open_dataset(args.data, group_pattern=args.group_pattern), spatial_dims=args.spatial_dims, architecture=args.architecture, loss=args.loss,
                    training=TrainingConfig(seed=args.seed, workers=args.workers), device=args.device)
    print(pipe.plan)
    summary = cross_validate(pipe, folds=args.folds, output_dir=args.out, seed=args.seed, epochs=args.epochs,
                             iterations_per_epoch=args.iterations_per_epoch, time_limit=args.time_limit)
    names = dict(enumerate(pipe.plan.class_names))
    for label, dice in summary["mean_dice"].items():
        print(f"  mean Dice {label_title(label, names)}: {dice:.4f}")
    print(f"report: {summary['report']}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.out, time_limit=args.time_limit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medseg", description="Medical image segmentation in one command.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train on an MSD/nnU-Net folder or images/ + labels/")
    train.add_argument("data", help="the dataset folder")
    train.add_argument("--out", required=True, help="run folder: checkpoint, pipeline, split")
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--iterations-per-epoch", type=int, default=None)
    train.add_argument("--time-limit", type=float, default=None, help="seconds of training")
    train.add_argument("--spatial-dims", type=int, choices=(2, 3), default=None)
    train.add_argument("--architecture", default=None, help="unet, deeplabv3plus, fastfcn, gatedscnn, ...")
    train.add_argument("--loss", default=None, help="e.g. dice+ce, dice+boundary, focal")
    train.add_argument("--val-fraction", type=float, default=0.2, help="held-out share (0: none)")
    train.add_argument("--group-pattern", default=None,
                       help=r"regex whose group 1 is a case's subject, kept on one side of splits (e.g. '^(\d+)_')")
    train.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--workers", type=int, default=1, help="data loader processes")
    train.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.set_defaults(func=_train)

    cv = sub.add_parser("cv", help="k-fold cross-validation with a report; rerun to resume")
    cv.add_argument("data", help="the dataset folder")
    cv.add_argument("--out", required=True, help="run folder (folds, predictions, report)")
    cv.add_argument("--folds", type=int, default=5)
    cv.add_argument("--epochs", type=int, default=None)
    cv.add_argument("--iterations-per-epoch", type=int, default=None)
    cv.add_argument("--time-limit", type=float, default=None, help="seconds of training per fold")
    cv.add_argument("--spatial-dims", type=int, choices=(2, 3), default=None)
    cv.add_argument("--architecture", default=None)
    cv.add_argument("--loss", default=None)
    cv.add_argument("--seed", type=int, default=0)
    cv.add_argument("--group-pattern", default=None, help="regex whose group 1 is a case's subject")
    cv.add_argument("--workers", type=int, default=1)
    cv.add_argument("--device", default=None)
    cv.set_defaults(func=_cv)

    predict = sub.add_parser("predict", help="predict a file or folder with a trained run")
    predict.add_argument("run", help="a run folder from `medseg train`")
    predict.add_argument("input", help="an image file or folder (or, with --split, the dataset)")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--split", default=None, choices=("val", "train"), help="predict the run's split of the dataset INPUT")
    predict.add_argument("--mirror", action="store_true", help="mirroring test-time augmentation")
    predict.add_argument("--device", default=None)
    predict.set_defaults(func=_predict)

    evaluate = sub.add_parser("evaluate", help="score predictions against references")
    evaluate.add_argument("predictions")
    evaluate.add_argument("references")
    evaluate.add_argument("--out", default=None, help="CSV file for per-case metrics")
    evaluate.add_argument("--all-metrics", action="store_true", help="also IoU, HD, HD95, ASSD, NSD...")
    evaluate.set_defaults(func=_evaluate)

    plan = sub.add_parser("plan", help="print the plan medseg derives from a dataset")
    plan.add_argument("data")
    plan.add_argument("--spatial-dims", type=int, choices=(2, 3), default=None)
    plan.add_argument("--device", default=None)
    plan.set_defaults(func=_plan)

    archs = sub.add_parser("architectures", help="list the architectures")
    archs.add_argument("--spatial-dims", type=int, choices=(2, 3), default=3)
    archs.set_defaults(func=_architectures)

    demo = sub.add_parser("demo", help="train on data_samples/ and score unseen cases (a few minutes)")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--time-limit", type=float, default=150.0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from .errors import MedsegError

    try:
        return int(args.func(args) or 0)
    except (MedsegError, FileNotFoundError, ValueError) as error:
        print(f"medseg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
