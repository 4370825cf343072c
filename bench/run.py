"""Run every side-by-side bench and write one table: medseg next to MONAI and TorchIO.

Each bench runs in its own process (so one bench's memory and threads do not colour the next),
timing medseg and its peers alternately inside it; this script collects their rows, prints one
markdown table under a line naming the machine, and writes it to ``bench/results.md``.

Usage:
    python bench/run.py                  # full size: a few minutes on a laptop
    nice -n 19 python bench/run.py --quick   # toy sizes, under a minute: checks the scripts run
    python bench/run.py --only sampling --threads 1
    python bench/bench_training.py --json training.json && python bench/run.py --add-rows training.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import load_rows, machine, markdown

HERE = Path(__file__).resolve().parent
BENCHES = ("inference", "sampling", "preprocessing")
LONG = ("training",)  # tens of minutes: run on request (--only training) or fold in with --add-rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the benches run (< 60 s)")
    parser.add_argument("--only", nargs="+", choices=BENCHES + LONG, default=BENCHES, help="benches to run")
    parser.add_argument("--nnunet-bin", type=Path, default=None,
                        help="bin/ of a venv with nnunetv2: times nnUNetv2_plan_and_preprocess next to medseg's preprocessing")
    parser.add_argument("--add-rows", type=Path, nargs="*", default=[],
                        help="rows a bench wrote with --json on its own (e.g. bench_training.py) to add to the table")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for inference (default: torch's; 1 with --quick)")
    parser.add_argument("--out", type=Path, default=HERE / "results.md", help="where the table is written")
    args = parser.parse_args()
    header = machine()
    rows, failed = [], []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as tmp:
        for name in args.only:
            out = Path(tmp) / f"{name}.json"
            command = [sys.executable, str(HERE / f"bench_{name}.py"), "--json", str(out)]
            command += ["--quick"] if args.quick else []
            threads = args.threads or (1 if args.quick else None)
            if name == "inference" and threads:
                command += ["--threads", str(threads)]
            if name == "preprocessing" and args.nnunet_bin:
                command += ["--nnunet-bin", str(args.nnunet_bin)]
            print(f"# running {' '.join(command[1:2] + command[4:])}", flush=True)
            if subprocess.run(command).returncode != 0:
                failed.append(name)
            if out.exists():
                rows += load_rows(out)
    for extra in args.add_rows:
        rows += load_rows(extra)
    mode = "**--quick: toy sizes, the numbers only show that the scripts run.**\n\n" if args.quick else ""
    text = (f"# medseg side by side with MONAI and TorchIO\n\n{mode}{header}\n\n"
            f"Command: `python bench/run.py {' '.join(sys.argv[1:])}` ({time.perf_counter() - start:.0f} s). "
            f"See bench/README.md for what each number measures.\n\n{markdown(rows)}\n")
    print("\n" + text)
    args.out.write_text(text)
    print(f"written to {args.out}")
    if failed:
        sys.exit(f"benches that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
