"""Refined proposals: per-datapoint refinement moves importance sampling towards the exact
log p(x) of probabilistic PCA and lowers k-hat, for a guide with a head and for any guide."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae.diagnostics import LocalGaussian, LocalHead, local_proposal, refined_log_likelihood
from pyrovae.errors import ConfigError, ModelError
from pyrovae.guides import MLPGuide
from pyrovae.run.config import config_from_dict
from pyrovae.sites import DATA_PLATE, LATENT


def shifted_guide(model, shift=1.5, stretch=0.5):
    """A plain-callable guide: the exact posterior moved by ``shift`` and narrowed."""

    def guide(x):
        post = model.posterior(x)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(
                LATENT, dist.MultivariateNormal(post.loc + shift, scale_tril=stretch * post.scale_tril)
            )

    return guide


@pytest.mark.parametrize("kind", ["head", "any"])
def test_refinement_moves_the_estimate_to_the_exact_value_and_lowers_k_hat(ppca, kind):
    model, x = ppca
    model = model.float()
    x = x.float()
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    guide = MLPGuide((1, 1, 5), 2, hidden=[8]) if kind == "head" else shifted_guide(model)
    proposal = local_proposal(model, guide, (x,))
    assert isinstance(proposal, LocalHead if kind == "head" else LocalGaussian)
    r = refined_log_likelihood(model, guide, x, steps=300, num_samples=100, data_chunk=16)
    exact = model.log_marginal(x)
    before, after = (r.log_likelihood - exact).abs().mean(), (r.refined_log_likelihood - exact).abs().mean()
    assert after < 0.2 and after < 0.1 * before, (before, after)
    assert r.refined_k_hat.mean() < r.k_hat.mean() - 0.2 and r.refined_k_hat.mean() < 0.7
    assert r.seconds > 0 and r.refined_seconds > 0
    assert r.log_likelihood.shape == r.refined_k_hat.shape == (40,)


def test_bad_refinement_settings_are_named(ppca):
    model, x = ppca
    with pytest.raises(ConfigError, match="refinement needs steps >= 1"):
        refined_log_likelihood(model, model.exact_guide(), x, steps=0)
    with pytest.raises(ConfigError, match="eval_refine must be an integer in"):
        config_from_dict({"eval_refine": -3})

    def discrete(x):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample("c", dist.Categorical(torch.ones(x.shape[0], 3) / 3))

    def model_c(x):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            c = pyro.sample("c", dist.Categorical(torch.ones(x.shape[0], 3) / 3))
            pyro.sample("x", dist.Normal(c.double(), 1.0).expand([x.shape[0]]), obs=x[:, 0, 0, 0])

    with pytest.raises(ModelError, match="site 'c' is discrete"):
        local_proposal(model_c, discrete, (x,))
