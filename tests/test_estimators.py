"""The per-datapoint core against closed forms of probabilistic PCA."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae.errors import PyrovaeError
from pyrovae.guides import MLPGuide
from pyrovae.inference import chunks, estimators
from pyrovae.sites import DATA_PLATE, LATENT
from pyrovae.training.objectives import ScaleLatents, kl_weight, make_elbo


def diagonal_guide(loc, scale):
    def guide(x):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(LATENT, dist.Normal(loc, scale).to_event(1))

    return guide


def closed_form_elbo(model, x, loc, scale):
    """ELBO of q = N(loc, diag scale^2) under PPCA, in closed form:
    E_q[log N(x; Wz + b, s^2 I)] - KL(q || N(0, I))."""
    w, b, s2 = model.weight, model.bias, model.log_sigma.exp() ** 2
    d = w.shape[0]
    resid = x.reshape(x.shape[0], -1) - loc @ w.T - b
    trace = ((w**2) @ (scale**2).T).sum(0)  # tr(W diag(scale^2) W^T) per datapoint
    expected_loglik = -0.5 * d * torch.log(2 * math.pi * s2) - ((resid**2).sum(-1) + trace) / (2 * s2)
    kl = 0.5 * (scale**2 + loc**2 - 1 - torch.log(scale**2)).sum(-1)
    return expected_loglik - kl, kl


def test_exact_posterior_gives_log_likelihood_per_datapoint(ppca, device):
    model, x = ppca
    model, x = model.to(device), x.to(device)
    guide = model.exact_guide()
    exact = model.log_marginal(x)
    lw = estimators.log_weights(model, guide, x, num_samples=7)
    assert lw.shape == (7, 40)
    torch.testing.assert_close(lw, exact.expand(7, 40), atol=1e-4, rtol=0)
    torch.testing.assert_close(estimators.elbo(model, guide, x, num_samples=3), exact, atol=1e-4, rtol=0)


def test_chunking_over_particles_and_data_is_exact(ppca, device):
    model, x = ppca
    model, x = model.to(device), x.to(device)
    lw = estimators.log_weights(model, model.exact_guide(), x, num_samples=10, particle_chunk=3, data_chunk=7)
    assert lw.shape == (10, 40)
    torch.testing.assert_close(lw, model.log_marginal(x).expand(10, 40), atol=1e-4, rtol=0)


def test_other_guides_are_strictly_lower_and_match_the_closed_form(ppca, device):
    model, x = ppca
    model, x = model.to(device), x.to(device)
    post = model.posterior(x)
    loc = post.mean + 0.3
    scale = post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt() * 1.5
    exact_elbo, exact_kl = closed_form_elbo(model, x, loc, scale)
    guide = diagonal_guide(loc, scale)
    terms = estimators.elbo_terms(model, guide, x, num_samples=20000, particle_chunk=5000, data_chunk=40)
    assert (exact_elbo < model.log_marginal(x) - 1e-3).all()
    assert (terms["elbo"] < model.log_marginal(x)).all()
    torch.testing.assert_close(terms["elbo"], exact_elbo, atol=0.05, rtol=0)
    torch.testing.assert_close(terms["kl"], exact_kl, atol=0.05, rtol=0)
    torch.testing.assert_close(terms["reconstruction"] - terms["kl"], terms["elbo"])


@pytest.mark.parametrize("objective", ["elbo", "meanfield"])
def test_pyro_elbos_agree_with_the_closed_form_in_expectation(ppca, objective):
    model, x = ppca
    post = model.posterior(x)
    loc, scale = post.mean - 0.2, post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt() * 0.8
    exact_elbo, _ = closed_form_elbo(model, x, loc, scale)
    loss = make_elbo(objective, num_particles=20000).loss(model, diagonal_guide(loc, scale), x)
    assert -loss == pytest.approx(exact_elbo.sum().item(), abs=0.5)  # sum over 40 datapoints, MC se ~0.1


def test_beta_scales_exactly_the_kl_term(ppca):
    model, x = ppca
    post = model.posterior(x)
    loc, scale = post.mean, post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    _, kl = closed_form_elbo(model, x, loc, scale)
    elbo, guide = make_elbo("meanfield"), diagonal_guide(loc, scale)
    losses = {}
    for beta in (1.0, 0.3):
        scale_msg = ScaleLatents(beta)
        pyro.set_rng_seed(5)
        losses[beta] = elbo.differentiable_loss(scale_msg(model), scale_msg(guide), x)
    torch.testing.assert_close(losses[0.3] - losses[1.0], -0.7 * kl.sum())


def test_site_outside_the_data_plate_is_refused():
    def model(x):
        g = pyro.sample("global", dist.Normal(0.0, 1.0))
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample("x", dist.Normal(g, 1.0), obs=x)

    def guide(x):
        pyro.sample("global", dist.Normal(0.0, 1.0))

    with pytest.raises(PyrovaeError, match="outside the 'data' plate"):
        estimators.log_weights(model, guide, torch.zeros(3))


def test_mean_and_stderr():
    mean, se = estimators.mean_and_stderr(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == pytest.approx(2.5)
    assert se == pytest.approx(torch.tensor([1.0, 2.0, 3.0, 4.0]).std().item() / 2)


def test_kl_schedules():
    assert kl_weight(10, schedule="constant", beta=0.5) == 0.5
    assert [kl_weight(s, schedule="linear", warmup_steps=4) for s in range(6)] == [0.25, 0.5, 0.75, 1, 1, 1]
    from_floor = [kl_weight(s, schedule="linear", warmup_steps=4, beta_start=0.2) for s in range(5)]
    assert from_floor == pytest.approx([0.4, 0.6, 0.8, 1.0, 1.0])  # Pyro's DMM example: from 0.2
    # Fu et al. (2019): 4 cycles over 100 steps, rising over the first half of each.
    cyc = [kl_weight(s, schedule="cyclical", total_steps=100, cycles=4, cycle_ratio=0.5) for s in range(100)]
    assert cyc[0] == 0 and cyc[25] == 0 and cyc[50] == 0
    assert cyc[6] == pytest.approx(6 / 25 / 0.5)
    assert cyc[13:25] == [1.0] * 12
    assert max(cyc) == 1.0


def test_folded_summaries_equal_those_of_the_kept_log_weights(ppca):
    """evaluate_terms reduces each chunk of particles as it goes (memory O(N)); on the same draws
    it must give what the whole (K, N) tensor gives, whatever the chunking."""
    model, x = ppca
    guide = MLPGuide((1, 1, 5), 2, hidden=[8]).double()
    for pc, dc in ((7, 9), (50, 40), (1, 3)):
        pyro.set_rng_seed(11)
        terms = estimators.evaluate_terms(model, guide, x, num_samples=50, particle_chunk=pc, data_chunk=dc)
        pyro.set_rng_seed(11)
        full = chunks.map_terms(
            model,
            guide,
            x,
            num_samples=50,
            particle_chunk=pc,
            data_chunk=dc,
            reduce=lambda t: torch.stack([t.log_lik, t.log_q - t.log_prior, t.log_weights], -1),
        )
        lw = full[..., 2]
        torch.testing.assert_close(terms["elbo"], lw.mean(0))
        torch.testing.assert_close(terms["reconstruction"], full[..., 0].mean(0))
        torch.testing.assert_close(terms["kl"], full[..., 1].mean(0))
        torch.testing.assert_close(terms["log_likelihood"], estimators.iwae_from_log_weights(lw))
        torch.testing.assert_close(terms["ess"], estimators.ess_from_log_weights(lw))
