"""Simulate the correction loop: a "person" corrects the cases the model is least sure of (their
reference labels stand in for the corrections), round by round, against a person who corrects
cases picked at random; prints the held-out Dice after each round, side by side.

    python pipelines/review_loop.py             # data_samples/hippocampus (30 cases), ~7 min on one CPU thread
    OMP_NUM_THREADS=1 python pipelines/review_loop.py --data /path/to/Task04_Hippocampus --initial 20 \
        --held-out 20 --pool 36 --per-round 10 --rounds 3 --base-steps 60 --round-steps 25 --out runs/review_loop

Each round: ``review.ingest`` the chosen cases' labels as corrections, ``review.retrain`` the
latest run for ``--round-steps`` optimiser steps (a fixed budget that does not depend on the
machine's load), and ``review.init`` with the new run to re-rank the pool.
"""

import argparse
import json
import random
import time
from pathlib import Path

import medseg
from medseg import review
from medseg.review.retrain import held_out_dice

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--data", default="data_samples/hippocampus", help="an MSD/nnU-Net folder with labels")
parser.add_argument("--initial", type=int, default=8, help="cases the first model trains on")
parser.add_argument("--held-out", type=int, default=8, help="fixed cases every round is scored on")
parser.add_argument("--pool", type=int, default=14, help="unlabelled cases to choose corrections from")
parser.add_argument("--per-round", type=int, default=4, help="cases corrected per round")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--base-steps", type=int, default=40, help="optimiser steps of the first model")
parser.add_argument("--round-steps", type=int, default=20, help="optimiser steps of each retraining")
parser.add_argument("--features", default="8,16,32", help="U-Net widths (small: a CPU budget)")
parser.add_argument("--batch-size", type=int, default=1)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default="runs/review_loop")
args = parser.parse_args()

start, out, data = time.monotonic(), Path(args.out), medseg.open_dataset(args.data)
ids = sorted(data.case_ids)
random.Random(args.seed).shuffle(ids)
initial, held_out = ids[: args.initial], ids[args.initial: args.initial + args.held_out]
pool = ids[args.initial + args.held_out:][: args.pool]
if len(pool) < args.per_round * args.rounds:
    raise SystemExit(f"--pool {len(pool)} cases cannot feed {args.rounds} rounds of {args.per_round}.")

unlabeled = out / "unlabeled"  # the pool's scans, without their labels
unlabeled.mkdir(parents=True, exist_ok=True)
for case in pool:
    link = unlabeled / data.files(case).images[0].name
    if not link.exists():
        link.symlink_to(data.files(case).images[0].resolve())

features = [int(f) for f in args.features.split(",")]
plan = {"features": features, "batch_size": args.batch_size, "pool_kernels": [[2, 2, 2]] * (len(features) - 1),
        "conv_kernels": [[3, 3, 3]] * len(features)}
pipe = medseg.Pipeline(data, plan=plan, device="cpu", training=medseg.training.TrainingConfig(seed=args.seed))
pipe.fit(initial, None, epochs=1, iterations_per_epoch=args.base_steps, output_dir=out / "run0")
base = held_out_dice(medseg.Pipeline.load(out / "run0", data, device="cpu"), held_out)
print(f"round 0: {len(initial)} cases, {args.base_steps} steps: held-out Dice {base:.4f} ({len(held_out)} cases)")

results = {"uncertainty": [base], "random": [base]}
for arm in results:
    folder, run, pick = out / arm, out / "run0", random.Random(args.seed + 1)
    for round_ in range(1, args.rounds + 1):
        state = review.init(run, unlabeled, folder / "review", data=args.data, held_out=held_out,
                            score=arm == "uncertainty")
        pending = state.pending()
        chosen = pending[: args.per_round] if arm == "uncertainty" else pick.sample(sorted(pending), args.per_round)
        review.ingest(folder / "review", [Path(data.files(c).label) for c in chosen])
        run = folder / f"run{round_}"
        result = review.retrain(folder / "review", run, steps=args.round_steps, overwrite=True)
        results[arm].append(result["dice_run2"])
        print(f"{arm} round {round_}: corrected {', '.join(chosen)} -> held-out Dice {result['dice_run2']:.4f}",
              flush=True)

print(f"\nheld-out Dice ({len(held_out)} cases) after each round, {args.per_round} corrected cases and "
      f"{args.round_steps} steps per round:")
print("| round | trained on | chosen by uncertainty | chosen at random |")
print("|---|---|---|---|")
for round_, (u, r) in enumerate(zip(results["uncertainty"], results["random"])):
    print(f"| {round_} | {len(initial) + round_ * args.per_round} | {u:.4f} | {r:.4f} |")
(out / "results.json").write_text(json.dumps({"args": vars(args), "dice": results}, indent=2))
print(f"({time.monotonic() - start:.0f} s in all; {out / 'results.json'})")
