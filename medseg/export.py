"""``medseg export``: a trained run's network as ONNX or TorchScript, plus its pipeline settings.

An export folder holds ``pipeline.json`` (the run's plan, preprocessing and inference settings, and
an ``"export"`` entry naming the network files) and one network file per fold. ``Pipeline.load``
and ``medseg predict`` run it through the same preprocessing, sliding window and inversion as the
run, without the run folder and, for ONNX, without PyTorch's weights.

Every network is checked on the spot: its logits on the plan's patch (batches of one and two)
must equal the PyTorch network's within ``1e-4 + 1e-3 * |reference|``, or the export fails.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import DataError, MedsegError, look_up_option
from .inference.exported import (
    EXPORT_FORMATS,
    ONNX_EXTRA,
    ExportedNetwork,
    MissingExtraError,
    load_network_file,
)
from .io import atomic_path
from .persistence import write_config

__all__ = ["ATOL", "RTOL", "export_network", "export_pipeline", "export_run"]

log = logging.getLogger(__name__)

ATOL, RTOL = 1e-4, 1e-3
"""Parity tolerance: ``|exported - pytorch| <= ATOL + RTOL * |pytorch|`` on every logit."""


class _Logits(nn.Module):
    """The network's first output (deep supervision and shape streams export their main logits)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def _write_onnx(module: nn.Module, example: torch.Tensor, path: Path, dynamic: bool) -> list[int]:
    """Export with torch's dynamo exporter, the batch axis dynamic and, with ``dynamic``, the
    spatial axes too where the network allows it (``Dim.AUTO`` keeps static what it must).
    Returns the dynamic input axes."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError as error:
        raise MissingExtraError(f"{ONNX_EXTRA} ({error}).") from error
    from torch.export import Dim

    axes = (0, *range(2, example.ndim)) if dynamic else (0,)
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=({i: Dim.AUTO for i in axes},),
                                    input_names=["image"], output_names=["logits"], verbose=False)
    program.save(str(path), external_data=False)
    shape = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape
    return [i for i, d in enumerate(shape.dim) if d.dim_param or not d.HasField("dim_value")]


class _quiet_exporter:
    """Silence the exporter's progress lines (they go to the root logger and stdout)."""

    def __enter__(self) -> None:
        self.level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("torch.onnx").setLevel(self.level)


def _write_torchscript(module: nn.Module, example: torch.Tensor, path: Path, dynamic: bool) -> list[int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(path))  # deprecated in torch 2.13, still what libtorch (C++) loads
    return [0]  # traced at the patch size; the batch axis follows the input


_WRITERS: dict[str, Callable[[nn.Module, torch.Tensor, Path, bool], list[int]]] = {
    "onnx": _write_onnx, "torchscript": _write_torchscript}


def check_parity(reference: nn.Module, exported: nn.Module, example: torch.Tensor, where: str) -> float:
    """Largest absolute logit difference on ``example`` and on a batch of two; raises
    :class:`MedsegError` naming ``where`` when one exceeds the tolerance."""
    worst = 0.0
    generator = torch.Generator().manual_seed(1)
    for x in (example, torch.randn((2, *example.shape[1:]), generator=generator)):
        with torch.inference_mode():
            expected, got = reference(x).float(), exported(x).float()
        if got.shape != expected.shape:
            raise MedsegError(f"{where}: the exported network gives logits of shape {tuple(got.shape)} for input "
                              f"{tuple(x.shape)}, PyTorch {tuple(expected.shape)}; the export is not usable.")
        error = (got - expected).abs()
        worst = max(worst, float(error.max()))
        excess = error - (ATOL + RTOL * expected.abs())
        if float(excess.max()) > 0:
            raise MedsegError(
                f"{where}: the exported logits differ from PyTorch's by up to {float(error.max()):.3g} on input "
                f"{tuple(x.shape)} (allowed {ATOL:g} + {RTOL:g} * |logit|); the export was not written. Try the "
                "other --format, or report the architecture.")
    return worst


def export_network(network: nn.Module, example: torch.Tensor, path: str | os.PathLike, *,
                   format: str = "onnx") -> dict[str, Any]:
    """Write ``network`` (on the CPU, in eval mode) to ``path`` and check it there.

    Args:
        network: a PyTorch network mapping ``(B, C, *spatial)`` to logits (or a tuple whose first
            item is the logits).
        example: an input ``(1, C, *patch)``: the shape the sliding window feeds.
        path: the file to write (atomically: nothing is left on failure).
        format: ``"onnx"`` or ``"torchscript"``.

    Returns:
        ``{"file", "dynamic_axes", "max_abs_error"}``.

    Raises:
        MedsegError: the export failed, or its logits differ from PyTorch's beyond the tolerance.
    """
    format = look_up_option(format, tuple(EXPORT_FORMATS), argument="format")
    path, module = Path(path), _Logits(network).cpu().eval()
    failure: Exception | None = None
    for dynamic in (True, False) if format == "onnx" else (False,):  # ONNX: spatial axes dynamic if it works
        try:
            with atomic_path(path) as tmp:  # ".tmp-<pid>-<name>": the suffix stays; nothing is left on failure
                axes = _WRITERS[format](module, example, tmp, dynamic)
                error = check_parity(module, load_network_file(tmp, device="cpu"), example, str(path))
            return {"file": path.name, "dynamic_axes": axes, "max_abs_error": error}
        except MissingExtraError:
            raise
        except Exception as caught:  # noqa: BLE001 - exporters and runtimes raise many types; retry, then report
            log.info("%s export (dynamic spatial axes: %s) failed: %s", format, dynamic, caught)
            failure = caught
    if isinstance(failure, MedsegError):
        raise failure
    raise MedsegError(f"{path}: {format} export failed ({type(failure).__name__}: "
                      f"{' '.join(str(failure).split())[:300]}); try the other --format.") from failure


def export_pipeline(pipe: Any, out: str | os.PathLike, *, format: str = "onnx") -> Path:
    """Export a loaded :class:`~medseg.Pipeline` (its network and fold ensemble) into ``out``.

    Every fold of a cross-validation run is exported (``fold_0.onnx``, ``fold_1.onnx``...) and
    predicts as the run's ensemble does; a single run writes ``network.onnx`` (``.ts`` for
    TorchScript).
    """
    format = look_up_option(format, tuple(EXPORT_FORMATS), argument="format")
    if hasattr(pipe.network, "detect"):  # its outputs are boxes and masks of varying number, not a score map
        raise MedsegError(f"{type(pipe.network).__name__} runs cannot be exported yet (only networks that give one "
                          "score map per class: the semantic architectures and border-core); predict from the run "
                          "folder instead.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    networks = [pipe.network, *pipe.ensemble]
    names = ["network"] if len(networks) == 1 else [f"fold_{k}" for k in range(len(networks))]
    plan = pipe.plan
    example = torch.randn((1, plan.in_channels, *plan.patch_size), generator=torch.Generator().manual_seed(0))
    written = []
    for name, network in zip(names, networks):
        info = export_network(network, example, out / f"{name}{EXPORT_FORMATS[format]}", format=format)
        log.info("exported %s (dynamic axes %s, max |error| %.2g)", info["file"], info["dynamic_axes"],
                 info["max_abs_error"])
        written.append(info)
    config = pipe.config()
    config["history"] = []
    config["export"] = {"format": format, "networks": [w["file"] for w in written],
                        "input": {"channels": plan.in_channels, "patch_size": list(plan.patch_size),
                                  "dynamic_axes": written[0]["dynamic_axes"]},
                        "max_abs_error": max(w["max_abs_error"] for w in written),
                        "tolerance": {"atol": ATOL, "rtol": RTOL}, "torch": torch.__version__}
    write_config(config, out)
    return out


def export_run(run: str | os.PathLike, out: str | os.PathLike, *, format: str = "onnx") -> Path:
    """Export the run (or cross-validation) folder ``run`` into ``out``; see :func:`export_pipeline`."""
    from .pipeline import Pipeline

    run, out = Path(run), Path(out)
    if out.exists() and (out.resolve() == run.resolve() or (out / "model.pt").exists() or (out / "cv.json").exists()):
        raise DataError(f"--out {out} holds a training run; export into a new folder (medseg export RUN --out DIR).")
    pipe = Pipeline.load(run, device="cpu")
    if isinstance(pipe.network, ExportedNetwork):
        raise DataError(f"{run} is an export folder already; export the training run it came from.")
    return export_pipeline(pipe, out, format=format)
