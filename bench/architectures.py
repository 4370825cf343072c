"""Each architecture trained the same way on real data: Dice on unseen cases, size and speed.

2D: HC18 fetal-head ultrasound, subjects held out (a fifth), ``--time-2d`` seconds of training each.
3D: hippocampus MRI, a fifth held out, ``--time-3d`` seconds each, next to the untrained network.
Seconds per training step (the planned batch) and per sliding-window prediction of one held-out
case (on its original grid, preprocessing and inversion included) are timed after a warm-up.

    python bench/architectures.py --time-2d 300 --time-3d 90      # about 30 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import medseg  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NAMES = ("unet", "deeplabv3plus", "fastfcn", "gatedscnn")


def _mean_dice(scores: dict) -> float:
    return float(np.mean([v["dice"] for case in scores.values() for v in case.values()]))


def _step_seconds(pipe: medseg.Pipeline, repeats: int = 5) -> float:
    plan, net = pipe.plan, pipe.network
    x = torch.randn(plan.batch_size, plan.in_channels, *plan.patch_size)
    y = torch.randint(0, plan.num_classes, (plan.batch_size, *plan.patch_size))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5)
    net.train()
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        out = net(x)
        loss = net.training_loss(out, y, pipe.loss) if hasattr(net, "training_loss") else pipe.loss(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _predict_seconds(pipe: medseg.Pipeline, cases: list[str]) -> float:
    samples = [pipe.data.load(c) for c in cases]
    pipe.predict_case(samples[0])  # warm-up
    times = []
    for sample in samples:
        start = time.perf_counter()
        pipe.predict_case(sample)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _pipeline(name: str, data: medseg.io.Dataset, plan: medseg.Plan) -> medseg.Pipeline:
    return medseg.Pipeline(data, plan=plan, architecture=name, training=medseg.TrainingConfig(workers=1), device="cpu")


def run(name: str, data: medseg.io.Dataset, plan: medseg.Plan, seconds: float) -> dict:
    dims = plan.spatial_dims
    pipe = _pipeline(name, data, plan)
    params = sum(p.numel() for p in pipe.network.parameters())
    train_ids, val_ids = pipe.split_cases(val_fraction=0.2)
    untrained = _mean_dice(pipe.evaluate(val_ids[:10])) if dims == 3 else float("nan")
    step = _step_seconds(pipe.fresh())
    pipe.fit(train_ids, val_ids, time_limit=seconds, iterations_per_epoch=50)
    dice = _mean_dice(pipe.evaluate(val_ids))
    return {"name": name, "dims": dims, "dice": dice, "untrained": untrained, "params": params,
            "step": step, "predict": _predict_seconds(pipe, val_ids[:5]), "val": len(val_ids)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-2d", type=float, default=300)
    parser.add_argument("--time-3d", type=float, default=90)
    parser.add_argument("--names", nargs="*", default=list(NAMES))
    parser.add_argument("--batch-2d", type=int, default=4,
                        help="2D batch size for every network (0: the plan's; the recorded table used 4)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("architectures.md")))
    parser.add_argument("--predictions-only", action="store_true",
                        help="only re-time 's / prediction' in 3D (untrained weights: the time does not depend on them)")
    args = parser.parse_args()
    hc18 = medseg.FolderDataset(DATA / "hc18-fetal-head-ultrasound", group_pattern=r"^(\d+)_")
    hippo = medseg.MSDDataset(DATA / "msd-task04-hippocampus")
    if args.predictions_only:
        plan = medseg.Pipeline(hippo, device="cpu").plan
        for name in args.names:
            pipe = _pipeline(name, hippo, plan)
            print(f"{name} 3D: {_predict_seconds(pipe, pipe.split_cases(val_fraction=0.2)[1][:5]):.3f} s / prediction", flush=True)
        return
    rows = []
    for dims, data, seconds in ((2, hc18, args.time_2d), (3, hippo, args.time_3d)):
        plan = medseg.Pipeline(data, spatial_dims=dims, device="cpu").plan
        plan = plan.replace(batch_size=args.batch_2d) if dims == 2 and args.batch_2d else plan
        print(plan, flush=True)
        for name in args.names:
            row = run(name, data, plan, seconds)
            rows.append(row)
            print(row, flush=True)
    lines = [f"Training: {args.time_2d:.0f} s per 2D network (HC18, batch {args.batch_2d}), {args.time_3d:.0f} s per 3D network "
             f"(hippocampus, planned batch), CPU ({torch.get_num_threads()} threads), `python bench/architectures.py "
             f"--time-2d {args.time_2d:.0f} --time-3d {args.time_3d:.0f} --batch-2d {args.batch_2d}`.", "",
             "| architecture | dims | held-out Dice | untrained Dice | parameters | s / training step | s / prediction |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        untrained = "" if np.isnan(r["untrained"]) else f"{r['untrained']:.3f}"
        lines.append(f"| {r['name']} | {r['dims']}D | {r['dice']:.3f} ({r['val']} cases) | {untrained} | "
                     f"{r['params'] / 1e6:.2f} M | {r['step']:.2f} | {r['predict']:.2f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
