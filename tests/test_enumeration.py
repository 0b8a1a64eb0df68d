"""Discrete latents summed out exactly: a mixture of factor analysers against its closed form,
the "enum" loss against the exact expectation over c, and training against score-function
gradients."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae.errors import ConfigError, ModelError
from pyrovae.guides.discrete import MixtureGuide
from pyrovae.inference import estimators, weights
from pyrovae.models.mixture import MixtureOfFactorAnalysers
from pyrovae.training.catalog import make_objective


@pytest.fixture
def mfa():
    """Three factor analysers (d = 2) on 4-pixel 'images', 30 datapoints drawn from it, float64."""
    torch.manual_seed(3)
    model = MixtureOfFactorAnalysers((1, 1, 4), (3, 2), sigma=0.5).double()
    with torch.no_grad():
        c = torch.randint(3, (30,))
        z = torch.randn(30, 2, dtype=torch.float64)
        x = (
            (model.weight[c] @ z.unsqueeze(-1)).squeeze(-1)
            + model.bias[c]
            + 0.5 * torch.randn(30, 4).double()
        )
    return model, x.reshape(30, 1, 1, 4)


@pytest.mark.parametrize("enumerated", [True, False])
def test_every_estimator_is_exact_under_the_exact_guide(mfa, enumerated, device):
    model, x = mfa
    model, x = model.to(device), x.to(device)
    guide, exact = model.exact_guide(enumerated=enumerated), model.log_marginal(x)
    close = lambda v: torch.testing.assert_close(v, exact, atol=1e-4, rtol=0)  # noqa: E731
    lw = estimators.log_weights(model, guide, x, num_samples=6, particle_chunk=4, data_chunk=7)
    torch.testing.assert_close(lw, exact.expand(6, -1), atol=1e-4, rtol=0)
    close(estimators.elbo(model, guide, x, num_samples=3))
    close(estimators.iwae_bound(model, guide, x, num_samples=5))
    close(estimators.log_likelihood(model, guide, x, num_samples=50))
    terms = estimators.evaluate_terms(model, guide, x, num_samples=8)
    close(terms["elbo"]), close(terms["log_likelihood"])
    torch.testing.assert_close(terms["reconstruction"] - terms["kl"], terms["elbo"])
    torch.testing.assert_close(
        estimators.importance_ess(model, guide, x, num_samples=9), torch.full_like(exact, 9.0)
    )


def test_enumerated_estimates_vary_less_and_both_converge(mfa):
    model, x = mfa
    exact = model.log_marginal(x)
    rough = dict(temper=10.0, shift=0.05)  # q(c | x) far too flat, q(z | x, c) a little off
    spread, bias = {}, {}
    for enumerated in (True, False):
        guide = model.exact_guide(enumerated=enumerated, **rough)
        runs = torch.stack([estimators.log_likelihood(model, guide, x, num_samples=10) for _ in range(30)])
        spread[enumerated] = runs.std(0).mean()
        bias[enumerated] = (estimators.log_likelihood(model, guide, x, num_samples=4000) - exact).mean()
    assert spread[True] < 0.7 * spread[False]
    assert abs(bias[True]) < 0.01 and abs(bias[False]) < 0.02


def test_a_site_the_model_enumerates_is_summed_inside_log_p(mfa):
    """A guide q(z | x) = p(z) without c: log w = log sum_c p(x, c, z) - log q(z), E[w] = p(x)."""
    model, x = mfa
    model.infer = {"enumerate": "parallel"}

    def prior_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))

    error = estimators.log_likelihood(model, prior_guide, x, num_samples=20000) - model.log_marginal(x)
    assert error.mean().abs() < 0.02 and error.abs().max() < 0.2  # Monte Carlo noise in z only


def _hand_enum_elbo(model, qc, qz, x, z):
    """sum_n sum_c q(c | x_n) [log p(x_n, c, z_nc) - log q(c | x_n) - log q(z_nc | x_n, c)], z (C, N, d)."""
    log_qc = torch.log_softmax(qc, -1).T  # (C, N)
    loc, scale = qz
    flat = x.reshape(x.shape[0], -1)
    total = 0.0
    for c in range(model.components):
        mean = z[c] @ model.weight[c].T + model.bias[c]
        log_p = (
            torch.log_softmax(model.logits, -1)[c]
            + dist.Normal(0.0, 1.0).log_prob(z[c]).sum(-1)
            + dist.Normal(mean, model.log_sigma.exp()).log_prob(flat).sum(-1)
        )
        log_q = log_qc[c] + dist.Normal(loc[:, c], scale[:, c]).log_prob(z[c]).sum(-1)
        total = total + (log_qc[c].exp() * (log_p - log_q)).sum()
    return total


def test_enum_loss_is_the_exact_expectation_over_c(mfa):
    model, x = mfa
    n = x.shape[0]
    qc_logits = torch.nn.Parameter(0.3 * torch.randn(n, 3, dtype=torch.float64))
    loc = torch.nn.Parameter(torch.randn(n, 3, 2, dtype=torch.float64))
    raw = torch.nn.Parameter(0.2 * torch.randn(n, 3, 2, dtype=torch.float64))

    def guide(x):
        with pyro.plate("data", n):
            c = pyro.sample("c", dist.Categorical(logits=qc_logits), infer={"enumerate": "parallel"})
            rows = torch.arange(n)
            pyro.sample("z", dist.Normal(loc[rows, c], raw[rows, c].exp()).to_event(1))

    loss = make_objective("enum")
    loss.prepare(model, guide, x)  # on a forked stream: the draws below are the loss's
    torch.manual_seed(0)
    guide_tr, _, _ = weights.traces(model, guide, (x,), {}, 1, 1, enumerated=True)
    z = guide_tr.nodes["z"]["value"].reshape(3, n, 2).detach()
    torch.manual_seed(0)
    value = loss(model, guide, x)
    params = [qc_logits, loc, raw, *model.parameters()]
    grads = torch.autograd.grad(value, params)
    eps = ((z - loc.permute(1, 0, 2)) / raw.exp().permute(1, 0, 2)).detach()  # the draws' noise
    z_hand = loc.permute(1, 0, 2) + raw.exp().permute(1, 0, 2) * eps  # the same draws, reparameterized
    hand = -_hand_enum_elbo(model, qc_logits, (loc, raw.exp()), x, z_hand)
    torch.testing.assert_close(value, hand)
    for g, h in zip(grads, torch.autograd.grad(hand, params)):
        torch.testing.assert_close(g, h)


def _train(objective: str, x, steps: int = 250) -> float:
    from pyrovae.training.loop import fit
    from pyrovae.training.settings import TrainConfig

    torch.manual_seed(5)
    model = MixtureOfFactorAnalysers((1, 1, 6), (3, 2), sigma=1.0, init_scale=0.3)  # a poor start
    guide = MixtureGuide((1, 1, 6), (3, 2), hidden=[32], enumerated=objective == "enum")
    cfg = TrainConfig(objective=objective, max_steps=steps, batch_size=100, lr=1e-2, log_every=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(model, guide, x, config=cfg, seed=0, device="cpu", progress=False)
    return model.log_marginal(x).mean().item()


def test_enum_training_beats_score_function_training():
    torch.manual_seed(4)
    truth = MixtureOfFactorAnalysers((1, 1, 6), (3, 2), sigma=0.3, init_scale=1.5)
    with torch.no_grad():
        c, z = torch.randint(3, (600,)), torch.randn(600, 2)
        x = (truth.weight[c] @ z.unsqueeze(-1)).squeeze(-1) + truth.bias[c] + 0.3 * torch.randn(600, 6)
    x = x.reshape(600, 1, 1, 6)
    enum, score = _train("enum", x), _train("elbo", x)
    assert enum > score + 0.3, (enum, score)  # exact log p(x) per datapoint after the same steps (0.5 apart)


def test_refusals_and_warnings_name_the_problem(mfa):
    model, x = mfa
    guide = model.exact_guide(enumerated=True)
    with pytest.raises(ConfigError, match="dreg"):
        make_objective("dreg").prepare(model, guide, x)
    with pytest.warns(RuntimeWarning, match="samples the site"):
        make_objective("elbo").prepare(model, guide, x)
    with pytest.warns(RuntimeWarning, match="no site is marked"):
        make_objective("enum").prepare(model, model.exact_guide(enumerated=False), x)

    def pixel_mixture(x):  # a discrete latent per pixel: not one value per datapoint
        with pyro.plate("data", x.shape[0]), pyro.plate("pixels", 4, dim=-2):
            pyro.sample(
                "c", dist.Categorical(logits=torch.zeros(4, x.shape[0], 2)), infer={"enumerate": "parallel"}
            )

    def pixel_model(x):
        with pyro.plate("data", x.shape[0]):
            with pyro.plate("pixels", 4, dim=-2):
                pyro.sample("c", dist.Categorical(logits=torch.zeros(4, x.shape[0], 2)))
            pyro.sample("x", dist.Normal(x.new_zeros(x.shape[0]), 1.0), obs=x[:, 0, 0, 0])

    with pytest.raises(ModelError, match="sits in plate"):
        estimators.log_likelihood(pixel_model, pixel_mixture, x, num_samples=2)


def test_diagnostics_store_q_c_and_rate_the_enumerated_weights(mfa):
    from pyrovae.diagnostics import posterior_quality, to_inference_data

    model, x = mfa
    guide = model.exact_guide(enumerated=True)
    idata = to_inference_data(model, guide, x[:5], num_samples=40, chains=2, predictive_draws=4)
    probs = idata.discrete_probs["c"].values
    exact = torch.softmax(model.log_joint_c(x[:5]), -1).detach().numpy()
    assert probs.shape == (5, 3) and abs(probs - exact).max() < 1e-6
    assert set(idata.posterior["c"].values.ravel()) <= {0.0, 1.0, 2.0}  # draws of c, not enumerated
    table = posterior_quality(model, guide, x[:5], num_samples=50)
    assert abs(table["log_px"].to_numpy() - model.log_marginal(x[:5]).detach().numpy()).max() < 1e-4
