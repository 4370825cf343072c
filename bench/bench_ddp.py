"""Two DDP processes against one process: time per step and held-out Dice on the same steps.

On hippocampus (``data_samples/hippocampus`` by default), with the same global batch, seed, split
and number of optimiser steps:

* **1 process x 2 threads**: ``Pipeline.fit`` as a single process does it (``torch`` on 2 threads);
* **2 processes x 1 thread (gloo DDP)**: the same call under ``torchrun --nproc-per-node 2``, each
  rank drawing half of the batch on 1 thread; gradients all-reduced over loopback TCP.

Both preprocess nothing (the cache is built first), load patches in the training process
(``workers=0``) and validate once, after the last step, on the held-out fifth of the cases (each
rank scores half of them). A step's time is the epoch's wall time less its validation, over the
steps. The table says how the two CPU layouts compare; it says nothing about GPUs: there each rank
has a device of its own, NCCL all-reduces over NVLink/PCIe, and the per-step overhead is another.

    python bench/bench_ddp.py --steps 40                 # two runs of about a minute each on 2 cores
    python bench/bench_ddp.py --data ../shared/data/msd-task04-hippocampus --steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _pipeline(args: argparse.Namespace):
    import medseg

    return medseg.Pipeline(args.data, device="cpu", cache_dir=args.cache, plan={"batch_size": args.batch_size},
                           training=medseg.TrainingConfig(seed=args.seed, workers=0, amp=False))


def run(args: argparse.Namespace) -> None:
    """One training run (a single process, or one rank under torchrun); rank 0 writes the result."""
    import torch

    from medseg.training.distributed import world_from_env

    torch.set_num_threads(args.threads)
    pipe = _pipeline(args)
    train_ids, val_ids = pipe.split_cases(val_fraction=0.2)
    history = pipe.fit(train_ids, val_ids, epochs=1, iterations_per_epoch=args.steps)
    last = history[-1]
    if world_from_env().is_main:
        Path(args.result).write_text(json.dumps({
            "step_seconds": (last["seconds"] - last["val_seconds"]) / last["steps"], "steps": last["steps"],
            "val_dice": last["val_dice"], "loss": last["loss"], "val_cases": len(val_ids)}))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(args: argparse.Namespace, processes: int, result: Path) -> dict:
    common = ["--train-once", "--data", str(args.data), "--cache", str(args.cache), "--steps", str(args.steps),
              "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--result", str(result)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    if processes == 1:
        command = [sys.executable, __file__, *common, "--threads", "2"]
        env["OMP_NUM_THREADS"] = "2"
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                   "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), __file__, *common, "--threads", "1"]
        env["OMP_NUM_THREADS"] = "1"
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data_samples" / "hippocampus")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4, help="the global batch (split over the ranks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-once", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_once:
        run(args)
        return
    with tempfile.TemporaryDirectory() as folder:
        args.cache = Path(folder) / "cache"
        pipe = _pipeline(args)
        pipe.preprocessed_cases().build([*sum(pipe.split_cases(val_fraction=0.2), [])])
        load = os.getloadavg()
        one = _launch(args, 1, Path(folder) / "one.json")
        two = _launch(args, 2, Path(folder) / "two.json")
        after = os.getloadavg()
    print(f"{args.data.name}: {one['steps']} steps, global batch {args.batch_size}, patch {list(pipe.plan.patch_size)}, "
          f"{one['val_cases']} held-out cases; load average {load[0]:.2f} before, {after[0]:.2f} after")
    print("| layout | s/step | held-out Dice | last epoch loss |")
    print("| --- | --- | --- | --- |")
    for name, row in (("1 process x 2 threads", one), ("2 processes x 1 thread (gloo DDP)", two)):
        print(f"| {name} | {row['step_seconds']:.3f} | {row['val_dice']:.4f} | {row['loss']:.4f} |")


if __name__ == "__main__":
    main()
