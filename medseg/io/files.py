"""File-name helpers: full suffixes, case ids and atomic writes."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError

__all__ = ["atomic_path", "case_id_of", "check_case_id", "final_path", "full_suffix", "remove_stale_temporaries"]

_DOUBLE_SUFFIXES = (".nii.gz", ".tar.gz")


def full_suffix(path: str | os.PathLike) -> str:
    """The suffix that names the format: ``.nii.gz`` for ``a.nii.gz``, ``.png`` for ``a.b.png``."""
    name = Path(path).name.lower()
    for suffix in _DOUBLE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def case_id_of(path: str | os.PathLike) -> str:
    """The file name without its format suffix (``case_01.nii.gz`` -> ``case_01``)."""
    name = Path(path).name
    suffix = full_suffix(path)
    return name[: len(name) - len(suffix)] if suffix else name


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    A run that fails half way leaves any earlier file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_case_id(case_id: str, source: object = "dataset") -> str:
    """Return ``case_id`` if it is safe as a file name, else raise :class:`DataError`.

    Case ids name cache and prediction files, so an id may not be empty, hold a path separator,
    ``..``, a control character (NUL...) or start with a dot.

    Raises:
        DataError: naming ``source`` and the id.
    """
    if not isinstance(case_id, str):
        raise DataError(f"{source}: a case id must be a string, got {case_id!r} ({type(case_id).__name__}).")
    problem = (
        "is empty" if not case_id
        else "holds a path separator" if "/" in case_id or "\\" in case_id or os.sep in case_id
        else "holds '..'" if ".." in case_id
        else "starts with a dot" if case_id.startswith(".")
        else "holds a control character" if any(ord(c) < 32 or ord(c) == 127 for c in case_id)
        else None
    )
    if problem:
        raise DataError(f"{source}: case id {case_id!r} {problem}; case ids name files, so rename the case.")
    return case_id


_TEMPORARY = re.compile(r"^\.tmp-(\d+)-")  # the names atomic_path writes to


def final_path(path: str | os.PathLike) -> Path:
    """The file a temporary path of :func:`atomic_path` stands in for (others unchanged)."""
    path = Path(path)
    return path.with_name(_TEMPORARY.sub("", path.name))


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete the temporary files of :func:`atomic_path` under ``folder`` whose writer is gone
    (a killed run's half-written files; they never stand under a final name)."""
    folder = Path(folder)
    for path in folder.rglob(".tmp-*") if folder.is_dir() else ():
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes no temporary file before it cleans up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
