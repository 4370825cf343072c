"""Exported networks as ``nn.Module`` s: an ONNX Runtime session or a TorchScript module that the
sliding window, mirroring and fold ensembles run exactly as they run a PyTorch network.

``medseg export`` writes them (:mod:`medseg.export`); :func:`load_exported_networks` reads what an
export folder's ``pipeline.json`` lists, so ``Pipeline.load(EXPORT_DIR)`` predicts without the
run folder.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DataError, MedsegError, look_up_option

__all__ = ["EXPORT_FORMATS", "ONNX_EXTRA", "ExportedNetwork", "MissingExtraError", "OnnxNetwork", "TorchScriptNetwork", "load_exported_networks", "onnxruntime_providers"]

#: format name -> file suffix of its network files.
EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}

ONNX_EXTRA = "ONNX export and ONNX Runtime need the optional packages onnx, onnxscript and onnxruntime: pip install 'medseg[onnx]'"


class MissingExtraError(MedsegError, ImportError):
    """An optional package is missing; the message names the extra that installs it."""


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise MissingExtraError(f"{ONNX_EXTRA} ({error}).") from error
    return onnxruntime


def onnxruntime_providers(device: torch.device | str = "cpu") -> list[str]:
    """ONNX Runtime's execution providers for ``device``: CUDA first where the GPU build of
    onnxruntime is installed and a CUDA device is asked for, the CPU always."""
    available = _import_onnxruntime().get_available_providers()
    cuda = torch.device(device).type == "cuda" and "CUDAExecutionProvider" in available
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


class ExportedNetwork(nn.Module):
    """An exported network predicts only: switching it to training raises."""

    def train(self, mode: bool = True) -> ExportedNetwork:
        if mode:
            raise MedsegError(f"{type(self).__name__}: an exported network can only predict; train the run it came from "
                              "(medseg train --resume) and export it again.")
        return super().train(False)


class OnnxNetwork(ExportedNetwork):
    """An ONNX model run by ONNX Runtime, shaped as a network: ``(B, C, *spatial)`` float32 in,
    logits ``(B, K, *spatial)`` out, on the input's device.

    Args:
        path: the ``.onnx`` file.
        device: ``"cuda"`` runs on ONNX Runtime's CUDA provider when its GPU build is installed;
            anything else, or no GPU build, runs on the CPU.
        threads: ONNX Runtime's intra-op threads (default: ``torch.get_num_threads()``).

    Example:
        >>> net = OnnxNetwork("export/network.onnx")  # doctest: +SKIP
        >>> logits = net(torch.zeros(1, 1, 40, 56, 40))  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, *, device: torch.device | str = "cpu",
                 threads: int | None = None) -> None:
        super().__init__()
        ort = _import_onnxruntime()
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=onnxruntime_providers(device))
        except Exception as error:  # onnxruntime raises its own exception types for unreadable models
            raise DataError(f"{self.path}: ONNX Runtime cannot load this model ({type(error).__name__}: "
                            f"{' '.join(str(error).split())[:300]}); export the run again with medseg export.") from error
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run([self.output_name], {self.input_name: array})[0]
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return f"{self.path.name}, providers={self.session.get_providers()}"


class TorchScriptNetwork(ExportedNetwork):
    """A TorchScript file (``torch.jit.trace`` of the network) shaped as a network.

    Args:
        path: the ``.ts`` file ``medseg export --format torchscript`` wrote.
        device: where its weights live.
    """

    def __init__(self, path: str | os.PathLike, *, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.path = Path(path)
        try:
            with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit; libtorch (C++) still loads it
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(self.path), map_location=torch.device(device))
        except (RuntimeError, ValueError) as error:
            raise DataError(f"{self.path}: torch.jit.load cannot read this TorchScript file "
                            f"({' '.join(str(error).split())[:300]}); export the run again with medseg export.") from error
        self.module.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def train(self, mode: bool = True) -> TorchScriptNetwork:
        super().train(mode)
        self.module.eval()
        return self


def load_network_file(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> nn.Module:
    """The network in one exported file, by its suffix (``.onnx`` or ``.ts``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: the exported network file is missing; export the run again "
                        "(medseg export RUN --out DIR) or copy the whole export folder.")
    if path.suffix == EXPORT_FORMATS["onnx"]:
        return OnnxNetwork(path, device=device)
    if path.suffix == EXPORT_FORMATS["torchscript"]:
        return TorchScriptNetwork(path, device=device)
    raise DataError(f"{path}: unknown network file suffix {path.suffix!r}; an export holds "
                    f"{', '.join(sorted(EXPORT_FORMATS.values()))} files.")


def load_exported_networks(folder: str | os.PathLike, export: Mapping[str, Any], *,
                           device: torch.device | str | None = None) -> list[nn.Module]:
    """The networks an export folder's ``pipeline.json`` lists under ``"export"`` (one per fold).

    Raises:
        DataError: the entry is malformed or names a missing or unreadable file.
    """
    folder = Path(folder)
    files = export.get("networks") if isinstance(export, Mapping) else None
    if not isinstance(files, Sequence) or isinstance(files, str) or not files:
        raise DataError(f"{folder}/pipeline.json: 'export' must list its network files under 'networks' "
                        f"(got {export!r}); export the run again with medseg export.")
    look_up_option(str(export.get("format")), tuple(EXPORT_FORMATS), argument="export format")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    for name in files:
        if Path(name).name != name:
            raise DataError(f"{folder}/pipeline.json: network file {name!r} must be a plain file name in the folder.")
    return [load_network_file(folder / name, device=device) for name in files]
