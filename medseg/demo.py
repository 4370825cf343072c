"""``medseg demo``: train on the bundled hippocampus sample, then score cases it never saw."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

__all__ = ["run_demo", "sample_data"]


def sample_data(name: str = "hippocampus") -> Path:
    """The bundled ``data_samples/<name>`` folder (from a source checkout)."""
    here = Path(__file__).resolve().parent.parent / "data_samples" / name
    if not here.is_dir():
        raise FileNotFoundError(f"{here}: data_samples/ not found; run the demo from a medseg source checkout.")
    return here


def run_demo(out: str | Path = "runs/demo", *, time_limit: float = 150.0) -> int:
    """Train a 3D U-Net on 22 hippocampus cases (2 more validate) for ``time_limit`` seconds, predict 6 unseen
    cases in their own geometry, and print their Dice."""
    from .evaluation.folders import evaluate_folders
    from .io import MSDDataset
    from .pipeline import Pipeline

    data = MSDDataset(sample_data("hippocampus"))
    train_ids, val_ids, test_ids = data.case_ids[:22], data.case_ids[22:24], data.case_ids[24:]
    start = time.monotonic()
    pipe = Pipeline(data)
    print(pipe.plan)
    print(f"training on {len(train_ids)} cases for {time_limit:.0f} s; testing on {len(test_ids)} unseen cases")
    pipe.fit(train_ids, val_ids, time_limit=time_limit, epochs=1000, iterations_per_epoch=25, output_dir=out)
    predictions = Path(out) / "predictions"
    pipe.predict_cases(test_ids, predictions)  # in each scan's format and geometry
    rows = evaluate_folders(predictions, data.root / "labelsTr", labels=[1, 2], cases=test_ids)
    for case in test_ids:
        dice = [float(r["dice"]) for r in rows if r["case"] == case]
        print(f"  {case}: Dice anterior {dice[0]:.3f}  posterior {dice[1]:.3f}")
    mean = float(np.mean([float(r["dice"]) for r in rows]))
    print(f"mean Dice on {len(test_ids)} unseen cases: {mean:.3f}  ({time.monotonic() - start:.0f} s in all)")
    print(f"predictions (NIfTI, in each scan's geometry): {predictions}")
    return 0
