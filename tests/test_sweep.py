"""`pyrovae sweep`: the grid and random points, the CPUs split among workers, a killed sweep
that finishes only what it left (each run resuming bitwise), the same runs on a real Ray
cluster (a head and a worker node started here), and `pyrovae compare` across seeds checked
against the arithmetic done by hand. The pair is a plain Pyro pair written here."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch
from helpers import PYRO_PAIR, run_cli

from pyrovae.errors import ConfigError
from pyrovae.run import compare, engines, sweep

CONFIG = """
run_dir = "{study}"
device = "cpu"
eval_samples = 10
[model]
name = "sweeppair:Decoder"
[guide]
name = "sweeppair:Encoder"
[data]
train_size = 512
val_limit = 32
test_limit = 64
[train]
epochs = {epochs}
batch_size = 16
checkpoint_every = 4
log_every = 8
[sweep]
grid = {{ "model.hidden" = [8, 12] }}
seeds = 1
"""


def study(tmp_path, epochs=1):
    (tmp_path / "sweeppair.py").write_text(PYRO_PAIR)
    config = tmp_path / "study.toml"
    config.write_text(CONFIG.format(study=tmp_path / "study", epochs=epochs))
    return config


def test_a_grid_times_seeds_and_random_points():
    s = sweep.Sweep.of({"grid": {"model.latent_dim": [2, 4], "guide.hidden": [[8], [8, 8]]}, "seeds": 2}, 5)
    runs = [p | {"seed": seed} for p in s.points() for seed in s.seeds]
    assert len(runs) == 8 and s.seeds == [5, 6]
    names = sweep.run_names(runs)
    assert names[0] == "latent_dim=2,hidden=8,seed=5" and names[-1] == "latent_dim=4,hidden=8-8,seed=6"
    both = sweep.run_names([{"model.hidden": 1, "guide.hidden": 2}, {"model.hidden": 3, "guide.hidden": 4}])
    assert both == ["model.hidden=1,guide.hidden=2", "model.hidden=3,guide.hidden=4"]
    table = {
        "search": "random",
        "trials": 50,
        "grid": {"train.objective": ["elbo", "iwae"]},
        "ranges": {
            "train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "model.latent_dim": {"low": 2, "high": 9, "integer": True},
        },
    }
    points = sweep.Sweep.of(table).points()
    assert points == sweep.Sweep.of(table).points()  # seeded: the same table, the same points
    lrs = [p["train.lr"] for p in points]
    assert all(1e-4 <= v <= 1e-2 for v in lrs) and sum(v < 1e-3 for v in lrs) > 10  # log-uniform
    assert {p["train.objective"] for p in points} == {"elbo", "iwae"}
    assert all(isinstance(p["model.latent_dim"], int) and 2 <= p["model.latent_dim"] <= 9 for p in points)
    for bad, said in [
        ({"seeds": 0}, "seeds = 0"),
        ({"grid": {"train.lr": 0.1}}, 'grid "train.lr" = 0.1: give a non-empty list'),
        ({"search": "random"}, "needs trials = N"),
        (
            {"search": "random", "trials": 2, "ranges": {"train.lr": {"low": 0, "high": 1, "log": True}}},
            "A > 0",
        ),
        ({"grids": {}}, "unknown [sweep] key 'grids'"),
    ]:
        with pytest.raises(ConfigError, match=said.replace("[", r"\[").replace("(", r"\(")):
            sweep.Sweep.of(bad)


def test_workers_times_threads_never_exceed_the_cpus():
    assert engines.split_cpus(6, None, None, 2.0) == engines.Workers(2, 1)
    assert engines.split_cpus(1, None, None, 4.0) == engines.Workers(1, 4)  # one run: all threads
    assert engines.split_cpus(6, None, 2, 4.5) == engines.Workers(2, 2)
    assert engines.split_cpus(6, None, None, 16.0, gpus=1) == engines.Workers(1, 16, 1)
    two = engines.split_cpus(6, 2, None, 16.0, gpus=1)
    assert two.threads == 8 and [two.device(i) for i in (0, 1)] == ["cuda:0", "cuda:0"]
    with pytest.raises(ConfigError, match="3 workers x 1 thread exceed the 2 CPUs"):
        engines.split_cpus(6, 3, None, 2.0)


def test_compare_across_seeds_is_the_arithmetic_by_hand():
    """Two settings x three seeds of per-datapoint values: the mean over seeds of the run means,
    their sd over seeds, and the difference paired by seed and datapoint, as computed here."""
    g = torch.Generator().manual_seed(0)
    about = {"dataset": "mnist", "split": "test", "pixels": "dynamic", "num_datapoints": 50, "images": "a"}
    values = {
        (k, s): -90 - k - torch.randn(50, generator=g, dtype=torch.float64) for k in (0, 1) for s in range(3)
    }
    runs = [compare.Scored(f"k={k},seed={s}", about, {"elbo": v}, s) for (k, s), v in values.items()]
    rows = compare.across_seeds(runs, {r.name: r.name.split(",")[0] for r in runs})
    means = torch.tensor([[values[k, s].mean() for s in range(3)] for k in (0, 1)], dtype=torch.float64)
    assert rows[1]["elbo (sd over seeds)"].mean == pytest.approx(float(means[1].mean()))
    assert rows[1]["elbo (sd over seeds)"].spread == pytest.approx(float(means[1].std()))
    d = torch.stack([values[1, s] - values[0, s] for s in range(3)])
    cell = rows[1]["elbo - k=0"]
    assert cell.mean == pytest.approx(float(d.mean()))
    assert cell.spread == pytest.approx(float(d.mean(0).std() / math.sqrt(50)))
    assert cell.also == pytest.approx(float(d.mean(1).std()))
    other = compare.Scored("k=1,seed=0", about | {"images": "b"}, {"elbo": values[1, 0]}, 0)
    with pytest.raises(Exception, match="did not score the same images"):
        compare.across_seeds([runs[0], other], {"k=0,seed=0": "k=0", "k=1,seed=0": "k=1"})


def _status(folder):
    path = folder / "status.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def test_a_killed_sweep_finishes_only_what_is_unfinished_and_resumes_bitwise(tmp_path):
    config = study(tmp_path, epochs=4)
    folder, env = tmp_path / "study", {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "pyrovae", "sweep", str(config), "--workers", "1", "--threads", "1"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    first, second = folder / "hidden=8", folder / "hidden=12"
    deadline = time.time() + 240
    while not (_status(folder).get("hidden=8") and list((second / "checkpoints").glob("step-*.pt"))):
        assert proc.poll() is None and time.time() < deadline, "the sweep ended before it was killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    while engines.is_running(second):  # the worker's lock goes when the kernel has closed its files
        assert time.time() < deadline
        time.sleep(0.02)
    assert not (second / "eval_test.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}
    listed = run_cli(["sweep", "--status", str(folder)], tmp_path).stdout
    assert "evaluated  hidden=8" in listed and "stopped  hidden=12" in listed, listed
    out = run_cli(["sweep", "--resume", str(folder), "--no-progress"], tmp_path)
    assert "2 runs, 1 finished, 1 to run on 1 worker x 1 thread" in out.stdout
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == stamps
    assert (second / "resumes.jsonl").exists() and (second / "eval_test.json").exists()
    reference = tmp_path / "reference"
    fit = [
        sys.executable,
        "-m",
        "pyrovae",
        "fit",
        str(config),
        "--set",
        "model.hidden=12",
        "--run-dir",
        str(reference),
    ]
    subprocess.run(
        [*fit, "--threads", "1", "--no-progress"], cwd=tmp_path, env=env, check=True, capture_output=True
    )
    resumed, straight = (torch.load(p / "checkpoint.pt", weights_only=False) for p in (second, reference))
    for part in ("model", "guide"):
        for key, value in straight[part].items():
            assert torch.equal(resumed[part][key], value), f"{part}.{key} differs after the resume"


@pytest.fixture
def ray_cluster(tmp_path, monkeypatch):
    """A Ray head and a second node on this machine, one CPU each, stopped afterwards."""
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    port = 20000 + os.getpid() % 20000
    common = ["--num-cpus", "1", "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
    head = [*ray, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common]
    short = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    subprocess.run([*head, "--temp-dir", short], env=env, check=True, capture_output=True)
    try:
        subprocess.run(
            [*ray, "start", "--address", f"127.0.0.1:{port}", *common],
            env=env,
            check=True,
            capture_output=True,
        )
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*ray, "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(short, ignore_errors=True)


def test_the_same_runs_on_a_ray_cluster(tmp_path, ray_cluster):
    """Both runs trained as Ray tasks on a two-node cluster give the numbers the local pool gives."""
    import ray

    config = study(tmp_path)
    run_cli(
        ["sweep", str(config), "--workers", "2", "--threads", "1", "--dir", str(tmp_path / "local")], tmp_path
    )
    by_ray = [
        "sweep",
        str(config),
        "--backend",
        "ray",
        "--address",
        ray_cluster,
        "--workers",
        "2",
        "--threads",
        "1",
    ]
    out = run_cli([*by_ray, "--dir", str(tmp_path / "ray_runs")], tmp_path)
    assert "2 of 2 runs finished" in out.stdout and "(ray)" in out.stdout
    ray.init(address=ray_cluster)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    finally:
        ray.shutdown()
    for name in ("hidden=8", "hidden=12"):
        a, b = (torch.load(tmp_path / d / name / "eval_test.pt") for d in ("local", "ray_runs"))
        assert torch.equal(a["is"]["elbo"], b["is"]["elbo"])
