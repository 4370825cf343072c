"""Time to a held-out Dice of 0.85 on hippocampus: medseg's Pipeline against a plain MONAI loop.

Both train the same network (the U-Net medseg plans for the data, built fresh with the same seed)
on the same training cases and are scored on the same held-out cases (the Pipeline's own split:
a fifth of the cases), on 2 CPU threads and one loader worker each:

* **medseg**: ``Pipeline(data).fit(time_limit=T, iterations_per_epoch=25)``, its defaults
  (dice + CE, AdamW 2e-3 with a poly schedule over ``T``, planned patch and batch, a third of
  the patches on foreground, 3D augmentation, the memory-mapped cache). It validates every 25
  steps on the held-out cases; its clock is the trainer's less the time spent validating
  (``val_seconds`` in the history), as MONAI's clock stops for validation. Its time limit
  (and so its learning-rate schedule) still runs on the wall clock, validation included.
* **MONAI**: the tutorial loop: ``LoadImaged``, ``EnsureChannelFirstd``, ``CropForegroundd``,
  ``NormalizeIntensityd(nonzero=True)``, ``SpatialPadd`` in a ``CacheDataset``, then
  ``RandCropByPosNegLabeld(pos=1, neg=1, num_samples=batch)`` and ``RandFlipd`` per axis of the plan's mirror axes,
  ``DiceCELoss(softmax, to_onehot_y)``, AdamW 1e-3 at a constant rate. Every 25 steps the clock
  stops and the held-out cases are scored with MONAI's ``sliding_window_inference`` (ROI = patch,
  overlap 0.5, Gaussian) and ``DiceMetric`` (foreground labels, mean per case, then over cases).

Both Dice values are taken on the cropped, normalised grid (the hippocampus data are 1 mm
isotropic, so no resampling on either side). The bench prints the time at which each first
reaches ``--target`` (``inf`` if it does not within ``--seconds``) and the ratio, and the setup
time (cold cache build) of each.

    python bench/bench_training.py --seconds 600      # about 25 minutes on 2 cores
    python bench/bench_training.py --seconds 60 --device cuda   # a GPU: both sides float16 autocast, cuDNN autotuning
"""

from __future__ import annotations

import argparse
import itertools
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, Row, Stats, save_rows

import medseg  # noqa: E402  (common puts the checkout on sys.path)

DATA = ROOT.parent / "shared" / "data" / "msd-task04-hippocampus"


def first_reach(curve: list[tuple[float, float]], target: float) -> float:
    """Seconds at which ``curve`` (``(seconds, dice)`` points) first reaches ``target``."""
    return next((t for t, d in curve if d >= target), math.inf)


def run_medseg(data, seconds: float, cache: Path, seed: int, device: str = "cpu") -> tuple[list, float, medseg.Pipeline]:
    pipe = medseg.Pipeline(data, device=device, cache_dir=cache, training=medseg.TrainingConfig(seed=seed))
    train_ids, val_ids = pipe.split_cases(val_fraction=0.2)
    start = time.perf_counter()
    pipe.preprocessed_cases().build([*train_ids, *val_ids])
    setup = time.perf_counter() - start
    history = pipe.fit(train_ids, val_ids, time_limit=seconds, iterations_per_epoch=25)
    # the trainer's clock, less the validations before each point (MONAI's clock stops for them too)
    validated = itertools.accumulate((h["val_seconds"] for h in history), initial=0.0)
    return [(h["time"] - v, h["val_dice"]) for h, v in zip(history, validated)], setup, pipe


def run_monai(pipe: medseg.Pipeline, seconds: float, seed: int, device: str = "cpu") -> tuple[list, float]:
    from monai import transforms as mt
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.metrics import DiceMetric
    from monai.utils import set_determinism

    set_determinism(seed)
    torch.manual_seed(seed)
    patch, batch = tuple(pipe.plan.patch_size), pipe.plan.batch_size
    files = {case: {"image": str(pipe.data.cases[case].images[0]), "label": str(pipe.data.cases[case].label)}
             for case in [*pipe.split["train"], *pipe.split["val"]]}
    keys = ["image", "label"]
    mirror_axes = range(3) if pipe.plan.mirror_axes is None else pipe.plan.mirror_axes  # as medseg flips
    base = [mt.LoadImaged(keys), mt.EnsureChannelFirstd(keys), mt.CropForegroundd(keys, source_key="image"),
            mt.NormalizeIntensityd("image", nonzero=True), mt.SpatialPadd(keys, patch)]
    train_tf = mt.Compose(base + [
        mt.RandCropByPosNegLabeld(keys, "label", patch, pos=1, neg=1, num_samples=batch),
        *[mt.RandFlipd(keys, prob=0.5, spatial_axis=a) for a in mirror_axes],
    ])
    start = time.perf_counter()
    train_ds = CacheDataset([files[c] for c in pipe.split["train"]], train_tf, cache_rate=1.0, num_workers=2, progress=False)
    val_ds = CacheDataset([files[c] for c in pipe.split["val"]], mt.Compose(base), cache_rate=1.0, num_workers=2, progress=False)
    setup = time.perf_counter() - start
    cuda = torch.device(device).type == "cuda"  # then float16 autocast and cuDNN autotuning, as medseg's trainer
    loader = DataLoader(train_ds, batch_size=1, shuffle=True, num_workers=1, persistent_workers=True, pin_memory=cuda)
    network = pipe.fresh(seed=seed).network.to(device)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    torch.backends.cudnn.benchmark = cuda
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    metric = DiceMetric(include_background=False, reduction="none")
    classes = pipe.plan.num_classes

    def score() -> float:
        network.eval()
        values = []
        with torch.inference_mode():
            for item in val_ds:
                with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                    logits = sliding_window_inference(item["image"][None].as_tensor(), patch, 4, network, overlap=0.5,
                                                      mode="gaussian", sw_device=device, device="cpu").float()
                prediction = torch.nn.functional.one_hot(logits.argmax(1), classes).movedim(-1, 1)
                reference = torch.nn.functional.one_hot(item["label"][None, 0].as_tensor().long(), classes).movedim(-1, 1)
                values.append(float(np.nanmean(metric(prediction, reference).numpy())))
        network.train()
        return float(np.nanmean(values))

    def endless():
        while True:
            yield from loader

    batches = endless()
    curve, clock, steps = [], 0.0, 0
    network.train()
    while clock < seconds:
        began = time.perf_counter()
        for _ in range(25):
            item = next(batches)
            x = item["image"].as_tensor().to(device, non_blocking=True)
            y = item["label"].as_tensor().to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                loss = loss_fn(network(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            steps += 1
        if cuda:
            torch.cuda.synchronize()
        clock += time.perf_counter() - began
        curve.append((clock, score()))
        print(f"monai  {clock:6.0f} s  step {steps}  val Dice {curve[-1][1]:.4f}", flush=True)
    return curve, setup


def prediction_times(pipe: medseg.Pipeline, rounds: int = 3) -> tuple[list[Row], str]:
    """The trained Pipeline's default prediction of every held-out case (preprocessed grid)
    against MONAI's sliding window at overlap 0.5 and the training patch, alternating."""
    from monai.inferers import sliding_window_inference
    from monai.metrics import DiceMetric

    from medseg.inference import window_starts

    cases = pipe.preprocessed_cases()
    images = {c: np.asarray(cases.image(c)) for c in pipe.split["val"]}
    labels = {c: np.asarray(cases.label(c)) for c in pipe.split["val"]}
    network, patch, classes = pipe.network.eval(), tuple(pipe.plan.patch_size), pipe.plan.num_classes
    device = next(network.parameters()).device
    cuda = device.type == "cuda"

    def ours() -> dict:
        return {c: pipe.predict_probabilities(x).argmax(0) for c, x in images.items()}

    def theirs() -> dict:
        out = {}
        with torch.inference_mode():
            for c, x in images.items():
                with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                    logits = sliding_window_inference(torch.from_numpy(x)[None], patch, 4, network, overlap=0.5, mode="gaussian",
                                                      sw_device=device, device="cpu").float()
                out[c] = torch.softmax(logits, 1)[0].argmax(0).numpy()
        return out

    metric = DiceMetric(include_background=False, reduction="none")

    def dice(predictions: dict) -> float:
        scores = []
        for c, p in predictions.items():
            one_hot = lambda a: torch.nn.functional.one_hot(torch.from_numpy(np.asarray(a, dtype=np.int64)), classes).movedim(-1, 0)[None]  # noqa: E731
            scores.append(float(np.nanmean(metric(one_hot(p), one_hot(labels[c])).numpy())))
        return float(np.mean(scores))

    times = {"medseg": [], "monai": []}
    results = {}
    for r in range(rounds):
        for name, fn in (("medseg", ours), ("monai", theirs))[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    windows = [math.prod(len(s) for s in window_starts(x.shape[1:], patch, (0.5,) * len(patch))) for x in images.values()]
    note = (f"{len(images)} held-out cases; mean Dice medseg {dice(results['medseg']):.4f}, MONAI {dice(results['monai']):.4f}; "
            f"the same {sum(windows)} windows of {patch} for both ({windows.count(1)} cases are one window, a batch of one"
            + (", whose 3D convolutions medseg runs on oneDNN: medseg.inference.kernels)" if not cuda else f"; {device})"))
    row = Row("training", "predict all held-out hippocampus cases (default plan vs overlap 0.5, training patch)", "s",
              Stats.of(times["medseg"]), "MONAI sliding window", Stats.of(times["monai"]), note=note)
    return [row], note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600, help="training seconds per contender")
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true", help="20 s each: checks the script runs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: on a GPU both sides use float16 autocast and cuDNN autotuning")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 20
    torch.set_num_threads(2)
    data = medseg.MSDDataset(args.data)
    cache = Path(tempfile.mkdtemp(prefix="medseg-train-bench-"))
    try:
        medseg_curve, medseg_setup, pipe = run_medseg(data, args.seconds, cache, args.seed, args.device)
        for t, d in medseg_curve:
            print(f"medseg {t:6.0f} s  val Dice {d:.4f}")
        monai_curve, monai_setup = run_monai(pipe, args.seconds, args.seed, args.device)
        predicted, predicted_note = prediction_times(pipe)
        print(predicted[0].medseg, predicted[0].peer_stats, predicted_note)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    ours, theirs = first_reach(medseg_curve, args.target), first_reach(monai_curve, args.target)
    best = lambda curve: max(d for _, d in curve)  # noqa: E731
    note = (f"best held-out Dice in {args.seconds:.0f} s: medseg {best(medseg_curve):.3f}, MONAI {best(monai_curve):.3f}; "
            f"{len(pipe.split['val'])} held-out cases; setup (cold cache) medseg {medseg_setup:.0f} s, MONAI {monai_setup:.0f} s"
            + ("; MONAI did not reach the target: its time is the budget, a lower bound" if math.isinf(theirs) else ""))
    shown = theirs if math.isfinite(theirs) else args.seconds
    row = Row("training", f"time to held-out Dice {args.target} (hippocampus, same U-Net)", "s",
              Stats(ours, ours, ours, 1), "plain MONAI loop", Stats(shown, shown, shown, 1), note=note)
    print(f"\nmedseg reaches {args.target} at {ours:.0f} s, MONAI at {theirs:.0f} s; {note}")
    save_rows([row, *predicted], args.json)


if __name__ == "__main__":
    main()
