"""Command lines that open a scan with its proposed segmentation in 3D Slicer and ITK-SNAP."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path

__all__ = ["itksnap_command", "slicer_command"]


def slicer_command(images: Sequence[str | Path], proposal: str | Path) -> str:
    """``Slicer --python-code ...`` that loads the scan (every channel) and the proposal as a
    segmentation on the scan's grid (its reference geometry), ready for the Segment Editor."""
    loads = [f"v{i} = slicer.util.loadVolume({json.dumps(str(Path(p)))})" for i, p in enumerate(images)]
    code = "; ".join([*loads, f"s = slicer.util.loadSegmentation({json.dumps(str(Path(proposal)))})",
                      "s.SetReferenceImageGeometryParameterFromVolumeNode(v0)"])
    return f"Slicer --python-code {shlex.quote(code)}"


def itksnap_command(images: Sequence[str | Path], proposal: str | Path) -> str:
    """``itksnap -g SCAN -s SEG`` (further channels as overlays, ``-o``)."""
    extra = "".join(f" -o {shlex.quote(str(p))}" for p in images[1:])
    return f"itksnap -g {shlex.quote(str(images[0]))} -s {shlex.quote(str(proposal))}{extra}"
