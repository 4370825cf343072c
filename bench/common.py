"""What the side-by-side benches share: alternating runs, summaries, memory and CPU probes, the
machine line, and the markdown table.

Memory is read from Linux's ``/proc``: a call's peak is ``VmHWM`` after resetting it through
``/proc/self/clear_refs`` (so each call in one process gets its own peak), minus ``VmRSS`` before
the call; worker processes are charged their ``Pss`` (shared pages split between the processes
that map them). CPU time of worker processes comes from ``/proc/<pid>/stat`` while they live and
from ``RUSAGE_CHILDREN`` once they are reaped.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing medseg
    sys.path.insert(0, str(ROOT))

MB = 2**20
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# -- summaries and rows -------------------------------------------------------------------------
@dataclass(frozen=True)
class Stats:
    """Median and range of repeated measurements."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        return cls(statistics.median(values), min(values), max(values), len(values))

    def text(self, digits: int = 3) -> str:
        fmt = _fmt(digits)
        return f"{fmt(self.median)} [{fmt(self.low)}–{fmt(self.high)}]"


def _fmt(digits: int) -> Callable[[float], str]:
    return lambda v: f"{v:.{digits}g}" if abs(v) < 10**digits else f"{v:.0f}"


@dataclass
class Row:
    """One line of the results table: medseg next to one peer for one measurement.

    ``ratio`` is medseg / peer of the medians; ``speedup`` is how many times better medseg is
    (peer / medseg for times and memory, medseg / peer for throughputs).
    """

    bench: str
    task: str
    unit: str
    medseg: Stats
    peer: str = "-"
    peer_stats: Stats | None = None
    higher_is_better: bool = False
    memory: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.peer_stats is None or self.peer_stats.median == 0:
            return None
        return self.medseg.median / self.peer_stats.median

    @property
    def speedup(self) -> float | None:
        r = self.ratio
        if r is None or r == 0:
            return None
        return r if self.higher_is_better else 1 / r

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Row:
        d = dict(d)
        d["medseg"] = Stats(**d["medseg"])
        d["peer_stats"] = Stats(**d["peer_stats"]) if d.get("peer_stats") else None
        return cls(**d)


def save_rows(rows: list[Row], path: str | os.PathLike | None) -> None:
    if path:
        Path(path).write_text(json.dumps([r.to_dict() for r in rows], indent=1))


def load_rows(path: str | os.PathLike) -> list[Row]:
    return [Row.from_dict(d) for d in json.loads(Path(path).read_text())]


def markdown(rows: list[Row]) -> str:
    """The results as one markdown table."""
    head = ("| bench | measurement | unit | medseg median [min–max] | peer | peer median [min–max] "
            "| medseg/peer | speed-up | memory | note |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.3g}"
        speed = "-" if r.speedup is None else f"{r.speedup:.3g}x"
        peer = "-" if r.peer_stats is None else r.peer_stats.text()
        better = "higher is better" if r.higher_is_better else "lower is better"
        lines.append(f"| {r.bench} | {r.task} | {r.unit} ({better}) | {r.medseg.text()} | {r.peer} | {peer} "
                     f"| {ratio} | {speed} | {r.memory} | {r.note} |")
    return "\n".join(lines)


def machine() -> str:
    """CPU model, cores, load and library versions, as one markdown paragraph."""
    import monai
    import torch

    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    try:
        import torchio

        tio = torchio.__version__
    except ImportError:
        tio = "not installed"
    return (f"**Machine:** {model}, {os.cpu_count()} logical cores ({usable} usable), load average "
            f"{load} at start; Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), monai {monai.__version__}, torchio {tio}.")


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n## {title}\n\n{markdown(rows)}\n", flush=True)


# -- alternating runs ---------------------------------------------------------------------------
def alternate(
    candidates: dict[str, Callable[[], dict[str, float]]], *, repeats: int, warmup: int = 1
) -> dict[str, dict[str, list[float]]]:
    """Run each candidate ``warmup`` times untimed, then ``repeats`` rounds of all of them in turn,
    rotating who goes first, so that drifts in machine load hit every candidate alike.

    Each call returns its measurements (e.g. ``{"wall_s": ..., "peak_mb": ...}``); the result maps
    candidate -> measurement -> values.
    """
    for _ in range(warmup):
        for run in candidates.values():
            run()
    names = list(candidates)
    out: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for i in range(repeats):
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            for key, value in candidates[name]().items():
                out[name].setdefault(key, []).append(value)
    return out


# -- memory -------------------------------------------------------------------------------------
def _status(pid: int | str = "self") -> dict[str, int]:
    """``/proc/<pid>/status`` memory lines in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) * 1024
    return out


def rss() -> int:
    """Resident bytes of this process now."""
    return _status()["VmRSS"]


@dataclass
class Peak:
    """Filled by :func:`peak_memory`: the call's peak RSS above the RSS it started with."""

    before: int = 0
    peak: int = 0
    exact: bool = True

    @property
    def extra(self) -> int:
        return max(0, self.peak - self.before)


@contextmanager
def peak_memory() -> Iterator[Peak]:
    """Measure the peak resident memory of the block, above what was resident when it began.

    Uses ``VmHWM`` reset through ``/proc/self/clear_refs``; where that is not allowed, falls back
    to ``ru_maxrss`` (then ``exact`` is False: an earlier, higher peak hides this one).
    """
    result = Peak(before=rss())
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        result.exact = False
    start_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        yield result
    finally:
        if result.exact:
            result.peak = _status()["VmHWM"]
        else:  # only a new all-time high is visible
            end_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            result.peak = end_max if end_max > start_max else result.before


def measure(fn: Callable[[], object]) -> dict[str, float]:
    """Wall seconds, this process's CPU seconds and peak extra MB of one call."""
    with peak_memory() as mem:
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall_s": wall, "cpu_s": cpu, "peak_mb": mem.extra / MB}


# -- child processes ----------------------------------------------------------------------------
def children() -> list[int]:
    """Process ids of this process's live children."""
    pids: set[int] = set()
    try:
        for task in Path("/proc/self/task").iterdir():
            text = (task / "children").read_text().split()
            pids.update(int(p) for p in text)
        return sorted(pids)
    except OSError:
        me = os.getpid()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == me:
                    pids.add(int(stat.parent.name))
            except (OSError, IndexError, ValueError):
                continue
        return sorted(pids)


def _cpu_of(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _reaped_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CPUSnapshot:
    """CPU seconds of this process and of its children at one moment."""

    own: float = 0.0
    live: dict[int, float] = field(default_factory=dict)
    reaped: float = 0.0

    @classmethod
    def take(cls) -> CPUSnapshot:
        live = {p: c for p in children() if (c := _cpu_of(p)) is not None}
        return cls(time.process_time(), live, _reaped_cpu())

    def since(self, start: CPUSnapshot) -> tuple[float, float]:
        """(own, children) CPU seconds spent between ``start`` and this snapshot.

        A child alive at both moments counts its difference; one started in between counts all
        of its time; one reaped in between counts its reaped total minus what it had at ``start``.
        """
        kids = sum(c - start.live.get(p, 0.0) for p, c in self.live.items())
        gone = sum(c for p, c in start.live.items() if p not in self.live)
        kids += (self.reaped - start.reaped) - gone
        return self.own - start.own, max(0.0, kids)


def children_pss() -> int:
    """Proportional set size (bytes) summed over this process's live children."""
    total = 0
    for pid in children():
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total
