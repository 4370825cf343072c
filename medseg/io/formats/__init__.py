"""Benchmark dataset layouts read as they ship: each a :class:`~medseg.io.Dataset` subclass.

A format registers itself with :func:`register` under a name (the ``--format`` value) and a
``detect(path) -> bool`` classmethod that recognises its folder layout; :func:`open_dataset`
(:mod:`medseg.io.datasets`) asks :func:`detect_format` before the MSD/nnU-Net and folder-pair
layouts. A format dataset writes predictions in its own files through
:meth:`~medseg.io.Dataset.write_prediction`. Nothing above ``io`` knows the format.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

FORMATS: dict[str, Any] = {}
"""``{name: Dataset subclass}``; each class has ``detect(path) -> bool`` and takes ``(path, **kwargs)``."""

_MODULES: tuple[str, ...] = ("voc", "cityscapes", "camvid", "coco")  # the format modules imported on first use


def register(name: str):
    """Class decorator: make a Dataset subclass the reader of format ``name``."""

    def add(cls):
        FORMATS[name] = cls
        return cls

    return add


def _load() -> None:
    for module in _MODULES:
        importlib.import_module(f"{__name__}.{module}")


def format_names() -> list[str]:
    """The registered format names (the choices of ``--format``)."""
    _load()
    return sorted(FORMATS)


def detect_format(path: str | os.PathLike) -> str | None:
    """The name of the format whose layout ``path`` has, or ``None``."""
    _load()
    path = Path(path)
    for name, cls in FORMATS.items():
        if cls.detect(path):
            return name
    return None


def format_class(name: str):
    """The Dataset class of format ``name``.

    Raises:
        ValueError: naming the known formats when ``name`` is not one.
    """
    _load()
    if name not in FORMATS:
        raise ValueError(f"format={name!r} is not a known dataset format; choose one of {sorted(FORMATS)} "
                         "(or leave it out to detect the layout).")
    return FORMATS[name]
