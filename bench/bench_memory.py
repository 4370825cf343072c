"""Peak memory of predicting a large CT with many classes: medseg's class-by-class inversion next
to inverting all class probabilities at once (medseg before, and MONAI's ``Invertd`` path).

A synthetic 512x512x300 CT (a body ellipse of noise inside zero air, 0.75 x 0.75 x 1 mm) goes
through a real CT plan: crop to the non-zero region, resample to a coarser 1 x 1 x 1.5 mm, pad to
the window; a 1x1x1 convolution with K output classes (so the network costs nothing) runs over it
with Gaussian sliding windows (ROI 96^3, overlap 0.5); the class probabilities go back to the
original grid and become a label map. Three paths:

* ``medseg``: ``preprocess`` -> ``predict_probabilities`` -> ``invert_labels`` (one class at a
  time, a running maximum);
* ``medseg-invert``: the same, then ``invert`` (all K channels) -> ``argmax`` (medseg before);
* ``monai``: ``CropForegroundd`` -> ``Spacingd`` -> ``SpatialPadd``, MONAI's
  ``sliding_window_inference`` + softmax, ``Invertd`` (the pad, spacing and crop inverses, on
  all K channels) -> ``argmax``.

Each call runs in a fresh process; the number is the peak RSS of the whole call (preprocessing,
windows, inversion, argmax) above the RSS before it (libraries, network and the input image
already resident), from ``VmHWM`` reset through ``/proc/self/clear_refs``, in GB and in units of
the float32 volume (512x512x300x4 bytes = 300 MiB).

Usage:
    python bench/bench_memory.py                              # 3 and 14 classes, 512x512x300
    python bench/bench_memory.py --classes 14 --depth 120     # a smaller volume
    python bench/bench_memory.py --quick                      # toy size, seconds
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from common import MB, measure

from medseg.inference import InferenceConfig, predict_probabilities
from medseg.io import Geometry, Sample
from medseg.preprocessing import CropForeground, Pad, Resample, invert, invert_labels, preprocess

SPACING, TARGET, ROI = (0.75, 0.75, 1.0), (1.0, 1.0, 1.5), (96, 96, 96)
PATHS = ("medseg", "medseg-invert", "monai")


def synthetic_ct(shape: tuple[int, ...]) -> np.ndarray:
    """``(1, *shape)`` float32: noise inside an ellipse covering 80% of the slice, zero outside."""
    x, y = np.ogrid[: shape[0], : shape[1]]
    body = ((x - shape[0] / 2) / (0.4 * shape[0])) ** 2 + ((y - shape[1] / 2) / (0.4 * shape[1])) ** 2 <= 1
    image = np.random.default_rng(0).standard_normal((1, *shape), dtype=np.float32) + 3.0
    image *= body[None, :, :, None]
    return image


def _medseg(net: torch.nn.Module, image: np.ndarray, per_class: bool) -> np.ndarray:
    sample = Sample("ct", image, Geometry.from_spacing(image.shape[1:], SPACING))
    prepared = preprocess(sample, [CropForeground(), Resample(spacing=TARGET), Pad(min_shape=ROI)])
    config = InferenceConfig(overlap=0.5, mode="gaussian", sw_batch_size=2)
    probabilities = predict_probabilities(net, prepared.image, roi_size=ROI, config=config)
    if per_class:
        return invert_labels(probabilities, prepared)
    return invert(probabilities, prepared).argmax(0)


def _monai(net: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference
    from monai.transforms import Compose, CropForegroundd, Invertd, SpacingD, SpatialPadd

    affine = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))
    pre = Compose([CropForegroundd("image", source_key="image", allow_smaller=True),
                   SpacingD("image", pixdim=TARGET, mode="bilinear"), SpatialPadd("image", ROI)])
    data = pre({"image": MetaTensor(torch.from_numpy(image), affine=affine)})
    with torch.inference_mode():
        out = sliding_window_inference(data["image"][None], ROI, 2, lambda w: torch.softmax(net(w), 1),
                                       overlap=0.5, mode="gaussian")
    data["pred"] = MetaTensor(out[0].as_tensor() if isinstance(out, MetaTensor) else out[0],
                              affine=data["image"].affine)
    del out
    inverted = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(data)["pred"]
    return inverted.argmax(0).numpy()


def _run_once(path: str, shape: tuple[int, ...], classes: int, threads: int) -> dict[str, float]:
    """In a fresh process: build the image and network, then measure one prediction."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, classes, 1).eval()
    image = synthetic_ct(shape)
    call = {"medseg": lambda: _medseg(net, image, True), "medseg-invert": lambda: _medseg(net, image, False),
            "monai": lambda: _monai(net, image)}[path]
    found: dict[str, np.ndarray] = {}
    result = measure(lambda: found.setdefault("labels", call()))
    labels = found["labels"]
    return {**result, "volume_mb": image.nbytes / MB, "classes_found": float(len(np.unique(labels))),
            "checksum": float(np.bincount(labels.ravel().astype(np.int64), minlength=classes)[:classes] @ np.arange(classes))}


def _in_fresh_process(*args: object) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_run_once, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[3, 14], help="network output classes")
    parser.add_argument("--depth", type=int, default=300, help="slices of the 512x512 volume")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="128x128x60: checks that the script runs")
    args = parser.parse_args()
    shape = (128, 128, 60) if args.quick else (512, 512, args.depth)
    print(f"volume {'x'.join(map(str, shape))}, spacing {SPACING} -> {TARGET} mm, ROI {ROI}\n")
    print("| classes | path | peak RSS above start (GB) | x float32 volume | wall s | labels (classes found, checksum) |")
    print("|---|---|---|---|---|---|")
    for k in args.classes:
        for path in args.paths:
            try:
                r = _in_fresh_process(path, shape, k, args.threads)
            except Exception as error:  # e.g. the process was killed for memory
                print(f"| {k} | {path} | failed: {type(error).__name__} {error} | | | |", flush=True)
                continue
            print(f"| {k} | {path} | {r['peak_mb'] / 1024:.2f} | {r['peak_mb'] / r['volume_mb']:.2f} "
                  f"| {r['wall_s']:.1f} | {r['classes_found']:.0f}, {r['checksum']:.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
