"""Exported networks next to PyTorch: per-case prediction time with ONNX Runtime, TorchScript and
PyTorch eager (medseg's oneDNN route), alternating in one process, and whether the labels agree.

Three measurements, each through ``Pipeline.predict_case`` (preprocessing, sliding window,
inversion, argmax) or the sliding window alone, the run folder against its exports:

1. hippocampus (3D): the planned U-Net (planned on ``data_samples/hippocampus``), held-out cases
   of ``--hippocampus`` that are not in ``data_samples``;
2. HC18 (2D): the planned 2D U-Net, held-out images of ``--hc18``;
3. an nnU-Net-like MONAI DynUNet (filters 32..320) at ROI 96^3: ``predict_probabilities`` over a
   ``--volume`` volume.

Networks are freshly initialised (seeded; ``--steps`` trains the planned ones a few steps first):
speed does not depend on the weights, and label agreement is counted voxel by voxel.

``--only architectures`` exports every registered architecture (narrow widths) in 2D and 3D in
both formats and prints which export, with their dynamic axes, and why the others do not.

Usage:
    OMP_NUM_THREADS=1 python bench/bench_export.py --cases 4 --repeats 2
    OMP_NUM_THREADS=1 python bench/bench_export.py --only architectures
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, Stats, alternate, machine

from medseg import Pipeline
from medseg.export import export_pipeline
from medseg.inference import InferenceConfig, predict_probabilities
from medseg.inference.exported import load_network_file
from medseg.training import TrainingConfig

BACKENDS = ("pytorch", "onnx", "torchscript")


def _pipelines(data: Path, workdir: Path, steps: int, spatial_dims: int | None) -> dict[str, Pipeline]:
    pipe = Pipeline(data, device="cpu", spatial_dims=spatial_dims,
                    training=TrainingConfig(workers=0, epochs=1, iterations_per_epoch=max(steps, 1)))
    if steps:
        pipe.fit(val_fraction=0)
    pipe.save(workdir / "run")
    out = {"pytorch": Pipeline.load(workdir / "run", device="cpu")}
    for fmt in BACKENDS[1:]:
        start = time.perf_counter()
        export_pipeline(out["pytorch"], workdir / fmt, format=fmt)
        print(f"  export {fmt}: {time.perf_counter() - start:.0f} s", flush=True)
        out[fmt] = Pipeline.load(workdir / fmt, device="cpu")
    print(f"  plan: patch {pipe.plan.patch_size}, network {type(pipe.network).__name__}", flush=True)
    return out


def _held_out(dataset: Path, samples: Path, n: int, pattern: str) -> list[Path]:
    known = {p.name for p in samples.rglob(pattern)}
    return [p for p in sorted(dataset.rglob(pattern)) if p.name not in known and "mask" not in p.name
            and "Annotation" not in p.name][:n]


def bench_cases(name: str, pipes: dict[str, Pipeline], files: list[Path], repeats: int) -> None:
    from medseg.io import Sample, load_image

    samples = [Sample(f.name.split(".")[0], *load_image([f])) for f in files]
    labels: dict[str, list[np.ndarray]] = {}

    def run(backend: str):
        def once() -> dict[str, float]:
            start = time.perf_counter()
            labels[backend] = [pipes[backend].predict_case(s) for s in samples]
            return {"s_per_case": (time.perf_counter() - start) / len(samples)}
        return once

    result = alternate({b: run(b) for b in BACKENDS}, repeats=repeats)
    _report(name, result, {b: sum(int((x != y).sum()) for x, y in zip(labels[b], labels["pytorch"]))
                           for b in BACKENDS[1:]}, sum(x.size for x in labels["pytorch"]))


def bench_dynunet(volume: tuple[int, ...], repeats: int, workdir: Path) -> None:
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    kernels, strides = [[3] * 3] * 5, [[1] * 3] + [[2] * 3] * 4
    net = DynUNet(3, 1, 3, kernels, strides, strides[1:], filters=[32, 64, 128, 256, 320]).eval()
    image = np.random.default_rng(0).normal(size=(1, *volume)).astype(np.float32)
    from medseg.export import export_network

    start = time.perf_counter()
    networks = {"pytorch": net}
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".ts")):
        export_network(net, torch.from_numpy(image[None, :, :96, :96, :96]).clone(), workdir / f"dyn{suffix}", format=fmt)
        networks[fmt] = load_network_file(workdir / f"dyn{suffix}")
    print(f"  exports: {time.perf_counter() - start:.0f} s", flush=True)
    config, outputs = InferenceConfig(sw_batch_size=1), {}

    def run(backend: str):
        def once() -> dict[str, float]:
            start = time.perf_counter()
            outputs[backend] = predict_probabilities(networks[backend], image, roi_size=(96,) * 3, config=config)
            return {"s_per_case": time.perf_counter() - start}
        return once

    result = alternate({b: run(b) for b in BACKENDS}, repeats=repeats)
    argmax = {b: outputs[b].argmax(0) for b in BACKENDS}
    _report(f"DynUNet 96^3 sliding window over {volume}", result,
            {b: int((argmax[b] != argmax["pytorch"]).sum()) for b in BACKENDS[1:]}, argmax["pytorch"].size,
            {b: float(np.abs(outputs[b] - outputs["pytorch"]).max()) for b in BACKENDS[1:]})


SMALL = {  # narrow widths: exportability does not depend on them
    "unet": {"features": (4, 8, 16)},
    "deeplabv3plus": {"widths": (4, 8, 8, 16, 16), "aspp_channels": 8, "low_level_channels": 4},
    "fastfcn": {"widths": (4, 8, 8, 16, 16), "jpu_channels": 4, "head_channels": 8},
    "gatedscnn": {"widths": (4, 8, 8, 16, 16), "aspp_channels": 8, "low_level_channels": 4, "shape_channels": (4, 4, 2)},
    "dynunet": {"patch_size": {2: (32, 32), 3: (16, 16, 16)}, "filters": {2: (4, 8, 8, 16), 3: (4, 8, 8)}},
    "segresnet": {"init_filters": 8, "blocks_down": (1, 1, 1), "blocks_up": (1, 1)},
    "swinunetr": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
    "unetr": {"img_size": {2: (112, 96), 3: (48, 64, 32)}, "feature_size": 4, "hidden_size": 16, "mlp_dim": 16,
              "num_heads": 2},
}


SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}  # the network files an export folder holds


def bench_architectures(names: list[str], formats: list[str], workdir: Path) -> None:
    """Export every registered architecture in 2D and 3D: OK with its dynamic axes, or the reason."""
    from medseg.architectures import create_architecture
    from medseg.export import export_network

    for name in names:
        for d, patch in ((2, (48, 32)), (3, (16, 24, 16))):
            kwargs = {k: v[d] if isinstance(v, dict) else v for k, v in SMALL[name].items()}
            patch = tuple(kwargs["img_size"]) if name == "unetr" else patch
            torch.manual_seed(0)
            net = create_architecture(name, spatial_dims=d, in_channels=1, out_channels=3, **kwargs)
            for fmt in formats:
                start = time.perf_counter()
                try:
                    info = export_network(net, torch.randn(1, 1, *patch), workdir / f"{name}{d}{SUFFIX[fmt]}", format=fmt)
                    line = f"OK, dynamic axes {info['dynamic_axes']}, max |error| {info['max_abs_error']:.1e}"
                except Exception as error:  # noqa: BLE001 - the reason is the result
                    line = f"FAILS: {' '.join(str(error).split())[:200]}"
                print(f"  {name:<14} {d}D {fmt:<12} {line} ({time.perf_counter() - start:.0f} s)", flush=True)


def _report(name: str, result: dict, differing: dict[str, int], voxels: int, error: dict | None = None) -> None:
    stats = {b: Stats.of(result[b]["s_per_case"]) for b in BACKENDS}
    print(f"\n{name}")
    for b in BACKENDS:
        ratio = "" if b == "pytorch" else (f"  {b}/pytorch {stats[b].median / stats['pytorch'].median:.2f}x, "
                                           f"labels differing {differing[b]} of {voxels} voxels"
                                           + (f", max |prob diff| {error[b]:.1e}" if error else ""))
        print(f"  {b:<12} {stats[b].text()} s per case{ratio}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hippocampus", type=Path, default=Path("/work/shared/data/msd-task04-hippocampus"))
    parser.add_argument("--hc18", type=Path, default=Path("/work/shared/data/hc18-fetal-head-ultrasound"))
    parser.add_argument("--cases", type=int, default=4, help="held-out cases per dataset")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0, help="training steps before exporting (0: initialised)")
    parser.add_argument("--volume", default="128,128,96", help="DynUNet volume (0 skips it)")
    parser.add_argument("--only", choices=("hippocampus", "hc18", "dynunet", "architectures"), default=None)
    parser.add_argument("--architectures", default="all", help="with --only architectures: names, comma-separated")
    args = parser.parse_args()
    print(machine(), f"torch threads {torch.get_num_threads()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        samples = ROOT / "data_samples"
        if args.only in (None, "hippocampus"):
            print("\nhippocampus: planning and exporting", flush=True)
            pipes = _pipelines(samples / "hippocampus", work / "hippo", args.steps, None)
            bench_cases(f"hippocampus, {args.cases} held-out cases", pipes,
                        _held_out(args.hippocampus / "imagesTr", samples / "hippocampus" / "imagesTr", args.cases,
                                  "*.nii.gz"), args.repeats)
        if args.only in (None, "hc18"):
            print("\nHC18: planning and exporting", flush=True)
            pipes = _pipelines(samples / "hc18", work / "hc18", args.steps, 2)
            bench_cases(f"HC18, {args.cases} held-out images", pipes,
                        _held_out(args.hc18 / "images", samples / "hc18", args.cases, "*.png"), args.repeats)
        if args.only == "architectures":  # not part of the default run: ~1-4 min per ONNX export on 2 busy cores
            from medseg.architectures import ARCHITECTURES, DETECTORS

            names = sorted(set(ARCHITECTURES) - DETECTORS) if args.architectures == "all" else args.architectures.split(",")
            bench_architectures(names, ["onnx", "torchscript"], work)
            return
        volume = tuple(int(v) for v in args.volume.split(","))
        if args.only in (None, "dynunet") and volume != (0,):
            print("\nDynUNet: exporting", flush=True)
            bench_dynunet(volume, args.repeats, work)


if __name__ == "__main__":
    main()
