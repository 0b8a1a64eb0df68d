"""Threads from the CPUs this process may use, not from the machine's core count.

A process may run on the CPUs of its affinity mask (``os.sched_getaffinity``: what
``taskset``, cpusets and batch schedulers set) for at most its cgroup's CPU quota per period
(cgroup v2 ``cpu.max``, "QUOTA PERIOD" or "max PERIOD"; v1 ``cpu.cfs_quota_us`` and
``cpu.cfs_period_us``, -1 for none; the smallest over the cgroup and its ancestors): QUOTA /
PERIOD CPUs of time, however many cores it sees. torch's default of one thread per core
oversubscribes a process whose share is smaller: its threads are throttled in turn, and each
parallel region waits for the slowest. :func:`choose` picks ``floor`` of that share (at least
one); an explicit number (``--threads``) or ``OMP_NUM_THREADS`` wins. :func:`configure` applies it
(the command line calls it).

Neither sees other processes busy on the same cores, and a parallel region then waits for a
descheduled thread at every op (``benchmarks/contention.py``: two threads beside one busy process
took twice the time of one). :class:`Tuner` therefore times the same work at torch's threads and at
half as many, down while fewer is faster, and keeps the fastest; ``fit`` and ``evaluate_data``
use it for their duration and then restore torch's setting. An explicit count (``--threads``,
``configure(n)``), ``OMP_NUM_THREADS`` or ``PYROVAE_TUNE_THREADS=0`` keeps the threads fixed.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from pyrovae.errors import ConfigError

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def affinity_cpus() -> int:
    """How many CPUs the affinity mask allows (the core count where the OS has no masks)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _ancestors(folder: Path, top: Path) -> list[Path]:
    """``folder`` and each folder above it up to and including ``top``."""
    out = [folder]
    while folder != top and top in folder.parents:
        folder = folder.parent
        out.append(folder)
    return out


def _quota_v2(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _quota_v1(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def cgroup_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs of time per period that this process's cgroup allows (None: no quota found).

    Reads ``proc_cgroup`` (lines "ID:CONTROLLERS:PATH"; "0::PATH" is cgroup v2) and each
    hierarchy's quota at ``root``/PATH and above (v1: the folder of the cpu controller)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: the unified hierarchy (under unified/ on hybrid systems)
            top, read = (root / "unified" if (root / "unified").is_dir() else root), _quota_v2
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own folder
            names = (controllers, "cpu", "cpu,cpuacct")
            top, read = next((root / n for n in names if (root / n).is_dir()), root), _quota_v1
        else:
            continue
        folder = top / path.lstrip("/")
        quotas += [q for q in map(read, _ancestors(folder, top)) if q is not None]
    return min(quotas) if quotas else None


def available_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float:
    """The CPUs this process may use: the affinity mask's count, capped by the cgroup quota."""
    quota = cgroup_quota(root, proc_cgroup)
    return min(float(affinity_cpus()), quota if quota is not None else math.inf)


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    source: str  #: "--threads", "OMP_NUM_THREADS" or "available CPUs"
    cpus: float  #: what :func:`available_cpus` found

    def describe(self) -> str:
        why = {
            "--threads": "as --threads asks",
            "OMP_NUM_THREADS": "as OMP_NUM_THREADS asks",
        }.get(self.source, f"the CPUs this process may use: {self.cpus:g}, by affinity and cgroup quota")
        timed = self.source == "available CPUs" and self.threads > 1 and tunable()
        if timed:
            why += "; fit and evaluate time fewer and keep the fastest"
        return f"{'up to ' * timed}{self.threads} CPU thread{'s' * (self.threads != 1)} ({why})"

    def record(self) -> dict:
        return {"threads": self.threads, "source": self.source, "cpus_available": self.cpus}


def choose(explicit: int | None = None, environ=os.environ, **where) -> ThreadChoice:
    """How many threads torch should use: ``explicit`` if given, else ``OMP_NUM_THREADS`` if
    set (torch has read it), else ``floor`` of :func:`available_cpus`, at least 1."""
    cpus = available_cpus(**where)
    if explicit is not None:
        if explicit < 1:
            raise ConfigError(f"--threads {explicit}: give a whole number >= 1")
        return ThreadChoice(explicit, "--threads", cpus)
    if environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return ThreadChoice(max(1, int(environ["OMP_NUM_THREADS"])), "OMP_NUM_THREADS", cpus)
    return ThreadChoice(max(1, math.floor(cpus)), "available CPUs", cpus)


def configure(explicit: int | None = None, **where) -> ThreadChoice:
    """:func:`choose`, then ``torch.set_num_threads`` to it (a process-wide setting); an
    ``explicit`` count is kept from then on (:class:`Tuner` off, ``PYROVAE_TUNE_THREADS=0``)."""
    choice = choose(explicit, **where)
    if explicit is not None:
        os.environ["PYROVAE_TUNE_THREADS"] = "0"
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    return choice


def tunable(environ=os.environ) -> bool:
    """Whether :class:`Tuner` may change torch's threads: not after ``configure(n)``, nor when
    ``OMP_NUM_THREADS`` (torchrun sets it to 1 per rank) or ``PYROVAE_TUNE_THREADS=0`` is set."""
    return environ.get("PYROVAE_TUNE_THREADS", "1") != "0" and "OMP_NUM_THREADS" not in environ


def note(used: int | None) -> str:
    """The " (CPU threads: N)" of a report line, saying why when a timed choice ``used`` fewer
    threads than torch has; empty for None (not on CPU)."""
    if used is None:
        return ""
    n = torch.get_num_threads()
    why = f", timed faster than {n}: other jobs share these cores" if used < n else ""
    return f" (CPU threads: {used}{why})"


def _clock() -> float:
    return time.perf_counter()


class Tuner:
    """Torch's CPU threads chosen by timing units of the same work (``with tuner.unit(work)``):
    ``warm`` units warm up (a capture, allocations), then ``timed`` units at each candidate, from
    torch's threads down by halves while their mean time (per ``work``) falls; the fastest
    candidate is kept as :attr:`choice`. A context manager: on leaving, torch's threads are
    what they were. Disabled (``choice`` = torch's threads, nothing timed) unless ``enabled``,
    :func:`tunable` and torch has more than one thread."""

    def __init__(self, enabled: bool = True, timed: int = 3, warm: int = 1):
        self.initial = torch.get_num_threads()
        self.on = enabled and tunable() and self.initial > 1
        self.timed = timed
        self.threads = self.initial  #: the count the current unit runs with
        self.choice: int | None = None if self.on else self.initial
        self._best: tuple[int, float] | None = None  # (threads, seconds per unit of work)
        self._times: list[float] = []
        self.warm = warm  #: units still to run before timing (0: the first unit is timed)

    def __enter__(self) -> "Tuner":
        return self

    def __exit__(self, *exc) -> None:
        if torch.get_num_threads() != self.initial:  # self.threads keeps the count last used
            torch.set_num_threads(self.initial)

    def fix(self, threads: int) -> None:
        """Keep ``threads`` (at most torch's initial count) without timing, e.g. a resumed run's."""
        if self.on:
            self.choice = max(1, min(threads, self.initial))
            self._set(self.choice)

    @contextmanager
    def unit(self, work: float = 1.0):
        """Run the block as ``work`` units of work, timed while no choice is made."""
        if self.choice is not None:
            yield
            return
        start = _clock()
        yield
        seconds = (_clock() - start) / work
        if self.warm > 0:
            self.warm -= 1
            return
        self._times.append(seconds)
        if len(self._times) == self.timed:  # the mean: a busy core makes some units far slower
            self._next(sum(self._times) / self.timed)

    def _next(self, seconds: float) -> None:
        self._times = []
        if self._best is None or seconds < self._best[1]:
            self._best = (self.threads, seconds)
            if self.threads > 1:
                self._set(self.threads // 2)
                return
        self.choice = self._best[0]
        self._set(self.choice)

    def _set(self, threads: int) -> None:
        self.threads = threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
