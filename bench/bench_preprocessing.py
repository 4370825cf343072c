"""Preprocessing time on the MSD hippocampus cases: planning, a cold run into an empty cache, and
a warm run that finds every case cached.

* *plan*: ``medseg.Pipeline(data, device="cpu")`` (reads every case's header and labels for the
  fingerprint, plans, builds the network): what runs before preprocessing;
* *cold*: ``PreprocessedCases(data, pipe.preprocessing, cache_dir=<empty>).build()`` with the
  default steps (crop to non-zero, resample, z-score, pad) and the default worker processes;
* *warm*: the same call again on the filled cache (a second run or a resumed one).

Wall seconds; the cold run's note gives the CPU seconds of this process and of its worker
processes (``RUSAGE_CHILDREN``) and the largest worker's peak RSS. The input files are in the page
cache for every run (planning has just read them).

nnU-Net comparison, a hook that this script does not set up: with nnU-Net v2 installed in a
separate virtual environment, ``--nnunet-bin <venv>/bin`` times ``nnUNetv2_plan_and_preprocess``
next to medseg's plan + cold run (see :func:`nnunet_plan_and_preprocess`).

Usage:
    python bench/bench_preprocessing.py            # all 200 cases
    python bench/bench_preprocessing.py --quick    # 10 cases
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import MB, ROOT, Row, Stats, print_table, save_rows

from medseg import Pipeline
from medseg.io import Dataset, MSDDataset
from medseg.preprocessing.cache import PreprocessedCases

DATA = Path("/work/shared/data/msd-task04-hippocampus")
SIZES = {"full": {"cases": None, "repeats": 3}, "quick": {"cases": 10, "repeats": 1}}


def subset(data: Dataset, n: int | None) -> Dataset:
    """The first ``n`` cases of ``data`` (all of them for ``None``)."""
    if n is None or n >= len(data):
        return data
    keep = data.case_ids[:n]
    return Dataset({c: data.cases[c] for c in keep}, labels=data.labels, modality=data.modality, root=data.root)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_build(data: Dataset, steps: list, cache_dir: Path) -> dict[str, float]:
    """Wall and CPU seconds (this process, its workers) of one ``build()``."""
    own, kids, wall = time.process_time(), _children_cpu(), time.perf_counter()
    PreprocessedCases(data, steps, cache_dir=cache_dir).build()
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - own,
            "workers_cpu_s": _children_cpu() - kids}


def nnunet_plan_and_preprocess(bin_dir: Path, data: Path, workers: int) -> float:
    """Seconds of nnU-Net v2's plan and preprocess (run only with ``--nnunet-bin``; not tested).

    Set nnU-Net v2 up in its own virtual environment that sees this torch (a plain ``pip install
    nnunetv2`` pulls a multi-GB CUDA torch)::

        python -m venv --system-site-packages /opt/nnunet
        echo "torch==$(python -c 'import torch; print(torch.__version__.split("+")[0])')" > /tmp/torch.txt
        /opt/nnunet/bin/pip install nnunetv2 -c /tmp/torch.txt
        python bench/bench_preprocessing.py --nnunet-bin /opt/nnunet/bin

    The MSD folder is converted first (``nnUNetv2_convert_MSD_dataset``, untimed) into a temporary
    ``nnUNet_raw``; then ``nnUNetv2_plan_and_preprocess -d 4 -c 3d_fullres`` with ``workers``
    processes is timed: fingerprint, plan and preprocessing, to compare with medseg's plan + cold.
    """
    with tempfile.TemporaryDirectory(prefix="medseg-bench-nnunet-") as tmp:
        env = {**os.environ, **{k: str(Path(tmp) / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}}
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            Path(env[k]).mkdir()
        task = Path(tmp) / "Task04_Hippocampus"  # the converter reads the task id off the name
        task.mkdir()
        for entry in ("dataset.json", "imagesTr", "labelsTr"):
            (task / entry).symlink_to((data / entry).resolve())
        (task / "imagesTs").mkdir()  # the converter insists on one; the test cases are not timed
        subprocess.run([str(bin_dir / "nnUNetv2_convert_MSD_dataset"), "-i", str(task), "-overwrite_id", "4",
                        "-np", str(workers)], env=env, check=True)
        start = time.perf_counter()
        subprocess.run([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", "3d_fullres",
                        "-np", str(workers), "-npfp", str(workers)], env=env, check=True)
        return time.perf_counter() - start


def run(quick: bool, data_dir: Path = DATA, nnunet_bin: Path | None = None, repeats: int | None = None) -> list[Row]:
    cfg = SIZES["quick" if quick else "full"]
    repeats = repeats or cfg["repeats"]
    data = subset(MSDDataset(data_dir), cfg["cases"])
    plans, cold, warm = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        pipe = Pipeline(data, device="cpu")
        plans.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory(prefix="medseg-bench-cache-") as tmp:
            cold.append(timed_build(data, pipe.preprocessing, Path(tmp)))
            warm += [timed_build(data, pipe.preprocessing, Path(tmp))["wall_s"] for _ in range(3)]
    workers = PreprocessedCases(data, []).workers
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / MB
    n = len(data)
    cpu = Stats.of([c["cpu_s"] + c["workers_cpu_s"] for c in cold])
    steps = ", ".join(type(s).__name__ for s in pipe.preprocessing)
    rows = [
        Row("preprocessing", f"plan: Pipeline(data), {n} hippocampus cases", "s", Stats.of(plans)),
        Row("preprocessing", f"cold: build() into an empty cache, {n} cases ({steps})", "s",
            Stats.of([c["wall_s"] for c in cold]), memory=f"largest worker peak RSS {peak:.0f} MB",
            note=f"{workers} worker processes; CPU {cpu.median:.1f} s (main + workers)"),
        Row("preprocessing", f"warm: build() on the filled cache, {n} cases", "s", Stats.of(warm)),
    ]
    total = Stats.of([p + c["wall_s"] for p, c in zip(plans, cold, strict=True)])
    if nnunet_bin is not None and not quick:
        try:
            nnunet = Stats.of([nnunet_plan_and_preprocess(nnunet_bin, data_dir, workers)])
            rows.append(Row("preprocessing", f"plan + cold preprocessing, {n} cases", "s", total,
                            "nnUNetv2_plan_and_preprocess 3d_fullres", nnunet,
                            note=f"nnU-Net with {workers} processes (-np, -npfp), one run"))
        except (OSError, subprocess.CalledProcessError) as error:  # keep medseg's rows
            rows.append(Row("preprocessing", f"plan + cold preprocessing, {n} cases", "s", total,
                            note=f"nnU-Net failed: {error}"))
    else:
        rows.append(Row("preprocessing", f"plan + cold preprocessing, {n} cases", "s", total,
                        note="nnU-Net: not run (needs --nnunet-bin <venv>/bin, full mode; see README)"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 cases")
    parser.add_argument("--data", type=Path, default=DATA, help="an MSD Task04 hippocampus folder")
    parser.add_argument("--repeats", type=int, default=None, help="cold runs (each followed by 3 warm ones)")
    parser.add_argument("--nnunet-bin", type=Path, default=None,
                        help="bin/ of a venv with nnunetv2: times nnUNetv2_plan_and_preprocess too")
    parser.add_argument("--json", default=None, help="also write the rows here (for bench/run.py)")
    args = parser.parse_args()
    data = args.data
    if not data.is_dir():
        data = ROOT / "data_samples" / "hippocampus"
        print(f"{args.data} not found: using the few cases in {data}", file=sys.stderr)
    rows = run(args.quick, data, args.nnunet_bin, args.repeats)
    print_table("preprocessing", rows)
    save_rows(rows, args.json)


if __name__ == "__main__":
    main()
