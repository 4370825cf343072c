"""Sliding-window inference, medseg next to MONAI: time per volume with the same network, plan and
input, the largest difference between their outputs, and the memory of predicting a large volume.

Three measurements, each alternating medseg and MONAI in one process under
``torch.inference_mode()`` (Gaussian blending, overlap 0.5):

1. an nnU-Net-like MONAI ``DynUNet`` (filters 32..320) at ROI 96^3 over a 192x192x128 volume:
   what a user waits for;
2. a 1x1x1 convolution with the same plan: the window bookkeeping alone (cropping, weighting,
   blending);
3. ``medseg.inference.predict_probabilities`` on a 512x512x300 float32 volume with a 1x1x1
   two-class convolution, next to MONAI's ``sliding_window_inference`` + softmax on the same
   array: the peak resident memory of the call above what was resident before it (libraries,
   network and input array already there), each call in a fresh process, less the peak of the
   network alone on one batch of windows (measured apart, in fresh processes), in units of the
   float32 volume (the issue's target: < 3x plus the model and one batch of windows).

Usage:
    python bench/bench_inference.py            # full size (minutes)
    python bench/bench_inference.py --quick    # toy sizes, seconds
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from common import MB, Row, Stats, alternate, measure, print_table, save_rows
from monai.inferers import sliding_window_inference as monai_sliding_window
from monai.networks.nets import DynUNet

from medseg.inference import InferenceConfig, predict_probabilities, sliding_window_inference

SIZES = {
    "full": {"roi": 96, "volume": (192, 192, 128), "memory_volume": (512, 512, 300), "repeats": 3},
    "quick": {"roi": 32, "volume": (64, 64, 48), "memory_volume": (128, 128, 96), "repeats": 3},
}
TOLERANCE = 1e-3


def nnunet_like(quick: bool) -> tuple[str, torch.nn.Module]:
    """The network of measurement 1 (a two-layer toy in ``--quick``)."""
    torch.manual_seed(0)
    if quick:
        return "toy conv net (1->8->3)", torch.nn.Sequential(
            torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 3, 1))
    net = DynUNet(3, 1, 3, kernel_size=[3] * 5, strides=[1, 2, 2, 2, 2], upsample_kernel_size=[2] * 4,
                  filters=(32, 64, 128, 256, 320))
    return "DynUNet nnU-Net-like (32..320)", net


def compare_windows(label: str, net: torch.nn.Module, x: torch.Tensor, roi: tuple[int, ...],
                    sw_batch: int, repeats: int) -> tuple[list[Row], float]:
    """Time medseg and MONAI sliding windows with ``net`` on ``x``; returns rows and max |diff|."""
    net.eval()
    kwargs = {"overlap": 0.5, "mode": "gaussian"}

    def ours() -> torch.Tensor:
        return sliding_window_inference(x, roi, sw_batch, net, **kwargs)

    def theirs() -> torch.Tensor:
        return monai_sliding_window(x, roi, sw_batch, net, **kwargs)

    with torch.inference_mode():
        diff = float((ours() - theirs()).abs().max())  # doubles as the warm-up
        runs = alternate({"medseg": lambda: measure(ours), "monai": lambda: measure(theirs)},
                         repeats=repeats, warmup=0)
    shape = "x".join(map(str, x.shape[2:]))
    task = f"sliding window, {label}, ROI {roi[0]}^3 over {shape}, sw_batch {sw_batch}"
    check = "ok" if diff < TOLERANCE else "FAIL"
    memory = (f"peak +{np.median(runs['medseg']['peak_mb']):.0f} MB vs "
              f"+{np.median(runs['monai']['peak_mb']):.0f} MB")
    rows = [
        Row("inference", task, "s / volume (wall)", Stats.of(runs["medseg"]["wall_s"]), "MONAI",
            Stats.of(runs["monai"]["wall_s"]), memory=memory,
            note=f"max abs diff {diff:.2g} ({check}, limit {TOLERANCE:g})"),
        Row("inference", task, "CPU s / volume", Stats.of(runs["medseg"]["cpu_s"]), "MONAI",
            Stats.of(runs["monai"]["cpu_s"])),
    ]
    return rows, diff


def _predict_once(which: str, volume: tuple[int, ...], roi: tuple[int, ...], sw_batch: int,
                  threads: int) -> dict[str, float]:
    """In a fresh process: build the input and a 1x1x1 two-class network, then measure one call."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 1).eval()
    image = np.random.default_rng(0).standard_normal((1, *volume), dtype=np.float32)
    config = InferenceConfig(overlap=0.5, mode="gaussian", sw_batch_size=sw_batch)

    def ours() -> np.ndarray:
        return predict_probabilities(net, image, roi_size=roi, config=config)

    def theirs() -> np.ndarray:
        with torch.inference_mode():
            out = monai_sliding_window(torch.from_numpy(image)[None], roi, sw_batch,
                                       lambda w: torch.softmax(net(w), 1), overlap=0.5, mode="gaussian")
            return out[0].numpy()

    result = measure(ours if which == "medseg" else theirs)
    return {**result, "volume_mb": image.nbytes / MB}


def _forward_once(roi: tuple[int, ...], sw_batch: int, threads: int) -> dict[str, float]:
    """In a fresh process: the peak of the network alone on one batch of windows (+ softmax),
    the allowance the issue's memory target adds to its 3x."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 1).eval()
    batch = torch.randn(sw_batch, 1, *roi)

    def forward() -> None:
        with torch.inference_mode():
            torch.softmax(net(batch), 1)

    return measure(forward)


def _in_fresh_process(*args: object, fn=_predict_once) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def memory_of_prediction(volume: tuple[int, ...], roi: tuple[int, ...], sw_batch: int,
                         repeats: int) -> list[Row]:
    """Peak RSS of predicting a large volume with a 1x1x1 two-class network, each call in a fresh
    process (so no memory the allocator kept from an earlier call hides a peak)."""
    threads = torch.get_num_threads()
    runs = alternate({k: (lambda k=k: _in_fresh_process(k, volume, roi, sw_batch, threads))
                      for k in ("medseg", "monai")}, repeats=repeats, warmup=0)
    size_mb = runs["medseg"]["volume_mb"][0]
    # the one-batch forward's own peak (oneDNN workspaces: ~400 MB for 4 x 96^3 here), measured
    # apart in fresh processes and taken off both, as the target allows
    forward_mb = float(np.median([_in_fresh_process(roi, sw_batch, threads, fn=_forward_once)["peak_mb"] for _ in range(2)]))
    ratio = {k: [(p - forward_mb) / size_mb for p in v["peak_mb"]] for k, v in runs.items()}
    raw = {k: np.median(v["peak_mb"]) / size_mb for k, v in runs.items()}
    shape = "x".join(map(str, volume))
    wall = {k: np.median(v["wall_s"]) for k, v in runs.items()}
    met = "met" if np.median(ratio["medseg"]) < 3 else "NOT met"
    note = (f"target < 3x: {met}; volume {size_mb:.0f} MB, allocated before the call; the call's whole peak is "
            f"{raw['medseg']:.2f}x vs {raw['monai']:.2f}x, of which one {sw_batch}-window forward alone is {forward_mb:.0f} MB "
            f"(taken off); wall {wall['medseg']:.1f} s vs {wall['monai']:.1f} s (first call in a fresh process)")
    task = f"predict_probabilities {shape}, 1x1x1 conv 2 classes, ROI {roi[0]}^3: peak RSS above start, less one batch's forward"
    return [Row("inference", task, "x float32 volume", Stats.of(ratio["medseg"]), "MONAI + softmax",
                Stats.of(ratio["monai"]), memory="target < 3x (+ model, one window batch)", note=note)]


def run(quick: bool, sw_batch: int = 4, repeats: int | None = None) -> list[Row]:
    size = SIZES["quick" if quick else "full"]
    repeats = repeats or size["repeats"]
    roi = (size["roi"],) * 3
    x = torch.randn(1, 1, *size["volume"], generator=torch.Generator().manual_seed(0))
    rows: list[Row] = []
    label, net = nnunet_like(quick)
    found, diff = compare_windows(label, net, x, roi, sw_batch, repeats)
    rows += found
    torch.manual_seed(0)
    found, diff2 = compare_windows("1x1x1 conv (bookkeeping only)", torch.nn.Conv3d(1, 3, 1), x, roi,
                                   sw_batch, repeats)
    rows += found
    rows += memory_of_prediction(size["memory_volume"], roi, sw_batch, max(2, repeats - 1))
    if max(diff, diff2) >= TOLERANCE:
        print(f"medseg and MONAI outputs differ by {max(diff, diff2):.3g} >= {TOLERANCE}", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes (seconds)")
    parser.add_argument("--sw-batch", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per implementation")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the rows here (for bench/run.py)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.quick, args.sw_batch, args.repeats)
    print_table("inference", rows)
    save_rows(rows, args.json)
    if any("FAIL" in r.note for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
