"""Every registered model/guide pair, likelihoods, and the registry."""

import math
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.poutine.util import site_is_subsample

import pyrovae
from pyrovae import hooks, registry
from pyrovae.blocks.likelihoods import Likelihood
from pyrovae.data.splits import Split
from pyrovae.errors import ConfigError, DataError
from pyrovae.inference import estimators
from pyrovae.run.config import Component, Config
from pyrovae.run.experiment import load_run
from pyrovae.run.recipes import build
from pyrovae.training.settings import TrainConfig

X_SHAPE = (1, 28, 28)
ALL_PAIRS = [
    (m, g)
    for m in sorted(registry.available()["models"])
    for g in sorted(registry.available()["guides"])
    if registry.fits(registry.MODELS[m], registry.GUIDES[g])
]
#: the pairs over images (the sequence pairs: tests/test_sequence_runs.py)
PAIRS = [(m, g) for m, g in ALL_PAIRS if hooks.takes(registry.MODELS[m]) != hooks.Takes.SEQUENCE]
LATENT_DIMS = {0: [], 1: 3, 2: [3, 2]}
LABELS = torch.arange(32) % 3  # within every model's classes (two-site models have 3)


def test_every_model_has_a_guide():
    assert {m for m, _ in ALL_PAIRS} == set(registry.available()["models"])
    sequences = {p for p in ALL_PAIRS if p not in PAIRS}
    assert sequences == {
        ("dmm", "combiner"),
        ("linear_gaussian_ssm", "combiner"),
        ("vrnn", "combiner"),
        ("vrnn", "vrnn"),
    }
    assert ("vae2", "mlp2") in PAIRS and ("vae2", "mlp") not in PAIRS
    assert ("cvae", "cond_mlp") in PAIRS and ("cvae", "mlp") not in PAIRS and ("vae", "cond_mlp") not in PAIRS
    assert ("quadrant_baseline", "none") in PAIRS and ("quadrant_cvae", "quadrant_recognition") in PAIRS


def binary_images(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, *X_SHAPE), 0.3), generator=g)


def make_pair(model_name, guide_name):
    dims = LATENT_DIMS[len(registry.MODELS[model_name].latent_sites)]
    cfg = Config(model=Component(model_name, {"latent_dim": dims}), guide=Component(guide_name, {}))
    return cfg, *build(cfg, X_SHAPE)


@pytest.mark.parametrize("model_name,guide_name", PAIRS)
def test_sites_match(model_name, guide_name):
    _, model, guide = make_pair(model_name, guide_name)
    args = hooks.inputs(model, binary_images(5), LABELS[:5])
    x = args[0]
    guide_tr = poutine.trace(guide).get_trace(*args)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args)
    latent = {
        n: s["value"].shape
        for n, s in model_tr.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    }
    guided = {
        n: s["value"].shape
        for n, s in guide_tr.nodes.items()
        if s["type"] == "sample" and not site_is_subsample(s)
    }
    assert latent == guided
    assert all(shape[0] == 5 for shape in latent.values())
    observed = [s for s in model_tr.nodes.values() if s["type"] == "sample" and s["is_observed"]]
    images = [s for s in observed if s["name"] != "y_label"]  # M2 also observes the labels it is given
    assert images and all(s["value"].shape == x.shape for s in images)


@pytest.mark.parametrize("model_name,guide_name", PAIRS)
def test_fit_step_then_save_load_evaluate(model_name, guide_name, tmp_path):
    cfg, model, guide = make_pair(model_name, guide_name)
    images = binary_images(32)
    data = Split(images, LABELS, "static")
    args = hooks.inputs(model, images, LABELS)
    before = [p.detach().clone() for p in model.parameters()]
    record = {"config": cfg.to_dict(), "x_shape": list(X_SHAPE)}
    result = pyrovae.fit(
        model,
        guide,
        data,
        data.slice(16),
        config=TrainConfig(max_steps=2, batch_size=16, log_every=1),
        device="cpu",
        run_dir=tmp_path,
        record=record,
        progress=False,
    )
    assert result.step == 2
    assert math.isfinite(result.metrics[0]["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    pyro.set_rng_seed(3)
    here = estimators.elbo(model.eval(), guide.eval(), *args, num_samples=4)
    (tmp_path / "config.json").write_text("{}")
    run = load_run(tmp_path, which="last", device="cpu")
    pyro.set_rng_seed(3)
    torch.testing.assert_close(estimators.elbo(run.model, run.guide, *args, num_samples=4), here)


@pytest.mark.parametrize("decoder,guide_name", [("mlp", "mlp"), ("conv", "conv")])
def test_networks_accept_particle_dims(decoder, guide_name):
    model = registry.build_model("vae", x_shape=X_SHAPE, latent_dim=4, decoder=decoder, hidden=[32])
    assert model.decode(torch.randn(3, 5, 4)).shape == (3, 5, *X_SHAPE)
    guide = registry.build_guide(guide_name, x_shape=X_SHAPE, latent_dim=4)
    lw = estimators.log_weights(model, guide, binary_images(6), num_samples=3)
    assert lw.shape == (3, 6) and torch.isfinite(lw).all()


def test_likelihoods_match_their_definitions():
    logits = torch.randn(4, 1, 2, 3)
    x = torch.rand(4, 1, 2, 3)
    xb = torch.bernoulli(x)
    lik = Likelihood("bernoulli", (1, 2, 3))
    ref = (
        xb * torch.nn.functional.logsigmoid(logits) + (1 - xb) * torch.nn.functional.logsigmoid(-logits)
    ).sum((1, 2, 3))
    torch.testing.assert_close(lik(logits).log_prob(xb), ref)
    lik = Likelihood("gaussian", (1, 2, 3), sigma=0.2)
    ref = (-0.5 * ((x - torch.sigmoid(logits)) / 0.2) ** 2 - math.log(0.2) - 0.5 * math.log(2 * math.pi)).sum(
        (1, 2, 3)
    )
    torch.testing.assert_close(lik(logits).log_prob(x), ref)
    learned = Likelihood("gaussian", (1, 2, 3), sigma="learned", sigma_init=0.2)
    assert sum(p.numel() for p in learned.parameters()) == 6
    torch.testing.assert_close(learned(logits).log_prob(x), ref)


@pytest.mark.parametrize("logit", [-4.0, -0.3, 0.0, 0.01, 2.5])
def test_continuous_bernoulli_is_normalized_on_unit_interval(logit):
    """Loaiza-Ganem & Cunningham (2019), eq. 3: the density integrates to one on [0, 1]."""
    lik = Likelihood("continuous_bernoulli", (1,))
    grid = torch.linspace(0, 1, 200001, dtype=torch.float64)[:, None]
    density = lik(torch.full_like(grid, logit)).log_prob(grid).exp()
    assert torch.trapezoid(density, grid[:, 0]).item() == pytest.approx(1.0, abs=1e-6)


def test_bad_data_is_named():
    model = registry.build_model("vae", x_shape=X_SHAPE, latent_dim=2)
    with pytest.raises(DataError, match="binary pixels.*continuous_bernoulli"):
        model.check_data(torch.rand(3, *X_SHAPE))
    with pytest.raises(DataError, match=r"shape \(1, 28, 28\).*\(3, 784\)"):
        model.check_data(torch.zeros(3, 784))
    with pytest.raises(DataError, match="floating-point"):
        model.check_data(torch.zeros(3, *X_SHAPE, dtype=torch.long))
    cb = registry.build_model("vae", x_shape=X_SHAPE, latent_dim=2, likelihood="continuous_bernoulli")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        cb.check_data(torch.full((2, *X_SHAPE), 1.5))
    with pytest.raises(DataError, match="NaN"):
        cb.check_data(torch.full((2, *X_SHAPE), float("nan")))


def test_unknown_names_and_options():
    with pytest.raises(ConfigError, match="unknown model 'vea'.*Did you mean 'vae'"):
        registry.build_model("vea", x_shape=X_SHAPE)
    with pytest.raises(ConfigError, match="takes no option.*'hiden'.*hidden"):
        registry.build_model("vae", x_shape=X_SHAPE, hiden=[3])
    with pytest.raises(ConfigError, match="unknown likelihood"):
        registry.build_model("vae", x_shape=X_SHAPE, likelihood="poisson")
    with pytest.raises(ConfigError, match="divisible by 4"):
        registry.build_model("vae", x_shape=(1, 30, 30), decoder="conv")


def test_a_new_model_file_is_listed_with_no_other_change():
    models_dir = Path(pyrovae.models.__file__).parent
    path = models_dir / "tmp_listed_model_for_test.py"
    path.write_text(
        "from pyrovae.registry import register_model\n"
        "from pyrovae.models.vae import VAE\n\n"
        "@register_model('tmp_listed_model')\n"
        'class TmpListed(VAE):\n    """A model added as one new file."""\n'
    )
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pyrovae", "list"], capture_output=True, text=True, check=True
        )
    finally:
        path.unlink()
    assert "tmp_listed_model" in out.stdout and "A model added as one new file." in out.stdout


def test_a_guide_with_other_sites_is_refused_with_the_fitting_ones_named():
    cfg = Config(model=Component("vae2", {"latent_dim": [3, 2]}), guide=Component("mlp", {}))
    with pytest.raises(ConfigError, match=r"latent sites \('z1', 'z2'\).*\('z',\).*fit: mlp2"):
        build(cfg, X_SHAPE)
    with pytest.raises(ConfigError, match="latent_dim as 2 positive"):
        registry.build_model("vae2", x_shape=X_SHAPE, latent_dim=5)
