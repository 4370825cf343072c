"""Held-out Dice of time-limited runs: the README's accuracy commands, per seed and settings.

Each run is exactly what a user types: ``medseg train DATA --out RUN --time-limit T --seed S
[--config SETTINGS]``, then ``medseg predict RUN DATA --split val`` (without and with
``--mirror``) and ``medseg evaluate ... --predicted-only --out summary.json``. Runs go one after
another (each must have the machine to itself: the time limit makes Dice depend on the step
rate); a run whose summary exists is read, not redone, so the bench resumes where it stopped.

    python bench/bench_accuracy.py --hippocampus Task04_Hippocampus --hc18 HC18 \\
        --seeds 0 1 2 --settings defaults --json accuracy.json        # 6 x ~16 min
    python bench/bench_accuracy.py --hippocampus Task04_Hippocampus --seeds 0 \\
        --settings defaults nnunet=bench/settings/nnunet_loss_ds.yaml  # a lever against the defaults

``--settings`` takes ``NAME`` (``defaults``: no settings file) or ``NAME=FILE`` (a settings file
as ``medseg train --config`` reads it). The table gives, per dataset and settings, the mean and
spread (sample standard deviation) over the seeds of the held-out mean Dice (the mean over the
labels of their mean over the cases), without and with mirroring TTA, and each seed's figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATASETS = {  # train flags beyond the time limit, and the folder of the references
    "hippocampus": ([], "labelsTr"),
    "hc18": (["--spatial-dims", "2", "--group-pattern", r"^(\d+)_"], "masks"),
}


def _medseg(*args: str, log: Path) -> None:
    with log.open("a") as out:
        out.write(f"$ medseg {' '.join(args)}\n")
        out.flush()
        subprocess.run([sys.executable, "-m", "medseg", *args], stdout=out, stderr=subprocess.STDOUT, check=True)


def _dice(summary: Path) -> dict[str, float]:
    """Per label and their mean, from ``medseg evaluate --out summary.json`` (nnU-Net's layout)."""
    data = json.loads(summary.read_text())
    labels = {key: float(value["Dice"]) for key, value in data["mean"].items()}
    return {**labels, "mean": sum(labels.values()) / len(labels)}


def run_one(dataset: str, data: Path, name: str, settings: str | None, seed: int, time_limit: float, work: Path) -> dict:
    """Train, predict and score one run (or read what an earlier call left)."""
    flags, references = DATASETS[dataset]
    run = work / f"{dataset}-{name}-s{seed}"
    log = run.with_suffix(".log")
    record = run / "bench_accuracy.json"
    if record.is_file():
        return json.loads(record.read_text())
    work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    if not (run / "model.pt").is_file():
        extra = ["--config", str(settings)] if settings else []
        resume = ["--resume"] if (run / "checkpoint.pt").is_file() else []
        _medseg("train", str(data), "--out", str(run), "--time-limit", str(time_limit), "--seed", str(seed),
                *flags, *extra, *resume, log=log)
    trained = time.monotonic() - began
    result = {"dataset": dataset, "seed": seed, "settings": name, "file": settings, "train_seconds": trained}
    history = json.loads((run / "pipeline.json").read_text()).get("history", [])
    result["steps"] = sum(int(h.get("steps", 0)) for h in history)
    result["largest_component"] = json.loads((run / "pipeline.json").read_text())["inference"].get("largest_component")
    for name, tta in (("plain", []), ("mirror", ["--mirror"])):
        out = run / f"val-{name}"
        _medseg("predict", str(run), str(data), "--split", "val", "--out", str(out), *tta, log=log)
        _medseg("evaluate", str(out), str(data / references), "--predicted-only", "--out", str(out / "summary.json"),
                log=log)
        result[name] = _dice(out / "summary.json")
    record.write_text(json.dumps(result, indent=1))
    return result


def _spread(rows: list[dict], key: str) -> str:
    values = [r[key]["mean"] for r in rows]
    sd = f" +- {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.4f}{sd}"


def table(results: list[dict]) -> str:
    lines = ["| data | settings | seeds | held-out mean Dice | with mirroring TTA | per seed (plain) | steps |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["settings"]), []).append(r)
    for (dataset, settings), rows in groups.items():
        rows.sort(key=lambda r: r["seed"])

        seeds = ", ".join(f"{r['seed']}: {r['plain']['mean']:.4f}" for r in rows)
        steps = ", ".join(str(r["steps"]) for r in rows)
        lines.append(f"| {dataset} | {settings} | {len(rows)} | {_spread(rows, 'plain')} | {_spread(rows, 'mirror')} | "
                     f"{seeds} | {steps} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hippocampus", type=Path, help="the MSD Task04_Hippocampus folder")
    parser.add_argument("--hc18", type=Path, help="HC18 as images/ and masks/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=["defaults"], help="NAME or NAME=FILE")
    parser.add_argument("--time-limit", type=float, default=900.0)
    parser.add_argument("--work", type=Path, default=Path("accuracy-runs"), help="runs and predictions go here")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    args = parser.parse_args(argv)
    datasets = {name: path for name, path in (("hippocampus", args.hippocampus), ("hc18", args.hc18)) if path}
    if not datasets:
        parser.error("give --hippocampus and/or --hc18")
    settings = [(s, None) if s == "defaults" else tuple(s.split("=", 1)) for s in args.settings]
    results = [run_one(dataset, path, name, file, seed, args.time_limit, args.work)
               for dataset, path in datasets.items() for name, file in settings for seed in args.seeds]
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
