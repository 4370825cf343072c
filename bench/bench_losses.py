"""Forward + backward time of each medseg loss next to MONAI's equivalent, in one run.

For each loss the two implementations run alternately on the same batch (B x C classes x
size^d logits and a phantom label map of nested spheres); the table shows medians, their ratio
(medseg / reference, lower is faster), and for the distance losses the worker-side
``precompute`` cost per sample, which medseg takes off the training step.

Usage:
    python bench/bench_losses.py --size 48 --clock cpu   # small, on a shared CPU
    python bench/bench_losses.py --size 96 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import monai.losses as ml
import numpy as np
import torch

try:
    from medseg.losses import create_loss
except ModuleNotFoundError:  # run from a checkout without installing: use the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from medseg.losses import create_loss

Step = Callable[[], None]


def phantom(batch: int, size: int, dims: int) -> np.ndarray:
    """Labels ``(B, *spatial)``: a big sphere (1) holding a small off-centre one (2)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * dims, indexing="ij"))
    labels = np.zeros((batch, *[size] * dims), dtype=np.int64)
    for b in range(batch):
        shift = 0.1 * b
        labels[b][((grid - shift) ** 2).sum(0) < 0.5] = 1
        labels[b][((grid - 0.3 - shift) ** 2).sum(0) < 0.04] = 2
    return labels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_of(
    loss: Callable[..., torch.Tensor],
    logits: torch.Tensor,
    target: torch.Tensor,
    extras: dict[str, torch.Tensor] | None = None,
) -> Step:
    """One forward + backward of ``loss``."""

    def step() -> None:
        logits.grad = None
        loss(logits, target, **(extras or {})).backward()

    return step


def timed(
    step: Step, device: torch.device, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Milliseconds of one ``step`` on ``clock``."""
    sync(device)
    start = clock()
    step()
    sync(device)
    return 1e3 * (clock() - start)


def cases(
    logits: torch.Tensor, labels: torch.Tensor, extras: dict[str, dict[str, torch.Tensor]]
) -> list[tuple[str, Step, str, Step | None]]:
    """(name, medseg step, reference name, reference step)."""
    target = labels[:, None]
    onehot_kw = dict(softmax=True, to_onehot_y=True)
    ours = {name: create_loss(name) for name in ("dice", "generalized_dice", "jaccard", "tversky")}
    ours["dice+ce"] = create_loss("dice+ce")
    out = [
        ("dice", ours["dice"], "monai DiceLoss", ml.DiceLoss(**onehot_kw)),
        (
            "generalized_dice",
            ours["generalized_dice"],
            "monai GeneralizedDiceLoss",
            ml.GeneralizedDiceLoss(**onehot_kw),
        ),
        (
            "jaccard",
            ours["jaccard"],
            "monai DiceLoss(jaccard)",
            ml.DiceLoss(jaccard=True, **onehot_kw),
        ),
        (
            "tversky",
            ours["tversky"],
            "monai TverskyLoss",
            ml.TverskyLoss(alpha=0.3, beta=0.7, **onehot_kw),
        ),
        ("sensitivity_specificity", create_loss("sensitivity_specificity"), "-", None),
        ("ce", create_loss("ce"), "torch CrossEntropyLoss", torch.nn.CrossEntropyLoss()),
        (
            "focal",
            create_loss("focal"),
            "monai FocalLoss",
            ml.FocalLoss(to_onehot_y=True, use_softmax=True),
        ),
        ("topk", create_loss("topk"), "-", None),
        ("lovasz", create_loss("lovasz"), "-", None),
        ("dice+ce", ours["dice+ce"], "monai DiceCELoss", ml.DiceCELoss(**onehot_kw)),
    ]
    steps = []
    for name, mine, ref_name, ref in out:
        ref_target = labels if ref_name.startswith("torch") else target
        ref_step = None if ref is None else step_of(ref, logits, ref_target)
        steps.append((name, step_of(mine, logits, labels), ref_name, ref_step))
    distance = [
        ("boundary", "monai BoundaryLoss", ml.BoundaryLoss(include_background=False, **onehot_kw)),
        ("hausdorff", "monai HausdorffDTLoss", ml.HausdorffDTLoss(**onehot_kw)),
        ("dpce", "-", None),
    ]
    for name, ref_name, ref in distance:
        mine = create_loss(name)
        ref_step = None if ref is None else step_of(ref, logits, target)
        steps.append(
            (
                f"{name} (precomputed)",
                step_of(mine, logits, labels, extras[name]),
                ref_name,
                ref_step,
            )
        )
        steps.append((f"{name} (in forward)", step_of(mine, logits, labels), ref_name, ref_step))
    return steps


def precompute_cost(
    name: str, labels: np.ndarray, classes: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], float]:
    """Extras of ``name`` for the batch, and the median precompute time per sample (ms)."""
    loss = create_loss(name)
    times, maps = [], []
    for sample in labels:
        start = time.perf_counter()
        maps.append(loss.precompute(sample, classes))
        times.append(1e3 * (time.perf_counter() - start))
    extras = {k: torch.from_numpy(np.stack([m[k] for m in maps])).to(device) for k in maps[0]}
    return extras, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, help="patch edge length (voxels)")
    parser.add_argument("--dims", type=int, default=3, choices=(2, 3), help="spatial rank")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=9, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per implementation")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "cpu"),
        help="wall time, or this thread's CPU time (steadier on a shared CPU; needs --threads 1)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "cpu" and (args.threads != 1 or device.type != "cpu"):
        parser.error("--clock cpu measures one CPU thread: use it with --threads 1 on --device cpu")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter

    labels_np = phantom(args.batch, args.size, args.dims)
    labels = torch.from_numpy(labels_np).to(device)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(args.batch, args.classes, *labels.shape[1:], generator=gen).to(device)
    logits.requires_grad_(True)
    extras, worker_ms = {}, {}
    for name in ("boundary", "hausdorff", "dpce"):
        extras[name], worker_ms[name] = precompute_cost(name, labels_np, args.classes, device)

    shape = f"{args.batch} x {args.classes} x {args.size}^{args.dims}"
    print(
        f"# loss forward+backward, {shape}, {device}, {args.threads} thread(s), "
        f"{args.clock} clock, median of {args.repeats}"
    )
    header = f"| {'loss':<28} | {'medseg ms':>9} | {'reference':<26} | {'ref ms':>8} | {'ratio':>5} | {'precompute ms/sample':>20} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, mine, ref_name, ref in cases(logits, labels, extras):
        for _ in range(args.warmup):
            for step in (mine, ref):
                if step is not None:
                    step()
        ours_t, ref_t = [], []
        for i in range(args.repeats):  # alternate (and swap who goes first) so load drifts hit both
            order = [(mine, ours_t), (ref, ref_t)] if i % 2 == 0 else [(ref, ref_t), (mine, ours_t)]
            for step, times in order:
                if step is not None:
                    times.append(timed(step, device, clock))
        ours_ms = statistics.median(ours_t)
        ref_ms = statistics.median(ref_t) if ref_t else float("nan")
        ratio = f"{ours_ms / ref_ms:5.2f}" if ref_t else "    -"
        base = name.split(" ")[0]
        pre = f"{worker_ms[base]:20.1f}" if "precomputed" in name else " " * 19 + "-"
        ref_col = f"{ref_ms:8.1f}" if ref_t else " " * 7 + "-"
        print(f"| {name:<28} | {ours_ms:9.1f} | {ref_name:<26} | {ref_col} | {ratio} | {pre} |")


if __name__ == "__main__":
    main()
