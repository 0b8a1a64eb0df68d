"""Threads from the CPUs a process may use (affinity masks and cgroup quotas, simulated), and
threads chosen by timing (a simulated clock)."""

import json
import os

import pyro
import pytest
import torch

from pyrovae.errors import ConfigError
from pyrovae.inference import scoring
from pyrovae.runtime import threads


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


def test_configure_sets_torch_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_TUNE_THREADS", "0")  # configure(1) sets it; restored after
    before = torch.get_num_threads()
    try:
        choice = threads.configure(1)
        assert choice.threads == torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def tunable(monkeypatch):
    """Tuning allowed (the suite keeps it off), torch at ``threads`` CPU threads, and a clock under
    which one unit of work takes ``cost[threads]`` seconds; torch's setting restored after."""
    monkeypatch.delenv("PYROVAE_TUNE_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()

    def setup(threads_now: int, cost: dict[int, float]):
        torch.set_num_threads(threads_now)
        now = [0.0]

        def clock():  # each unit spans one tick: start's value, then end's = start + cost
            now[0] += cost[torch.get_num_threads()]
            return now[0]

        monkeypatch.setattr(threads, "_clock", clock)

    yield setup
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "cost, chosen, units",
    [
        ({4: 3.0, 2: 1.0, 1: 2.0}, 2, 10),  # fewer is faster down to 2, then 1 is slower
        ({4: 1.0, 2: 2.0}, 4, 7),  # idle: all threads are fastest; 1 is never tried
        ({4: 3.0, 2: 2.0, 1: 1.0}, 1, 10),  # busy cores: one thread
    ],
)
def test_the_tuner_keeps_the_fastest_count_and_restores_torch(tunable, cost, chosen, units):
    tunable(4, cost)
    seen = []
    with threads.Tuner() as tuner:
        while tuner.choice is None:
            with tuner.unit(work=2.0):
                seen.append(torch.get_num_threads())
        assert tuner.choice == torch.get_num_threads() == chosen
        with tuner.unit():  # once chosen, nothing more is timed or changed
            assert torch.get_num_threads() == chosen
    assert len(seen) == units and seen[:4] == [4] * 4  # one warm-up unit, then three timed
    assert torch.get_num_threads() == 4 and tuner.threads == chosen


def test_the_tuner_stays_off_when_the_threads_are_fixed(tunable, monkeypatch):
    tunable(2, {2: 5.0, 1: 1.0})
    for env in ({"OMP_NUM_THREADS": "2"}, {"PYROVAE_TUNE_THREADS": "0"}):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert not threads.tunable() and threads.Tuner().choice == 2
    assert threads.Tuner(enabled=False).choice == 2
    torch.set_num_threads(1)
    assert threads.Tuner().choice == 1  # one thread: nothing to choose
    torch.set_num_threads(2)
    threads.configure(2)  # an explicit count, as --threads: kept from then on
    assert os.environ["PYROVAE_TUNE_THREADS"] == "0" and threads.Tuner().choice == 2
    monkeypatch.delenv("PYROVAE_TUNE_THREADS")
    with threads.Tuner() as tuner:
        tuner.fix(8)  # a resumed run's count, at most torch's
        assert tuner.choice == 2
        tuner.fix(1)
        assert tuner.choice == torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_fit_trains_at_the_timed_choice_as_a_run_fixed_to_it(tunable, tmp_path, monkeypatch):
    from test_train import small_run

    import pyrovae

    def run(name, resume=False, **kw):
        torch.manual_seed(0)
        pyro.clear_param_store()
        model, guide, x, config, record = small_run(tmp_path, **{"max_steps": 12, "checkpoint_every": 6} | kw)
        seen = []
        result = pyrovae.fit(
            model, guide, x, x[:32], config=config, run_dir=tmp_path / name, record=record,
            progress=False, resume=resume, callbacks=[lambda row: seen.append(torch.get_num_threads())],
        )  # fmt: skip
        return [p.detach().clone() for p in (*model.parameters(), *guide.parameters())], seen, result

    tunable(2, {2: 3.0, 1: 1.0})  # one thread measures faster
    tuned, seen, _ = run("tuned")
    assert set(seen) == {1} and torch.get_num_threads() == 2  # trained at 1, torch's 2 restored
    assert json.loads((tmp_path / "tuned" / "versions.json").read_text())["threads"] == 1
    with monkeypatch.context() as m:
        m.setenv("PYROVAE_TUNE_THREADS", "0")
        torch.set_num_threads(1)
        fixed, _, _ = run("fixed")
        torch.set_num_threads(2)
    for a, b in zip(tuned, fixed):  # the timed steps changed nothing: no update, no draw taken
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # stopped at step 6, resumed where two threads now measure faster: it keeps its recorded one
    run("resumed", max_steps=6)
    tunable(2, {2: 1.0, 1: 3.0})
    resumed, seen, result = run("resumed", resume=True)
    assert result.step == 12 and set(seen) == {1}
    for a, b in zip(resumed, fixed):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_evaluate_times_its_chunks_and_reports_the_threads(tunable, ppca):

    model, x = ppca
    guide = model.exact_guide()
    tunable(2, {2: 3.0, 1: 1.0})
    out = scoring.evaluate_data(model, guide, x, num_samples=400, max_rows=400, bits_per_dim=False)
    assert out["threads"] == 1 and torch.get_num_threads() == 2
    exact = model.log_marginal(x).mean().item()  # the exact guide's weights are all log p(x)
    assert out["log_likelihood"]["mean"] == pytest.approx(exact, abs=1e-9)
    tunable(2, {2: 1.0, 1: 3.0})
    again = scoring.evaluate_data(model, guide, x, num_samples=400, max_rows=400, bits_per_dim=False)
    assert again["threads"] == 2


def test_ais_times_its_transitions_and_stays_exact(tunable, ppca, monkeypatch):
    from pyrovae.inference import ais

    model, x = ppca
    tunable(2, {2: 3.0, 1: 1.0})
    seen = []
    clock = threads._clock
    monkeypatch.setattr(threads, "_clock", lambda: seen.append(torch.get_num_threads()) or clock())
    r = ais.ais_log_likelihood(model, model.exact_guide(), x, num_steps=12, num_chains=3, progress=False)
    # from the exact posterior every intermediate distribution is p(z | x): the weights are exact
    torch.testing.assert_close(r.log_likelihood, model.log_marginal(x), rtol=0, atol=1e-10)
    # clock calls: a warm-up transition and three timed at two threads, three timed at one
    assert seen[:8] == [2] * 8 and seen[8:] == [1] * 6 and torch.get_num_threads() == 2


def test_a_report_line_says_why_fewer_threads_were_used():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert threads.note(2) == " (CPU threads: 2)" and threads.note(None) == ""
        assert threads.note(1) == " (CPU threads: 1, timed faster than 2: other jobs share these cores)"
    finally:
        torch.set_num_threads(before)


def test_auto_captures_an_evaluation_of_many_chunks_only(ppca, monkeypatch):
    from pyrovae.inference import chunks, estimators

    model, x = ppca
    built = []
    monkeypatch.setattr(chunks, "Compiled", lambda *a, **k: built.append(a) or a[0])
    monkeypatch.setattr(chunks, "AUTO_CAPTURE_CHUNKS", 5)
    guide = model.exact_guide()
    estimators.evaluate_terms(model, guide, x, num_samples=4, particle_chunk=1, data_chunk=40)
    assert built == []  # 4 chunks: eager
    estimators.evaluate_terms(model, guide, x, num_samples=6, particle_chunk=1, data_chunk=40)
    assert len(built) == 1  # 6 chunks of one shape: one capture
    estimators.evaluate_terms(model, guide, x, num_samples=6, particle_chunk=1, data_chunk=40, compile="none")
    assert len(built) == 1
