"""Threads from the CPUs this process may use, not from the machine's core count.

A process may run on the CPUs of its affinity mask (``os.sched_getaffinity``: what
``taskset``, cpusets and batch schedulers set) for at most its cgroup's CPU quota per period
(cgroup v2 ``cpu.max``, "QUOTA PERIOD" or "max PERIOD"; v1 ``cpu.cfs_quota_us`` and
``cpu.cfs_period_us``, -1 for none; the smallest over the cgroup and its ancestors): QUOTA /
PERIOD CPUs of time, however many cores it sees. torch's default of one thread per core
oversubscribes a process whose share is smaller: its threads are throttled in turn, and each
parallel region waits for the slowest. :func:`choose` picks ``floor`` of that share (at least
one); an explicit number (``--threads``) or ``OMP_NUM_THREADS`` wins. Library calls never change
torch's threads by themselves: :func:`configure` does, and the command line calls it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError

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
        return f"{self.threads} CPU thread{'s' * (self.threads != 1)} ({why})"

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
    """:func:`choose`, then ``torch.set_num_threads`` to it (a process-wide setting)."""
    choice = choose(explicit, **where)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    return choice
