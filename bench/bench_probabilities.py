"""What saving probabilities costs, and whether their argmax is the written label map.

Trains a small run on an MSD folder (or loads ``--run``), then predicts held-out cases with and
without ``probabilities=True`` and reports: labels unchanged, voxels where the argmax of the saved
float32 (and of a float16 copy) differs from the labels, with and without largest-component
cleaning, the largest |sum - 1|, per-case times and file sizes.

    python bench/bench_probabilities.py --data DATA/msd-task04-hippocampus --run /tmp/prob-run
    python bench/bench_probabilities.py --data ... --run /tmp/prob-run --spacing 1.3,1.0,0.8
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import medseg
from medseg.inference.probabilities import write_probabilities
from medseg.io import MSDDataset
from medseg.preprocessing import Resample

SMALL = {"features": (8, 16, 32, 64), "pool_kernels": ((2, 2, 2),) * 3, "conv_kernels": ((3, 3, 3),) * 4,
         "patch_size": (32, 48, 32), "batch_size": 2}


def _run(data: MSDDataset, run: Path, train: int) -> medseg.Pipeline:
    if not (run / "pipeline.json").is_file():  # 4 x 25 steps; validation picks the postprocessing
        ids = data.case_ids
        pipe = medseg.Pipeline(data, plan=SMALL, device="cpu", training=medseg.TrainingConfig(workers=0, seed=0))
        pipe.fit(ids[:train], ids[train:train + 10], epochs=4, iterations_per_epoch=25, output_dir=run)
    return medseg.Pipeline.load(run, data, device="cpu")


def _timed(call):
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def _case_row(pipe: medseg.Pipeline, sample, out: Path) -> dict:
    spec = pipe.plan.label_spec
    plain, t_plain = _timed(lambda: pipe.predict_case(sample))
    (labels, p), t_prob = _timed(lambda: pipe.predict_case(sample, probabilities=True))
    _, t_npz = _timed(lambda: write_probabilities(p, sample.geometry, out / sample.id, spec))
    _, t_all = _timed(lambda: write_probabilities(p, sample.geometry, out / "maps" / sample.id, spec, maps=True))
    zipped = io.BytesIO()
    np.savez_compressed(zipped, probabilities=p.astype(np.float16))
    return {"voxels": labels.size, "same": bool((plain == labels).all()),
            "diff32": int((spec.decode(p.argmax(0)) != labels).sum()),
            "diff16": int((spec.decode(p.astype(np.float16).argmax(0)) != labels).sum()),
            "sumdev": float(np.abs(p.sum(0) - 1).max()), "t_plain": t_plain, "t_prob": t_prob, "t_npz": t_npz,
            "t_maps": t_all - t_npz, "npz": (out / f"{sample.id}.npz").stat().st_size, "f16z": len(zipped.getvalue()),
            "maps": sum(f.stat().st_size for f in (out / "maps").glob(f"{sample.id}_prob_*"))}


def _report(keep: bool, rows: list[dict]) -> None:
    n, total = len(rows), (lambda key: sum(r[key] for r in rows))
    print(f"largest_component={keep}: {n} cases, {total('voxels')} voxels, labels unchanged: "
          f"{all(r['same'] for r in rows)}; argmax != labels: float32 {total('diff32')} voxels "
          f"({sum(r['diff32'] > 0 for r in rows)} cases), float16 {total('diff16')} "
          f"({sum(r['diff16'] > 0 for r in rows)} cases); max |sum-1| {max(r['sumdev'] for r in rows):.1e}")
    print(f"  per case: predict {1e3 * total('t_plain') / n:.0f} ms, with probabilities "
          f"{1e3 * total('t_prob') / n:.0f} ms, npz {1e3 * total('t_npz') / n:.1f} ms, NIfTI maps "
          f"{1e3 * total('t_maps') / n:.1f} ms; bytes: npz {total('npz') // n}, float16 zipped "
          f"{total('f16z') // n}, maps {total('maps') // n}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an MSD folder (hippocampus)")
    parser.add_argument("--run", required=True, help="run folder: trained here if it holds no pipeline.json")
    parser.add_argument("--train", type=int, default=150, help="cases trained on (the next 10 validate)")
    parser.add_argument("--cases", type=int, default=40, help="held-out cases predicted (the last ones)")
    parser.add_argument("--spacing", default=None, help="predict on this grid instead, e.g. 1.3,1.0,0.8")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = MSDDataset(args.data)
    pipe = _run(data, Path(args.run), args.train)
    if args.spacing:  # the same network on another grid: inversion resamples
        spacing = tuple(float(s) for s in args.spacing.split(","))
        pipe.preprocessing = [Resample(spacing=spacing) if isinstance(s, Resample) else s for s in pipe.preprocessing]
    out = Path(tempfile.mkdtemp())
    for keep in (False, True):
        pipe.inference = medseg.InferenceConfig(**{**pipe.inference.to_dict(), "largest_component": keep})
        _report(keep, [_case_row(pipe, data.load(case), out) for case in data.case_ids[-args.cases:]])


if __name__ == "__main__":
    main()
