"""Learned priors: normalized densities, their special cases, and training with each."""

import math

import pyro
import pytest
import torch

import pyrovae
from pyrovae.blocks.priors import (
    DiagNormalMixture,
    FlowPrior,
    MixturePrior,
    StandardPrior,
    VampPrior,
    make_prior,
)
from pyrovae.data.splits import load_split
from pyrovae.errors import ConfigError, ModelError
from pyrovae.guides import MLPGuide
from pyrovae.inference import estimators
from pyrovae.inference.scoring import evaluate_data
from pyrovae.models import VAE
from pyrovae.run.config import Component, Config
from pyrovae.run.recipes import build
from pyrovae.training.settings import TrainConfig


def perturbed_flow(latent_dim=2, seed=0):
    torch.manual_seed(seed)
    flow = FlowPrior(latent_dim, depth=2, hidden=[16]).double()
    with torch.no_grad():
        for t in flow.flows:
            last = t.arn.layers[-1]
            last.weight.normal_(0, 0.3)
            last.bias.normal_(0, 0.3)
    return flow


def random_mixture(latent_dim=2, seed=0):
    torch.manual_seed(seed)
    prior = MixturePrior(latent_dim, components=4).double()
    with torch.no_grad():
        prior.log_scales.uniform_(-0.7, 0.3)
        prior.logits.normal_()
    return prior


def random_vamp(latent_dim=2, seed=0):
    torch.manual_seed(seed)
    guide = MLPGuide((1, 2, 2), latent_dim, hidden=[8]).double()
    prior = VampPrior(latent_dim, (1, 2, 2), components=5).double()
    with torch.no_grad():
        prior.pseudo_inputs.uniform_(0, 1)
    prior.attach(guide)
    return prior


PRIORS = {
    "standard": lambda: StandardPrior(2).double(),
    "mog": random_mixture,
    "vamp": random_vamp,
    "flow": perturbed_flow,
}


@pytest.mark.parametrize("name", list(PRIORS))
def test_each_prior_is_a_normalized_density(name, device):
    prior = PRIORS[name]().to(device)
    step = 0.04
    axis = torch.arange(-12, 12 + step / 2, step, dtype=torch.float64, device=device)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = prior(grid.shape[0]).log_prob(grid).exp()
    assert abs(density.sum().item() * step**2 - 1.0) < 1e-3


def test_one_component_mixture_at_the_origin_is_the_standard_prior():
    prior = MixturePrior(3, components=1)
    with torch.no_grad():
        prior.locs.zero_()
    z = torch.randn(7, 5, 3) * 2
    torch.testing.assert_close(prior(5).log_prob(z), StandardPrior(3)(5).log_prob(z))


def test_an_identity_flow_is_its_base():
    z = torch.randn(7, 5, 4) * 2
    torch.testing.assert_close(FlowPrior(4, depth=3)(5).log_prob(z), StandardPrior(4)(5).log_prob(z))


def test_vamp_prior_is_the_average_of_the_guide_densities_at_the_pseudo_inputs():
    prior = random_vamp(latent_dim=2)
    z = torch.randn(6, 2, dtype=torch.float64)
    loc, scale = prior._guide.params(torch.nn.functional.hardtanh(prior.pseudo_inputs, 0, 1))
    by_hand = (
        torch.stack(
            [torch.distributions.Normal(loc[k], scale[k]).log_prob(z).sum(-1).exp() for k in range(5)]
        )
        .mean(0)
        .log()
    )
    torch.testing.assert_close(prior(6).log_prob(z), by_hand)


def test_the_mixture_log_density_by_matrix_products_equals_the_direct_one():
    torch.manual_seed(0)
    locs, scales, logits = torch.randn(6, 3), torch.rand(6, 3) + 0.2, torch.randn(6)
    direct = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.Independent(torch.distributions.Normal(locs, scales), 1),
    )
    z = torch.randn(4, 9, 3) * 2
    torch.testing.assert_close(
        DiagNormalMixture(locs, scales, logits, (9,)).log_prob(z), direct.log_prob(z), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("name", list(PRIORS))
def test_samples_have_the_latent_shape(name):
    prior = PRIORS[name]().float()  # Pyro's autoregressive inverse draws in the default dtype
    if name == "vamp":
        prior._guide.float()
    z = prior.sample(11)
    assert z.shape == (11, 2) and torch.isfinite(z).all()


def test_bad_prior_names_and_options_are_named():
    with pytest.raises(ConfigError, match="unknown prior 'vampp'.*Did you mean 'vamp'"):
        make_prior("vampp", 2, (1, 4, 4))
    with pytest.raises(ConfigError, match="prior 'mog'.*pyrovae.blocks.priors"):
        make_prior("mog", 2, (1, 4, 4), {"component": 3})
    for name, options in (
        ("mog", {"components": 0}),
        ("vamp", {"components": -1}),
        ("flow", {"depth": 0}),
        ("vamp", {"init": "dta"}),
    ):
        with pytest.raises(ConfigError, match="components|depth|init"):
            make_prior(name, 2, (1, 4, 4), options)
    with pytest.raises(ModelError, match="attach_guide"):
        VAE((1, 4, 4), 2, hidden=[8], prior="vamp", prior_options={"components": 3}).sample_prior(2)


def test_meanfield_with_a_learned_prior_warns_that_its_kl_is_monte_carlo():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((16, 1, 4, 4), 0.4))
    for prior, warns in (("standard", False), ("mog", True)):
        model = VAE((1, 4, 4), 2, hidden=[8], prior=prior)
        guide = MLPGuide((1, 4, 4), 2, hidden=[8])
        config = TrainConfig(max_steps=1, batch_size=8, objective="meanfield")
        with pytest.warns(RuntimeWarning, match="no closed form") if warns else _no_warning():
            pyrovae.fit(model, guide, x, config=config, device="cpu", progress=False)


class _no_warning:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


@pytest.fixture(scope="module")
def mnist_slice():
    train = load_split("mnist", "train").slice(3000)
    val = load_split("mnist", "val").slice(300)
    return train, val


@pytest.mark.parametrize(
    "prior,options,objective",
    [
        ("standard", {}, "elbo"),
        ("mog", {"components": 10}, "iwae"),
        ("vamp", {"components": 50, "init": "data"}, "elbo"),
        ("flow", {"depth": 2, "hidden": [32]}, "dreg"),
    ],
)
def test_short_training_with_each_prior_improves_the_log_likelihood(mnist_slice, prior, options, objective):
    train, val = mnist_slice
    pyro.set_rng_seed(0)
    config = Config(
        model=Component("vae", {"latent_dim": 8, "hidden": [64], "prior": prior, "prior_options": options}),
        guide=Component("mlp", {"hidden": [64]}),
    )
    model, guide = build(config, (1, 28, 28))
    if options.get("init") == "data":
        model.prior.init_from(train.observe(slice(0, 50)))
    x = val.observe_fixed(0)

    def log_px():
        torch.manual_seed(1)
        return estimators.log_likelihood(model, guide, x, num_samples=50).mean().item()

    before = log_px()
    result = pyrovae.fit(
        model,
        guide,
        train,
        config=TrainConfig(epochs=2, batch_size=100, objective=objective, k=3),
        device="cpu",
        progress=False,
    )
    after = log_px()
    assert result.compile == "capture"
    assert after > before + 20, (before, after)
    report = evaluate_data(model, guide, x, num_samples=20)
    assert math.isfinite(report["log_likelihood"]["mean"]) and report["kl"]["mean"] > 0
    assert report["log_likelihood"]["mean"] >= report["elbo"]["mean"]
    assert torch.isfinite(model.sample(4)).all()


def test_the_two_layer_vae_takes_a_prior_over_its_top_latent():
    from pyrovae.guides.hierarchical import TwoLayerGuide
    from pyrovae.models.hierarchical import TwoLayerVAE

    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((32, 1, 4, 4), 0.4))
    for prior in ("mog", "flow"):
        model = TwoLayerVAE((1, 4, 4), (6, 3), hidden=[8], hidden_top=[8], prior=prior)
        guide = TwoLayerGuide((1, 4, 4), (6, 3), hidden=[8], hidden_top=[8])
        cfg = TrainConfig(max_steps=4, batch_size=16, objective="iwae")
        result = pyrovae.fit(model, guide, x, config=cfg, device="cpu", progress=False)
        assert result.compile == "capture" and model.sample(3).shape == (3, 1, 4, 4)
        lw = estimators.log_weights(model, guide, x, num_samples=4)
        assert lw.shape == (4, 32) and torch.isfinite(lw).all()
    with pytest.raises(ConfigError, match="VampPrior over z2"):
        TwoLayerVAE((1, 4, 4), (6, 3), prior="vamp")
