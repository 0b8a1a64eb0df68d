"""Conditional VAEs: the importance-sampled log p(y | x) against a closed form, sites in both
modes, and short runs of the label-conditioned and quadrant tasks."""

import importlib.util
import json
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

import pyrovae
from pyrovae import hooks
from pyrovae.data.splits import load_split
from pyrovae.errors import DataError
from pyrovae.inference import estimators
from pyrovae.inference.scoring import evaluate_data
from pyrovae.run.config import Component, Config
from pyrovae.run.recipes import build
from pyrovae.training.settings import TrainConfig

spec = importlib.util.spec_from_file_location(
    "cvae_quadrants", Path(__file__).parents[1] / "benchmarks" / "cvae_quadrants.py"
)
quadrants = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quadrants)


class LinearConditional:
    """z ~ N(C x, I), y ~ N(W z + B x, s^2 I): p(y | x) = N((W C + B) x, W W^T + s^2 I) exactly."""

    def __init__(self, dx=3, dz=2, dy=4, s=0.6, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.C, self.W, self.B = (
            torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((dz, dx), (dy, dz), (dy, dx))
        )
        self.s = s

    def model(self, x, y):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x @ self.C.T, 1.0).to_event(1))
            pyro.sample("y", dist.Normal(z @ self.W.T + x @ self.B.T, self.s).to_event(1), obs=y)

    def posterior(self, x, y):
        precision = torch.eye(self.C.shape[0], dtype=torch.float64) + self.W.T @ self.W / self.s**2
        cov = torch.linalg.inv(precision)
        mean = (x @ self.C.T + (y - x @ self.B.T) @ self.W / self.s**2) @ cov
        return mean, cov

    def guide(self, x, y):
        """Not the exact posterior: shifted mean, too wide, no correlations."""
        mean, cov = self.posterior(x, y)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(mean + 0.15, 1.3 * cov.diagonal().sqrt()).to_event(1))

    def log_p_y_given_x(self, x, y):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        return dist.MultivariateNormal(x @ (self.W @ self.C + self.B).T, cov).log_prob(y)


def test_importance_sampled_conditional_likelihood_matches_the_closed_form():
    lin = LinearConditional()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        z = x @ lin.C.T + torch.randn(60, 2, generator=g, dtype=torch.float64)
        y = z @ lin.W.T + x @ lin.B.T + lin.s * torch.randn(60, 4, generator=g, dtype=torch.float64)
    exact = lin.log_p_y_given_x(x, y)
    pyro.set_rng_seed(0)
    estimate = estimators.log_likelihood(lin.model, lin.guide, x, y, num_samples=5000)
    elbo = estimators.elbo(lin.model, lin.guide, x, y, num_samples=5000)
    assert (estimate - exact).mean().abs() < 0.02
    assert (elbo < exact).all() and (exact - elbo).mean() > 0.05


def quadrant_pair(q=2):
    pyro.set_rng_seed(0)
    return build(
        Config(
            model=Component("quadrant_cvae", {"quadrants": q, "hidden": [32], "latent_dim": 3}),
            guide=Component("quadrant_recognition", {"hidden": [32]}),
        ),
        (1, 28, 28),
    )


def sample_shapes(trace):
    return {
        n: (tuple(s["value"].shape), s["is_observed"])
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and n != "data"
    }


@pytest.mark.parametrize("q", [1, 2, 3])
def test_quadrant_cvae_sites_match_with_and_without_the_target(q):
    model, guide = quadrant_pair(q)
    images = torch.bernoulli(torch.full((5, 1, 28, 28), 0.3))
    x, y = model.inputs(images)
    assert ((x == -1).float().mean() - (4 - q) / 4).abs() < 1e-6 and torch.equal(y, images)
    for target in (y, None):  # training, then generation: z from the prior network, y drawn
        guide_tr = poutine.trace(guide).get_trace(x, target)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, target)
        assert sample_shapes(guide_tr) == {"z": ((5, 3), False)}
        assert sample_shapes(model_tr) == {"z": ((5, 3), False), "x": ((5, 1, 28, 28), target is not None)}
    completions = model.complete(x, 4)
    assert completions.shape == (4, 5, 1, 28, 28) and torch.equal(
        completions[:, x != -1], x[x != -1].expand(4, -1)
    )


def test_label_conditioned_vae_sites_and_generation():
    pyro.set_rng_seed(0)
    model, guide = build(
        Config(
            model=Component("cvae", {"latent_dim": 4, "hidden": [32]}),
            guide=Component("cond_mlp", {"hidden": [32]}),
        ),
        (1, 28, 28),
    )
    images = torch.bernoulli(torch.full((6, 1, 28, 28), 0.3))
    x, y = hooks.inputs(model, images, torch.tensor([0, 1, 2, 7, 8, 9]))
    assert y.shape == (6, 10) and torch.equal(y.argmax(-1), torch.tensor([0, 1, 2, 7, 8, 9]))
    guide_tr = poutine.trace(guide).get_trace(x, y)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, y)
    assert sample_shapes(model_tr) == {"z": ((6, 4), False), "x": ((6, 1, 28, 28), True)}
    assert model.sample(3, condition=7).shape == (3, 1, 28, 28)
    with pytest.raises(DataError, match="labels in \\[0, 10\\)"):
        hooks.inputs(model, images, torch.full((6,), -1))


def test_label_conditioned_vae_trains_and_reports_log_p_x_given_y():
    train = load_split("mnist", "train").slice(3000)
    val = load_split("mnist", "val").slice(300)
    pyro.set_rng_seed(0)
    model, guide = build(
        Config(
            model=Component("cvae", {"latent_dim": 8, "hidden": [64]}),
            guide=Component("cond_mlp", {"hidden": [64]}),
        ),
        (1, 28, 28),
    )
    result = pyrovae.fit(
        model, guide, train, val, config=TrainConfig(epochs=3, batch_size=100), device="cpu", progress=False
    )
    vals = [r["val_elbo"] for r in result.metrics if r["kind"] == "epoch"]
    assert result.compile == "capture" and vals[-1] > vals[0]
    images = val.observe_fixed(0)
    report = evaluate_data(
        model, guide, *hooks.inputs(model, images, val.labels), images=images, num_samples=50
    )
    assert report["log_likelihood"]["mean"] > report["elbo"]["mean"] > -250
    # the label carries information: conditioning on the wrong label lowers log p(x | y)
    wrong = evaluate_data(
        model, guide, *hooks.inputs(model, images, (val.labels + 1) % 10), images=images, num_samples=50
    )
    assert wrong["log_likelihood"]["mean"] < report["log_likelihood"]["mean"] - 1


def test_short_quadrant_runs_learn_and_print_the_table(tmp_path, capsys):
    rows = [
        quadrants.run(
            q,
            epochs=3,
            num_samples=100,
            train_size=3000,
            val_limit=300,
            test_limit=100,
            hidden=(64,),
            latent_dim=8,
            device="cpu",
            plots_dir=tmp_path,
        )
        for q in (1, 3)
    ]
    for r in rows:
        for name in ("baseline", "cvae"):
            assert r[name]["val_best"] > r[name]["val_first"]  # the validation loss went down
        assert r["cvae"]["nll"][0] <= r["cvae"]["neg_elbo"][0] + 1e-6  # the estimate lies above the ELBO
        assert math.isfinite(r["baseline"]["nll"][0]) and Path(r["plot"]).exists()
    assert (
        rows[1]["baseline"]["nll"][0] < rows[0]["baseline"]["nll"][0]
    )  # 3 visible quadrants: less to predict
    print(quadrants.table(rows))
    out = capsys.readouterr().out
    assert "CVAE -log p(y\\|x), importance-sampled" in out and "100.4 / 71.8" in out


def test_quadrant_config_runs_from_the_command_line(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "quadrants"
    config = Path(__file__).parents[1] / "configs" / "mnist_quadrants_cvae.toml"
    common = ["--device", "cpu"]
    fit = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyrovae",
            "fit",
            str(config),
            "--run-dir",
            str(run),
            "--no-progress",
            *common,
            "--set",
            "data.train_size=2000",
            "--set",
            "data.val_limit=200",
            "--set",
            "data.test_limit=100",
            "--set",
            "model.hidden=[64]",
            "--set",
            "guide.hidden=[64]",
            "--set",
            "model.latent_dim=8",
            "--set",
            "train.epochs=2",
            "--set",
            "eval_samples=20",
        ],
        capture_output=True,
        text=True,
    )
    assert fit.returncode == 0, fit.stderr
    assert (run / "completions.png").exists()
    out = subprocess.run(
        [sys.executable, "-m", "pyrovae", "evaluate", str(run), *common], capture_output=True, text=True
    )
    assert out.returncode == 0 and "log p(y | x)" in out.stdout, out.stderr
    report = json.loads((run / "eval_test.json").read_text())
    assert report["discrete"] and "log_likelihood_bits_per_dim" not in report  # binary, but not D of x
    bad = subprocess.run(
        [sys.executable, "-m", "pyrovae", "sample", str(run), "--condition", "3", *common],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "label-conditioned" in bad.stderr
