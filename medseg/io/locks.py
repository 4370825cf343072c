"""A lock file that says who holds it: one process per piece of work, across processes and machines.

:class:`OwnerLock` creates its file with ``O_CREAT | O_EXCL`` (atomic on local file systems and
on NFS v3 and later), so of the processes that try at once exactly one gets it. The file holds
the owner's host, pid, start time and a random token, as JSON, and the owner touches it every
``heartbeat`` seconds while it holds it. A second process finding it

- takes it over with a warning when the owner is known to be gone: on the same host, its pid is
  dead (a run killed before it could remove its lock); on another host, whose pids cannot be
  checked from here, the file was not touched for ``expire`` seconds (a killed job, a lost node);
- otherwise raises :class:`LockHeld` naming the host and pid.

A take-over is itself guarded by a second exclusive file (``<lock>.takeover``), so two
processes finding the same stale lock never both take it. The lock is released (its file
removed) only by the process that holds it, checked by the token.

Example:
    >>> with OwnerLock("runs/cv/locks/fold_0.lock", what="fold 0"):  # doctest: +SKIP
    ...     train_fold_0()
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import MedsegError

__all__ = ["LockHeld", "OwnerLock", "lock_holder", "lock_owner", "waiting_lock"]

_GRACE_S = 10.0  # an empty or partly written lock file younger than this is being written
HEARTBEAT_S = 60.0  # the owner touches its lock this often
EXPIRE_S = 600.0  # a lock of another host untouched this long is stale


class LockHeld(MedsegError):
    """The lock belongs to another process that runs, or may run."""


def _describe(owner: dict[str, Any]) -> str:
    return f"host {owner.get('host')!r}, pid {owner.get('pid')}"


def _age(path: Path) -> float:
    """Seconds since ``path`` was last written or touched (0 without it)."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return 0.0


def _pid_alive(owner: dict[str, Any]) -> bool:
    try:
        pid = int(owner["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def lock_owner(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The owner a lock file names (``{"host", "pid", "started", "token"}``), ``None`` without
    the file, ``{}`` while it is empty or partly written."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _stale(path: Path, owner: dict[str, Any], expire: float) -> bool:
    """Whether the owner of ``path`` is known to be gone (see the module docstring)."""
    if not owner:
        return _age(path) >= _GRACE_S
    if owner.get("host") == socket.gethostname():
        return not _pid_alive(owner)
    return _age(path) >= expire


def lock_holder(path: str | os.PathLike[str], expire: float = EXPIRE_S) -> dict[str, Any] | None:
    """The owner of the lock ``path`` if it runs or may run; ``None`` when free or stale."""
    owner = lock_owner(path)
    return None if owner is None or _stale(Path(path), owner, expire) else owner


def _create(path: Path, record: dict[str, Any]) -> bool:
    """Create ``path`` holding ``record`` if it does not exist; ``False`` if it does."""
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(handle, (json.dumps(record) + "\n").encode("utf-8"))
        os.fsync(handle)
    finally:
        os.close(handle)
    return True


class OwnerLock:
    """An exclusive lock on a piece of work, held by one process (see the module docstring).

    Args:
        path: the lock file (its folder is created).
        what: names the work in messages, e.g. ``"fold 2"``.
        heartbeat: seconds between touches of the file while it is held.
        expire: seconds without a touch after which a lock of another host is stale.

    Raises:
        LockHeld: from :meth:`acquire` (and ``with``), when another process holds it.
    """

    def __init__(self, path: str | os.PathLike[str], *, what: str = "this work",
                 heartbeat: float = HEARTBEAT_S, expire: float = EXPIRE_S) -> None:
        if not 0 < heartbeat < expire:
            raise ValueError(f"heartbeat={heartbeat} and expire={expire}: need 0 < heartbeat < expire.")
        self.path, self.what, self.heartbeat, self.expire = Path(path), what, heartbeat, expire
        self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": uuid.uuid4().hex}
        self.held = False
        self._stop = threading.Event()

    def acquire(self) -> OwnerLock:
        """Take the lock, taking over a stale one with a warning; raise :class:`LockHeld` if held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a lock released or taken over meanwhile: try again
            self.held = _create(self.path, self.record)
            if not self.held and (owner := lock_owner(self.path)) is not None:
                self._refuse_or_take_over(owner)
            if self.held:
                self._stop.clear()
                threading.Thread(target=self._beat, name=f"lock {self.path.name}", daemon=True).start()
                return self
        raise LockHeld(f"{self.path}: {self.what} kept changing hands while this process tried to take it; retry.")

    def _refuse_or_take_over(self, owner: dict[str, Any]) -> None:
        if _stale(self.path, owner, self.expire):
            self._take_over(owner)
        elif not owner:
            raise LockHeld(f"{self.path}: another process is taking the lock of {self.what} right now; "
                           "wait for it, or retry in a few seconds.")
        elif owner.get("host") != socket.gethostname():
            raise LockHeld(f"{self.what} is locked by {_describe(owner)} on another host (lock {self.path}, touched "
                           f"{_age(self.path):.0f} s ago): it runs there, or died less than {self.expire:.0f} s ago; "
                           f"wait, or delete {self.path} if that process is gone.")
        else:
            raise LockHeld(f"{self.what} is being run by {_describe(owner)} since {owner.get('started', '?')} "
                           f"(lock {self.path}); wait for it to finish, or stop that process first.")

    def _take_over(self, stale: dict[str, Any]) -> None:
        """Replace the stale lock by ours, one process at a time (guarded by ``<lock>.takeover``)."""
        guard = self.path.with_name(self.path.name + ".takeover")
        if not _create(guard, self.record):
            if _stale(guard, lock_owner(guard) or {}, self.expire):  # a take-over killed half way
                guard.unlink(missing_ok=True)
                return
            raise LockHeld(f"{self.path}: another process is taking over the stale lock of {self.what}; retry "
                           f"in a few seconds (or delete {guard} if no process is).")
        try:
            if lock_owner(self.path) == stale:  # nobody took it meanwhile
                self.path.unlink(missing_ok=True)
                gone = _describe(stale) if stale else "an empty lock file"
                warnings.warn(f"{self.path}: took over the lock of {self.what} from {gone}, a process that no "
                              "longer runs (killed?); its work is continued or redone.", stacklevel=5)
                self.held = _create(self.path, self.record)
        finally:
            guard.unlink(missing_ok=True)

    def _beat(self) -> None:
        """Touch the lock file every ``heartbeat`` seconds while this process holds it."""
        while not self._stop.wait(self.heartbeat):
            try:
                if lock_owner(self.path) == self.record:
                    os.utime(self.path)
            except OSError:  # a file system hiccup: the next beat tries again
                pass

    def release(self) -> None:
        """Remove the lock file if this process still holds it."""
        self._stop.set()
        if self.held and lock_owner(self.path) == self.record:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> OwnerLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def waiting_lock(path: Path, what: str, timeout: float = 600.0) -> Iterator[None]:
    """Hold :class:`OwnerLock` ``path``, waiting (up to ``timeout`` s) while another process holds it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            lock = OwnerLock(path, what=what).acquire()
            break
        except LockHeld:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield
    finally:
        lock.release()
