"""Instance segmentation on real data: Mask R-CNN's held-out AP50 and mask Dice beside the U-Net's
Dice after the same number of steps, and the nuclei figures of ``pipelines/instances_nuclei.py``.

* **HC18** (``../shared/data/hc18-fetal-head-ultrasound``, 82 ultrasound images, one head each:
  its mask is the instance) and **hippocampus** (``../shared/data/msd-task04-hippocampus``, 3D MRI;
  each connected component of anterior and posterior is an instance: one each per case). Each
  runs the command line, as a user would: ``medseg train DATA --task instance --architecture
  maskrcnn`` and the semantic ``medseg train DATA`` (the planned U-Net), each ``--epochs 1
  --iterations-per-epoch STEPS --batch-size B --seed 0`` (so the same held-out fifth of the
  cases, subjects grouped), then ``medseg predict RUN DATA --split val`` and ``medseg evaluate``
  (``--task instance`` for Mask R-CNN). Reported: COCO mask AP50 and AP (0.50:0.95) over the
  held-out cases, the mean instance Dice (each reference instance's best Dice) and the matching
  accuracy at IoU 0.5 (pooled), beside the U-Net's mean Dice over cases and classes.
* **Nuclei** (``data_samples/nuclei``): ``pipelines/instances_nuclei.py`` with ``bordercore`` and
  ``maskrcnn``, 2D (4 held-out 128 x 128 tiles of the DSB 2018 image) and 3D (the held-out half of
  the synthetic volume): matching accuracy at IoU 0.5 (the StarDist "AP") and panoptic quality.

Every command is printed before it runs; the training seconds are wall time (say the load).

    OMP_NUM_THREADS=1 python bench/bench_instances.py --only hc18 --steps 100 --batch-size 2   # ~5 min
    OMP_NUM_THREADS=1 python bench/bench_instances.py --only hippocampus --steps 100           # ~17 min
    OMP_NUM_THREADS=1 python bench/bench_instances.py --only nuclei --nuclei-steps-3d 30       # ~11 min
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATA = {"hc18": (SHARED / "hc18-fetal-head-ultrasound", ["--group-pattern", r"^(\d+)_"]),
        "hippocampus": (SHARED / "msd-task04-hippocampus", [])}
LABELS = {"hc18": "masks", "hippocampus": "labelsTr"}  # the reference label folder the semantic evaluate reads


def run(command: list[str], log: list[str]) -> tuple[str, float]:
    """Run a command (medseg from this checkout), echo it, return its stdout and wall seconds."""
    text = shlex.join(command).replace(sys.executable, "python")
    print(f"$ {text}", flush=True)
    log.append(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", env=env)
    if result.returncode:
        raise RuntimeError(f"{text} failed:\n{result.stderr[-4000:]}")
    return result.stdout, time.perf_counter() - start


def run_dataset(name: str, method: str, args, work: Path, log: list[str]) -> dict:
    """Train, predict the held-out split, score: one row."""
    data, extra = getattr(args, name) or DATA[name][0], DATA[name][1]
    medseg = [sys.executable, "-m", "medseg"]
    out = work / f"{name}_{method}"
    task = ["--task", "instance", "--architecture", "maskrcnn"] if method == "maskrcnn" else []
    _, seconds = run([*medseg, "train", str(data), *task, *extra, "--epochs", "1", "--iterations-per-epoch",
                      str(args.steps), "--batch-size", str(args.batch_size), "--seed", "0", "--out", str(out / "run"),
                      "--cache-dir", str(work / "cache")], log)
    split = json.loads((out / "run" / "pipeline.json").read_text())["split"]
    run([*medseg, "predict", str(out / "run"), str(data), "--split", "val", "--out", str(out / "pred")], log)
    row = {"dataset": name, "method": "Mask R-CNN" if method == "maskrcnn" else "U-Net (semantic)",
           "train": len(split["train"]), "held_out": len(split["val"]), "held_out_ids": sorted(split["val"]),
           "seconds": seconds, "steps": args.steps, "batch": args.batch_size}
    if method == "maskrcnn":
        run([*medseg, "evaluate", str(out / "pred"), str(data), "--task", "instance", "--predicted-only",
             "--out", str(out / "eval")], log)
        summary = json.loads((out / "eval" / "instances.json").read_text())["summary"]
        pooled = summary["pooled"].get("0.5") or summary["pooled"].get(0.5)
        return {**row, "AP50": summary["coco"]["AP50"], "AP": summary["coco"]["AP"],
                "instance_dice": summary["mean"]["instance_dice"], "accuracy": pooled["accuracy"], "dice": None}
    stdout, _ = run([*medseg, "evaluate", str(out / "pred"), str(Path(data) / LABELS[name]), "--run",
                     str(out / "run"), "--predicted-only"], log)
    dice = float(re.search(r"mean Dice over labels: ([0-9.na]+)", stdout).group(1))
    return {**row, "AP50": None, "AP": None, "instance_dice": None, "accuracy": None, "dice": dice}


def run_nuclei(args, work: Path, log: list[str]) -> list[dict]:
    """The nuclei example, each architecture and dimensionality: one row each."""
    rows = []
    pattern = (r"(\d)D (\w+): held-out matching accuracy \(AP\) at IoU 0.5 ([0-9.na]+), panoptic quality "
               r"([0-9.na]+) over (\d+)")
    for dims, steps, batch in (("2", args.nuclei_steps_2d, args.nuclei_batch_2d),
                               ("3", args.nuclei_steps_3d, args.nuclei_batch_3d)):
        if dims not in args.nuclei_dims.split(","):
            continue
        for architecture in ("bordercore", "maskrcnn"):
            stdout, seconds = run([sys.executable, str(ROOT / "pipelines" / "instances_nuclei.py"), "--architecture",
                                   architecture, "--dims", dims, "--epochs", "1", "--iterations-per-epoch", str(steps),
                                   "--batch-size", str(batch), "--out", str(work / "nuclei")], log)
            for _, name, accuracy, pq, nuclei in re.findall(pattern, stdout):
                rows.append({"dataset": f"nuclei {dims}D", "method": name, "steps": steps, "batch": batch,
                             "accuracy": float(accuracy), "pq": float(pq), "nuclei": int(nuclei), "seconds": seconds})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="hc18,hippocampus,nuclei")
    parser.add_argument("--steps", type=int, default=100, help="training steps of each HC18/hippocampus run")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--nuclei-dims", default="2,3", help="2, 3 or 2,3")
    parser.add_argument("--nuclei-steps-2d", type=int, default=100)
    parser.add_argument("--nuclei-batch-2d", type=int, default=4)
    parser.add_argument("--nuclei-steps-3d", type=int, default=30)
    parser.add_argument("--nuclei-batch-3d", type=int, default=2)
    parser.add_argument("--hc18", default=None, help=f"the HC18 folder (default {DATA['hc18'][0]})")
    parser.add_argument("--hippocampus", default=None, help=f"the MSD folder (default {DATA['hippocampus'][0]})")
    parser.add_argument("--work", default=None, help="folder for runs and predictions (default: a new temp folder)")
    parser.add_argument("--json", default=None, help="write the rows and commands here")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_instances_"))
    rows, nuclei, log = [], [], []
    for name in args.only.split(","):
        if name == "nuclei":
            nuclei = run_nuclei(args, work, log)
            continue
        for method in ("maskrcnn", "unet"):
            rows.append(run_dataset(name, method, args, work, log))
            print(json.dumps(rows[-1]), flush=True)
        if rows[-1]["held_out_ids"] != rows[-2]["held_out_ids"]:
            print(f"warning: {name}: the two runs held out different cases", flush=True)
    print(f"\n    OMP_NUM_THREADS=1 python bench/bench_instances.py {shlex.join(sys.argv[1:])}\n")
    if rows:
        print(f"| dataset | method | steps x batch | train / held-out | mask AP50 | mask AP | instance Dice "
              f"| matching acc. @0.5 | Dice (semantic) | train s |\n|{' --- |' * 10}")
        for r in rows:
            print(f"| {r['dataset']} | {r['method']} | {r['steps']} x {r['batch']} | {r['train']} / {r['held_out']} | "
                  f"{_fmt(r['AP50'])} | {_fmt(r['AP'])} | {_fmt(r['instance_dice'])} | {_fmt(r['accuracy'])} | "
                  f"{_fmt(r['dice'])} | {r['seconds']:.0f} |")
    if nuclei:
        print(f"\n| data | method | steps x batch | held-out nuclei | matching AP (IoU 0.5) | PQ | run s |\n|{' --- |' * 7}")
        for r in nuclei:
            print(f"| {r['dataset']} | {r['method']} | {r['steps']} x {r['batch']} | {r['nuclei']} | "
                  f"{r['accuracy']:.3f} | {r['pq']:.3f} | {r['seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "nuclei": nuclei, "commands": log,
                                               "argv": sys.argv[1:]}, indent=1))


if __name__ == "__main__":
    main()
