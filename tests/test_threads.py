"""Threads from the CPUs a process may use: affinity masks and cgroup quotas, simulated."""

import pytest
import torch

from pyrovae import threads
from pyrovae.errors import ConfigError


def cgroup(tmp_path, lines: str, files: dict[str, str]):
    """A fake /sys/fs/cgroup under tmp_path/root and a fake /proc/self/cgroup holding ``lines``."""
    tmp_path.mkdir(exist_ok=True)
    root = tmp_path / "root"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "cgroup"
    proc.write_text(lines)
    return {"root": root, "proc_cgroup": proc}


def test_cgroup_v2_quota_is_the_smallest_on_the_path(tmp_path):
    where = cgroup(
        tmp_path, "0::/user/job\n", {"user/job/cpu.max": "150000 100000\n", "cpu.max": "max 100000"}
    )
    assert threads.cgroup_quota(**where) == 1.5
    where = cgroup(
        tmp_path, "0::/user/job\n", {"user/job/cpu.max": "max 100000", "user/cpu.max": "50000 100000"}
    )
    assert threads.cgroup_quota(**where) == 0.5  # a parent's quota limits its children too
    where = cgroup(tmp_path / "c", "0::/user/job\n", {"user/job/cpu.max": "max 100000"})
    assert threads.cgroup_quota(**where) is None


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    lines = "4:memory:/x\n3:cpu,cpuacct:/batch/7\n0::/\n"
    files = {
        "cpu,cpuacct/batch/7/cpu.cfs_quota_us": "250000\n",
        "cpu,cpuacct/batch/7/cpu.cfs_period_us": "100000\n",
    }
    assert threads.cgroup_quota(**cgroup(tmp_path, lines, files)) == 2.5
    files = {
        "cpu,cpuacct/batch/7/cpu.cfs_quota_us": "-1\n",
        "cpu,cpuacct/batch/7/cpu.cfs_period_us": "100000\n",
    }
    assert threads.cgroup_quota(**cgroup(tmp_path / "b", lines, files)) is None


def test_a_container_sees_its_own_cgroup_at_the_root(tmp_path):
    # inside a container the path in /proc/self/cgroup names the host's folder, absent here
    where = cgroup(tmp_path, "0::/docker/abc123\n", {"cpu.max": "200000 100000"})
    assert threads.cgroup_quota(**where) == 2.0
    assert threads.cgroup_quota(tmp_path / "none", tmp_path / "missing") is None


@pytest.mark.parametrize(
    "mask, quota, cpus, chosen",
    [
        ({0, 1, 2, 3}, "150000 100000", 1.5, 1),
        ({0, 1, 2, 3}, "max 100000", 4.0, 4),
        ({5}, "800000 100000", 1.0, 1),
    ],
)
def test_threads_from_the_affinity_mask_capped_by_the_quota(tmp_path, monkeypatch, mask, quota, cpus, chosen):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: mask)
    where = cgroup(tmp_path, "0::/\n", {"cpu.max": quota})
    assert threads.available_cpus(**where) == cpus
    choice = threads.choose(environ={}, **where)
    assert (choice.threads, choice.source, choice.cpus) == (chosen, "available CPUs", cpus)
    assert f"{chosen} CPU thread" in choice.describe() and f"{cpus:g}" in choice.describe()


def test_an_explicit_choice_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    where = cgroup(tmp_path, "0::/\n", {"cpu.max": "100000 100000"})
    assert threads.choose(3, environ={"OMP_NUM_THREADS": "2"}, **where).threads == 3
    omp = threads.choose(environ={"OMP_NUM_THREADS": "2"}, **where)
    assert (omp.threads, omp.source) == (2, "OMP_NUM_THREADS") and "OMP_NUM_THREADS" in omp.describe()
    with pytest.raises(ConfigError, match="--threads 0"):
        threads.choose(0, **where)


def test_configure_sets_torch_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        choice = threads.configure(1)
        assert choice.threads == torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
