"""Bad input gets a named error before any step, training never applies a non-finite update,
no work is lost to a kill, and untrusted files run no code."""

import dataclasses
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import pyrovae
from pyrovae.data import splits as data
from pyrovae.errors import CheckpointError, ConfigError, DataError, ModelError, NonFiniteError, PyrovaeError
from pyrovae.guides import MLPGuide
from pyrovae.inference.scoring import evaluate_data
from pyrovae.models import VAE
from pyrovae.registry import build_guide, build_model
from pyrovae.run.config import Component, Config, config_from_dict
from pyrovae.run.recipes import build
from pyrovae.training import checkpoint as ckpt_io
from pyrovae.training.catalog import make_objective
from pyrovae.training.segments import read_segments, totals
from pyrovae.training.settings import TrainConfig

CONFIGS = Path(__file__).parents[1] / "configs"
SHARED = Path(os.environ.get("PYROVAE_DATA", Path(__file__).parents[2] / "shared" / "data"))


def tiny(latent=2):
    torch.manual_seed(0)
    return VAE((1, 4, 4), latent, hidden=[8]), MLPGuide((1, 4, 4), latent, hidden=[8])


def binary(n=24, seed=0):
    return torch.bernoulli(torch.full((n, 1, 4, 4), 0.4), generator=torch.Generator().manual_seed(seed))


def fit(model, guide, x, **train):
    return pyrovae.fit(
        model,
        guide,
        x,
        config=TrainConfig(**{"max_steps": 3, "batch_size": 8, **train}),
        device="cpu",
        progress=False,
    )


# ---------------------------------------------------------------- bad input, one test each


def test_wrong_shape_names_the_expected_shape():
    with pytest.raises(
        DataError, match=r"built for images of shape \(1, 4, 4\).*got data of shape \(24, 16\)"
    ):
        fit(*tiny(), binary().flatten(1))


def test_wrong_dtype_names_the_fix():
    with pytest.raises(DataError, match=r"floating-point.*x\.float\(\)"):
        fit(*tiny(), binary().to(torch.int32))
    with pytest.raises(DataError, match=r"torch\.float64.*torch\.float32"):
        fit(*tiny(), binary().double())


@pytest.mark.parametrize(
    "likelihood,values,fits",
    [
        ("bernoulli", 0.5, "continuous_bernoulli"),  # grey pixels: the continuous Bernoulli fits
        ("continuous_bernoulli", 1.5, "gaussian"),  # outside [0, 1]: the Gaussian fits
    ],
)
def test_pixels_outside_the_support_name_the_likelihood_that_fits(likelihood, values, fits):
    model = VAE((1, 4, 4), 2, hidden=[8], likelihood=likelihood)
    guide = MLPGuide((1, 4, 4), 2, hidden=[8])
    with pytest.raises(DataError, match=fits):
        fit(model, guide, torch.full((24, 1, 4, 4), values))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_data(bad):
    x = binary()
    x[5, 0, 1, 2] = bad
    with pytest.raises(DataError, match="NaN or inf"):
        fit(*tiny(), x)
    with pytest.raises(DataError, match="NaN or inf"):
        evaluate_data(*tiny(), x, num_samples=3)


@pytest.mark.parametrize(
    "make,name,close",
    [
        (lambda: build_model("vea", x_shape=(1, 4, 4)), "model", "vae"),
        (lambda: build_guide("mlpp", x_shape=(1, 4, 4), latent_dim=2), "guide", "mlp"),
        (lambda: make_objective("iwea"), "objective", "iwae"),
        (lambda: fit(*tiny(), binary(), compile="captur"), "compile mode", "capture"),
        (lambda: fit(*tiny(), binary(), nan_policy="skipp"), "nan_policy", "skip"),
    ],
)
def test_unknown_names_list_the_known_ones_and_the_closest(make, name, close):
    with pytest.raises(ConfigError, match=rf"unknown {name} .*known: .*Did you mean '{close}'"):
        make()


def test_unknown_and_mistyped_config_keys():
    with pytest.raises(ConfigError, match=r"train\.bacth_size; did you mean 'batch_size'"):
        config_from_dict({"train": {"bacth_size": 10}})
    with pytest.raises(ConfigError, match=r"train\.lr must be float"):
        config_from_dict({"train": {"lr": "fast"}})
    with pytest.raises(ConfigError, match=r"train\.batch_size must be an integer >= 1, got 0"):
        config_from_dict({"train": {"batch_size": 0}})


def test_model_and_guide_sites_that_differ_are_named():
    model, _ = tiny()

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("w", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    with pytest.raises(ModelError, match=r"does not sample \['z'\].*no site \['w'\]"):
        fit(model, guide, binary())
    with pytest.raises(ConfigError, match="guides that fit: mlp2"):
        build(Config(model=Component("vae2", {"latent_dim": [4, 2]}), guide=Component("mlp")), (1, 4, 4))


def test_corrupt_dataset_file_names_the_file_and_checksum(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (SHARED / "MNIST" / "raw").glob("*.gz"):
        (raw / f.name).write_bytes(f.read_bytes())
    broken = raw / "t10k-labels-idx1-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:-100])  # truncated
    monkeypatch.setenv("PYROVAE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(
        DataError, match=r"t10k-labels-idx1-ubyte\.gz is corrupt.*expected ec29112dd5afa0611ce80d1b7f02629c"
    ):
        data.load_split("mnist", "test", root=tmp_path)


# ---------------------------------------------------------------- non-finite values in training


class Poisoned(nn.Module):
    """x ~ N(w z + log x_1, 1): finite unless a datapoint's first coordinate is 0."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(5))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
            pyro.sample(
                "x", dist.Normal(self.w * z[..., None] + torch.log(x[..., :1]), 1.0).to_event(1), obs=x
            )


class PoisonGuide(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 2)

    def forward(self, x):
        loc, raw = self.lin(x).unbind(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3))


def poisoned():
    torch.manual_seed(0)
    x = torch.rand(40, 5, generator=torch.Generator().manual_seed(1)) + 0.5
    x[13, 0] = 0.0  # one datapoint whose log-density is -inf: one bad batch per epoch
    return Poisoned(), PoisonGuide(), x


def poisoned_fit(model, guide, x, run_dir=None, **train):
    config = TrainConfig(**{"batch_size": 10, "log_every": 1, "checkpoint_every": 2, "lr": 0.05, **train})
    return pyrovae.fit(model, guide, x, config=config, device="cpu", progress=False, seed=3, run_dir=run_dir)


def params_of(*modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


def test_a_non_finite_loss_stops_the_run_naming_step_site_and_checkpoint(tmp_path):
    model, guide, x = poisoned()
    with pytest.raises(NonFiniteError) as err:
        poisoned_fit(model, guide, x, tmp_path / "run", max_steps=12)
    message = str(err.value)
    first = int(re.search(r"not finite at step (\d+)", message).group(1))
    assert "the model's sample site 'x'" in message and "nan_policy" in message
    assert f"stopped at step {first}" in message  # on CPU the check runs every step
    assert "Last good checkpoint: " in message and ("checkpoints/step-" in message or first <= 2)
    # that step's update was not applied: the parameters are those of a run of first - 1 steps
    before_model, before_guide, _ = poisoned()
    if first > 1:
        poisoned_fit(before_model, before_guide, x, max_steps=first - 1)
    for a, b in zip(params_of(model, guide), params_of(before_model, before_guide)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_skip_policy_skips_and_counts_the_bad_batches():
    model, guide, x = poisoned()
    result = poisoned_fit(model, guide, x, max_steps=12, nan_policy="skip")  # 3 epochs of 4 batches
    assert result.skipped == 3 and result.step == 12
    assert [r["skipped"] for r in result.metrics if r["kind"] == "epoch"] == [1, 2, 3]
    assert all(torch.isfinite(p).all() for p in params_of(model, guide))
    assert all(r["loss"] is None or math.isfinite(r["loss"]) for r in result.metrics if r["kind"] == "step")


# ---------------------------------------------------------------- no work lost


def cli(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "pyrovae", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


FIT_ARGS = [
    "--device",
    "cpu",
    "--no-progress",
    "--set",
    "data.train_size=5000",
    "--set",
    "data.val_limit=200",
    "--set",
    "data.test_limit=100",
    "--set",
    "train.max_steps=120",
    "--set",
    "train.batch_size=250",
    "--set",
    "train.checkpoint_every=7",
    "--set",
    "train.log_every=1",
    "--set",
    "eval_samples=5",
]


def last_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return json.loads(rows[-1])["step"] if rows else 0
    except json.JSONDecodeError:  # a line being written
        return 0


def stop_at(proc, run: Path, step: int, sig: int) -> None:
    while last_step(run) < step and proc.poll() is None:
        time.sleep(0.002)
    assert proc.poll() is None, f"the run ended before step {step}: {proc.communicate()}"
    proc.send_signal(sig)
    proc.wait(timeout=60)


def final_state(run: Path):
    state = ckpt_io.load(run / "checkpoint.pt")
    rows = [
        {k: v for k, v in json.loads(line).items() if k != "seconds"}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    return state, rows


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path, device):
    config = str(CONFIGS / "mnist_vae.toml")
    args = [*FIT_ARGS[:1], device, *FIT_ARGS[2:]]
    ref = tmp_path / "ref"
    proc = cli("fit", config, "--run-dir", str(ref), *args)
    assert proc.wait(timeout=300) == 0, proc.communicate()
    run = tmp_path / "run"
    stops = sorted(random.Random(7).sample(range(5, 115), 4))
    proc = cli("fit", config, "--run-dir", str(run), *args)
    stop_at(proc, run, stops[0], signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    for step, sig in zip(stops[1:], (signal.SIGTERM, signal.SIGINT, signal.SIGKILL)):
        proc = cli("fit", "--resume", str(run), "--no-progress")
        stop_at(proc, run, step, sig)
        if sig != signal.SIGKILL:  # a checkpoint is saved before exiting, with the command to continue
            out = proc.communicate()[1]
            assert proc.returncode == 128 + sig and f"pyrovae fit --resume {run}" in out
            assert ckpt_io.load(run / "checkpoint.pt")["step"] >= step
    proc = cli("fit", "--resume", str(run), "--no-progress")
    assert proc.wait(timeout=300) == 0, proc.communicate()
    (ref_state, ref_rows), (state, rows) = final_state(ref), final_state(run)
    assert state["step"] == ref_state["step"] == 120
    for key in ("model", "guide"):
        for name, value in ref_state[key].items():
            torch.testing.assert_close(state[key][name], value, rtol=0, atol=0)
    assert rows == ref_rows  # every metrics row once, as in the uninterrupted run
    assert len(list((run / "checkpoints").glob("step-*.pt"))) == 3  # train.keep_checkpoints
    # one segment per process, each from the step its checkpoint held, with its wall and CPU time
    segments = read_segments(run / "segments.jsonl")
    assert [s["segment"] for s in segments] == [1, 2, 3, 4, 5]
    assert [s["resumed"] for s in segments] == [False, True, True, True, True]
    assert [s["step_from"] for s in segments[1:]] == [s["step"] for s in segments[:-1]]
    assert segments[-1]["step"] == 120 and all(s["wall_s"] > 0 and s["cpu_s"] > 0 for s in segments)
    assert totals(segments)["cpu_h"] == pytest.approx(sum(s["cpu_s"] for s in segments) / 3600)


def small_run(tmp_path, **train):
    pyro.set_rng_seed(0)  # what experiment.fit_config does before building from a config
    model, guide = build(
        Config(
            model=Component("vae", {"latent_dim": 2, "hidden": [8]}), guide=Component("mlp", {"hidden": [8]})
        ),
        (1, 4, 4),
    )
    x = torch.bernoulli(torch.full((96, 1, 4, 4), 0.4), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(**{"batch_size": 16, "lr": 1e-2, "checkpoint_every": 4, "max_steps": 12, **train})
    return model, guide, x, config


def test_a_truncated_checkpoint_is_named_and_resume_falls_back(tmp_path):
    torch.manual_seed(0)
    model, guide, x, config = small_run(tmp_path)
    init = [m.state_dict() for m in (model, guide)]
    init = [{k: v.clone() for k, v in s.items()} for s in init]
    pyrovae.fit(model, guide, x, config=config, run_dir=tmp_path / "straight", progress=False)
    straight = params_of(model, guide)
    model.load_state_dict(init[0])
    guide.load_state_dict(init[1])
    pyrovae.fit(model, guide, x, config=config, run_dir=tmp_path / "run", progress=False)
    latest = tmp_path / "run" / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # also truncates the newest step file it links to
    with pytest.raises(CheckpointError, match="not a readable pyrovae checkpoint.*truncated"):
        ckpt_io.load(latest)
    model.load_state_dict(init[0])
    guide.load_state_dict(init[1])
    with pytest.warns(RuntimeWarning, match=r"resuming from .*step-00000008\.pt"):
        result = pyrovae.fit(
            model, guide, x, config=config, run_dir=tmp_path / "run", resume=True, progress=False
        )
    assert result.step == 12
    for a, b in zip(params_of(model, guide), straight):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def test_a_crafted_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": ckpt_io.FORMAT, "payload": Evil(marker)}, run / "checkpoint.pt")
    (run / "config.json").write_text(json.dumps(Config().to_dict()))
    with pytest.raises(CheckpointError, match="not a readable pyrovae checkpoint"):
        ckpt_io.load(run / "checkpoint.pt")
    out = subprocess.run(
        [sys.executable, "-m", "pyrovae", "fit", "--resume", str(run)], capture_output=True, text=True
    )
    assert out.returncode == 2 and "not a readable pyrovae checkpoint" in out.stderr
    assert not marker.exists()


def test_configs_are_data_never_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.toml"
    path.write_text(f"run_dir = \"__import__('os').system('touch {marker}')\"\n")
    config = pyrovae.load_config(path)
    assert config.run_dir.startswith("__import__") and not marker.exists()


# ---------------------------------------------------------------- reproducibility


def test_the_same_config_and_seed_give_the_same_metrics(tmp_path):
    runs = []
    for name in ("a", "b"):
        model, guide, x, config = small_run(tmp_path, log_every=1)
        result = pyrovae.fit(model, guide, x, x[:32], config=config, run_dir=tmp_path / name, progress=False)
        runs.append([{k: v for k, v in r.items() if k != "seconds"} for r in result.metrics])
    assert runs[0] == runs[1]
    versions = json.loads((tmp_path / "a" / "versions.json").read_text())
    assert set(versions) == {"python", "torch", "pyro", "git_commit", "threads", "cpus_available"}
    assert versions["threads"] == torch.get_num_threads() and versions["cpus_available"] >= 1
    assert versions["torch"] == str(torch.__version__) and versions["pyro"] == pyro.__version__


# ---------------------------------------------------------------- property-based

DTYPES = [torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool]
FILLS = ["binary", "grey", "nan", "inf", "negative", "huge"]


def make_tensor(shape, dtype, fill, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    x = {
        "binary": (x > 0.5).double(),
        "grey": x,
        "nan": x.masked_fill(x > 0.9, float("nan")),
        "inf": x.masked_fill(x > 0.9, float("inf")),
        "negative": -x,
        "huge": x * 1e30,
    }[fill]
    return x.to(dtype)


def finite_report(report):
    return all(math.isfinite(report[k]["mean"]) for k in ("elbo", "log_likelihood", "reconstruction", "kl"))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.sampled_from([(12, 1, 4, 4), (12, 16), (12, 1, 4, 5), (0, 1, 4, 4), (12,), (3, 1, 4, 4)]),
    dtype=st.sampled_from(DTYPES),
    fill=st.sampled_from(FILLS),
    seed=st.integers(0, 10),
)
def test_random_tensors_train_and_evaluate_or_raise_pyrovae_errors(shape, dtype, fill, seed):
    model, guide = tiny()
    x = make_tensor(shape, dtype, fill, seed)
    try:
        result = fit(model, guide, x, batch_size=4)
    except PyrovaeError:
        pass
    else:
        assert result.step == 3 and all(torch.isfinite(p).all() for p in params_of(model, guide))
        assert all(
            r["loss"] is not None and math.isfinite(r["loss"]) for r in result.metrics if r["kind"] == "step"
        )
    try:
        report = evaluate_data(model, guide, x, num_samples=3)
    except PyrovaeError:
        pass
    else:
        assert finite_report(report)


TRAIN_VALUES = st.one_of(
    st.integers(-2, 40),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from(
        [
            "elbo",
            "iwae",
            "dreg",
            "meanfield",
            "linear",
            "cyclical",
            "cosine",
            "capture",
            "none",
            "skip",
            "stop",
            "x",
        ]
    ),
    st.none(),
    st.booleans(),
    st.lists(st.integers(0, 3), max_size=2),
)
TRAIN_KEYS = [f.name for f in dataclasses.fields(TrainConfig)] + ["bogus"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(train=st.dictionaries(st.sampled_from(TRAIN_KEYS), TRAIN_VALUES, max_size=4))
def test_random_train_configs_run_or_raise_config_errors(train):
    try:
        config = config_from_dict({"train": train}).train
    except ConfigError:
        return
    config = dataclasses.replace(config, max_steps=min(config.max_steps or 3, 3), epochs=1)
    model, guide = tiny()
    x = binary(24)
    try:
        result = pyrovae.fit(model, guide, x, x[:8], config=config, device="cpu", progress=False)
    except PyrovaeError:
        return
    assert all(torch.isfinite(p).all() for p in params_of(model, guide))
    assert all(r["loss"] is None or math.isfinite(r["loss"]) for r in result.metrics if r["kind"] == "step")
