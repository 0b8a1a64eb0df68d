"""What a user watches and keeps: metrics after a resume, progress bars, TensorBoard, the latent
command, config validation before anything is written, and the non-finite message."""

import json
import re
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyrovae
from pyrovae.data.splits import SHAPES, Split
from pyrovae.errors import ConfigError, NonFiniteError, PyrovaeError
from pyrovae.guides import MLPGuide
from pyrovae.models import VAE
from pyrovae.run import cli, recipes
from pyrovae.run.config import apply_overrides, config_from_dict, load_config
from pyrovae.run.configcheck import validate
from pyrovae.training.settings import TrainConfig

CONFIGS = Path(__file__).parents[1] / "configs"


def binary(n, seed=0):
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.2), generator=torch.Generator().manual_seed(seed))


class Crash(Exception):
    pass


def _run(run_dir, crash_at=None, resume=False):
    torch.manual_seed(0)
    model, guide = VAE((1, 28, 28), 4, hidden=[32]), MLPGuide((1, 28, 28), 4, hidden=[32])

    def crash(row):
        if crash_at is not None and row["kind"] == "step" and row["step"] == crash_at:
            raise Crash  # a process killed right after this row: no checkpoint at this step

    cfg = TrainConfig(epochs=3, batch_size=16, log_every=5, checkpoint_every=7)
    return pyrovae.fit(
        model,
        guide,
        binary(96),
        binary(32, 1),
        config=cfg,
        seed=3,
        device="cpu",
        run_dir=run_dir,
        resume=resume,
        progress=False,
        callbacks=[crash],
    )


def _rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_metrics_rows_after_a_resume_equal_the_uninterrupted_run(tmp_path):
    _run(tmp_path / "a")
    with pytest.raises(Crash):
        _run(tmp_path / "b", crash_at=10)  # checkpoint at step 7; the row of step 10 averages steps 6-10
    _run(tmp_path / "b", resume=True)
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a")
    assert [r["step"] for r in _rows(tmp_path / "a") if r["kind"] == "step"] == [5, 10, 15, 18]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tiny") / "run"
    sets = "data.train_size=512 data.val_limit=64 data.test_limit=64 train.epochs=2 train.batch_size=64"
    sets += " eval_samples=4"
    args = (
        f"fit {CONFIGS / 'mnist_vae.toml'} --run-dir {run} --device cpu --no-progress --tensorboard".split()
    )
    code = cli.main(args + [a for kv in sets.split() for a in ("--set", kv)])
    assert code == 0
    return run


def test_evaluate_and_diagnose_show_progress_bars(tiny_run, capsys):
    for command in (
        ["evaluate", str(tiny_run), "--device", "cpu", "--num-samples", "20"],
        ["diagnose", str(tiny_run), "--device", "cpu", "--limit", "32", "--num-samples", "40"],
    ):
        assert cli.main(command) == 0
        err = capsys.readouterr().err
        assert "chunk/s" in err or "s/chunk" in err, err  # tqdm's rate, with its ETA
        assert cli.main([*command, "--no-progress"]) == 0
        assert "chunk" not in capsys.readouterr().err
    assert cli.main(["list", "--no-progress"]) == 0


def test_the_thread_choice_is_printed_once_and_recorded(tiny_run, capsys):
    before = torch.get_num_threads()
    try:
        command = ["evaluate", str(tiny_run), "--device", "cpu", "--num-samples", "4", "--no-progress"]
        assert cli.main([*command, "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        out = capsys.readouterr().out
        assert out.count("pyrovae: ") == 1 and out.startswith("pyrovae: 1 CPU thread (as --threads asks)")
        assert "(CPU threads: 1)" in out  # the evaluation's line: the threads it computed with
    finally:
        torch.set_num_threads(before)
    versions = json.loads((tiny_run / "versions.json").read_text())
    assert versions["threads"] >= 1 and versions["cpus_available"] >= 1


def test_tensorboard_events_are_written_and_read_back(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tiny_run / "tensorboard"))
    acc.Reload()
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in rows if r["kind"] == "step"]
    vals = [(r["step"], r["val_elbo"]) for r in rows if r["kind"] == "epoch"]
    for tag, expected in (("step/loss", losses), ("epoch/val_elbo", vals)):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [s for s, _ in expected]
        assert [e.value for e in events] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert {"samples", "reconstructions"} <= set(acc.Tags()["images"])
    assert len(acc.Images("samples")) == 2  # one grid per epoch


def test_latent_writes_only_the_latent_plots(tiny_run, tmp_path):
    for name in ("samples.png", "reconstructions.png", "latent.png"):
        (tiny_run / name).unlink()
    assert cli.main(["latent", str(tiny_run), "--device", "cpu", "--limit", "64"]) == 0
    assert (tiny_run / "latent.png").exists()
    assert not (tiny_run / "samples.png").exists() and not (tiny_run / "reconstructions.png").exists()


def test_a_bad_config_is_refused_before_anything_is_written(tmp_path, capsys):
    run = tmp_path / "never"
    for override, words in (
        ("train.kl_schedule=linearr", "KL schedule.*'linear'"),
        ('guide.hidden="gated"', "guide.hidden must be a list of int"),
        ("model.prior=true", "model.prior must be str"),
        ("seed=99999999999", "config.seed"),
    ):
        code = cli.main(
            [
                "fit",
                str(CONFIGS / "mnist_vae.toml"),
                "--run-dir",
                str(run),
                "--set",
                override,
                "--data-root",
                str(tmp_path / "no-data-here"),
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert re.search(words, err), err
        assert not run.exists()  # no config.json, versions.json or metrics.jsonl; no data loaded


def test_the_non_finite_error_says_what_is_true_of_the_checkpoints(tmp_path):
    def model(x):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))
            pyro.sample("x", dist.Normal(loc + z + torch.log(x), 1.0), obs=x)  # log 0: -inf at the first step

    def guide(x):
        scale = pyro.param("scale", torch.ones(()), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), scale))

    x = torch.rand(16) + 0.5
    x[3] = 0.0

    with pytest.raises(NonFiniteError, match=r"Last good checkpoint: none yet \(.*has no checkpoint"):
        pyrovae.fit(
            model,
            guide,
            x,
            config=TrainConfig(max_steps=3),
            device="cpu",
            run_dir=tmp_path / "r",
            progress=False,
        )
    with pytest.raises(NonFiniteError, match=r"Last good checkpoint: none \(no run directory\)"):
        pyrovae.fit(model, guide, x, config=TrainConfig(max_steps=3), device="cpu", progress=False)


# ------------------------------------------------------------------ generated overrides

KEYS = {
    "model": ["latent_dim", "hidden", "activation", "likelihood", "sigma", "decoder", "channels", "prior"],
    "guide": ["hidden", "activation", "min_scale", "channels"],
    "train": [
        "objective",
        "num_particles",
        "k",
        "epochs",
        "max_steps",
        "batch_size",
        "lr",
        "adam_eps",
        "weight_decay",
        "lr_schedule",
        "lr_gamma",
        "grad_clip",
        "beta",
        "kl_schedule",
        "warmup_steps",
        "cycles",
        "cycle_ratio",
        "val_samples",
        "early_stopping",
        "checkpoint_every",
        "keep_checkpoints",
        "nan_policy",
        "log_every",
        "compile",
        "tensorboard",
    ],
    "data": ["name", "pixels", "val_size", "train_size", "val_limit", "test_limit"],
    "": ["seed", "device", "eval_samples"],
}
NAMES = "relu gated tanh conv mlp bernoulli gaussian learned mog vamp flow iwae dreg meanfield linear".split()
NAMES += "cyclical cosine skip none cpu cuda static mnist".split() + [""]
INTS = st.one_of(st.integers(-3, 600), st.sampled_from([0, -1, 99999999999, 2**31, 2**63, -(2**40)]))
FLOATS = st.one_of(
    st.floats(-10, 10), st.sampled_from([-0.0, 0.0, float("nan"), float("inf"), -float("inf"), 1e300, 1e-300])
)
VALUES = st.one_of(
    INTS,
    FLOATS,
    st.booleans(),
    st.sampled_from(NAMES),
    st.text(max_size=6),
    st.lists(st.integers(-2, 300), max_size=3),
)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


@st.composite
def overrides(draw):
    section = draw(st.sampled_from(sorted(KEYS)))
    key = draw(st.sampled_from(KEYS[section]))
    return f"{section + '.' if section else ''}{key}={_toml(draw(VALUES))}"


BASE = None


@settings(max_examples=500, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(override=overrides())
def test_generated_overrides_are_refused_by_name_or_train(override):
    """No traceback: a config is either refused with a ConfigError (before anything is loaded) or
    its model and guide build and train two steps (raising nothing but PyrovaeErrors)."""
    global BASE
    BASE = BASE or load_config(CONFIGS / "mnist_vae.toml").to_dict()
    try:
        config = config_from_dict(apply_overrides(BASE, [override]))
        validate(config)
    except ConfigError:
        return
    model, guide = recipes.build(config, SHAPES[config.data.name])
    x = Split(binary(32), torch.zeros(32, dtype=torch.long), config.data.pixels)
    train = config.train.__class__(
        **{**config.train.__dict__, "max_steps": 2, "compile": "none", "tensorboard": False}
    )
    try:
        pyrovae.fit(model, guide, x, config=train, seed=config.seed, device="cpu", progress=False)
    except PyrovaeError:
        pass
