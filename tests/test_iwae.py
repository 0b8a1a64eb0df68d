"""Importance-weighted bounds, log-likelihood and the IWAE / DReG objectives, against closed forms."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

import pyrovae
from pyrovae.inference import estimators, weights
from pyrovae.sites import DATA_PLATE, LATENT
from pyrovae.training.catalog import make_objective
from pyrovae.training.objectives import IWAEObjective, make_elbo
from pyrovae.training.optim import iwae_lr_factor
from pyrovae.training.settings import TrainConfig


class LinearGuide(nn.Module):
    """q(z|x) = N(A x + c, diag exp(s)^2): trainable, and never the exact PPCA posterior (which is "
    "not diagonal)."""

    def __init__(self, dim=5, latent=2):
        super().__init__()
        self.lin = nn.Linear(dim, latent).double()
        self.log_scale = nn.Parameter(torch.full((latent,), -0.5, dtype=torch.float64))

    def forward(self, x):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(
                LATENT, dist.Normal(self.lin(x.reshape(x.shape[0], -1)), self.log_scale.exp()).to_event(1)
            )


def near_posterior_guide(model, widen=1.2):
    """A LinearGuide set to the exact posterior mean (linear in x) with widened diagonal scales."""
    guide = LinearGuide()
    with torch.no_grad():
        s2 = model.log_sigma.exp() ** 2
        m_inv = torch.linalg.inv(model.weight.T @ model.weight + s2 * torch.eye(2, dtype=torch.float64))
        guide.lin.weight.copy_(m_inv @ model.weight.T)
        guide.lin.bias.copy_(-(m_inv @ model.weight.T @ model.bias))
        guide.log_scale.copy_(torch.log(widen * (s2 * m_inv).diagonal().sqrt()))
    return guide


def test_exact_posterior_makes_every_estimator_exact(ppca, device):
    model, x = ppca
    model, x = model.to(device), x.to(device)
    guide, exact = model.exact_guide(), model.log_marginal(x)
    for fn, k in ((estimators.elbo, 3), (estimators.iwae_bound, 5), (estimators.log_likelihood, 50)):
        torch.testing.assert_close(fn(model, guide, x, num_samples=k), exact, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        estimators.importance_ess(model, guide, x, num_samples=50),
        torch.full((40,), 50.0, dtype=torch.float64, device=device),
    )


def test_bounds_tighten_with_k_towards_the_exact_log_likelihood(ppca):
    model, x = ppca
    post = model.posterior(x)
    loc = post.mean + 0.3
    scale = post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt() * 1.5

    def guide(x):
        n = x.shape[0]
        with pyro.plate(DATA_PLATE, n):
            pyro.sample(LATENT, dist.Normal(loc.repeat(n // 40, 1), scale.repeat(n // 40, 1)).to_event(1))

    reps = x.repeat(500, 1, 1, 1)  # 500 independent estimates per datapoint, averaged
    exact = model.log_marginal(x).mean().item()
    means = [
        estimators.iwae_bound(model, guide, reps, num_samples=k, data_chunk=reps.shape[0]).mean().item()
        for k in (1, 5, 50)
    ]
    elbo = estimators.elbo(model, guide, reps, num_samples=5, data_chunk=reps.shape[0]).mean().item()
    assert elbo == pytest.approx(means[0], abs=0.02)
    assert means[0] < means[1] - 0.05 < means[2] - 0.1 and means[2] < exact
    ll = estimators.log_likelihood(model, guide, x.repeat(1, 1, 1, 1), num_samples=5000, data_chunk=40)
    assert abs(ll.mean().item() - exact) < 0.02


def test_vectorized_weights_equal_sequential_pyro_traces():
    """Each particle's log w, from the vectorized two-layer pass, equals Pyro's own log-densities of
    an unvectorized run conditioned on that particle's latents."""
    model = pyrovae.build_model(
        "vae2", x_shape=(1, 4, 4), latent_dim=[3, 2], hidden=[8], hidden_top=[8]
    ).double()
    guide = pyrovae.build_guide(
        "mlp2", x_shape=(1, 4, 4), latent_dim=(3, 2), hidden=[8], hidden_top=[8]
    ).double()
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4, dtype=torch.float64))
    guide_tr, model_tr, pdim = weights.traces(model, guide, (x,), {}, 4, 1)
    _, log_q = weights.sum_sites(guide_tr, pdim, 4)
    log_lik, log_prior = weights.sum_sites(model_tr, pdim, 4)
    vectorized = log_lik + log_prior - log_q
    for k in range(4):
        values = {s: guide_tr.nodes[s]["value"][k] for s in ("z1", "z2")}
        g = poutine.trace(poutine.condition(guide, data=values)).get_trace(x)
        m = poutine.trace(poutine.condition(model, data=values)).get_trace(x)
        g.compute_log_prob()
        m.compute_log_prob()
        seq = sum(m.nodes[s]["log_prob"] for s in ("x", "z1", "z2")) - sum(
            g.nodes[s]["log_prob"] for s in ("z1", "z2")
        )
        torch.testing.assert_close(vectorized[k], seq)


def test_chunks_of_particles_and_data_agree_with_one_pass(ppca):
    """Chunk alignment is exact (the exact-guide test in test_estimators puts log p(x_n) in every
    entry); here the chunked log-sum-exp over particle chunks gives the same K = 2000 estimate."""
    model, x = ppca
    guide = near_posterior_guide(model)
    torch.testing.assert_close(guide.lin(x.reshape(40, -1)), model.posterior(x).mean)
    whole = estimators.log_likelihood(model, guide, x, num_samples=2000)
    chunked = estimators.log_likelihood(model, guide, x, num_samples=2000, particle_chunk=300, data_chunk=7)
    assert chunked.shape == whole.shape == (40,)
    assert (chunked - whole).abs().mean() < 0.03  # Monte Carlo noise; misaligned chunks are off by nats
    assert (chunked - model.log_marginal(x)).abs().mean() < 0.03


def grads(objective, model, guide, x, seed):
    pyro.set_rng_seed(seed)
    loss = objective(model, guide, x)
    params = [*model.parameters(), *guide.parameters()]
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


def test_iwae_with_one_sample_has_the_elbo_gradient():
    model = pyrovae.build_model("vae", x_shape=(1, 4, 4), latent_dim=3, hidden=[8]).double()
    guide = pyrovae.build_guide("mlp", x_shape=(1, 4, 4), latent_dim=3, hidden=[8]).double()
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4, dtype=torch.float64))
    elbo = make_elbo("elbo")
    g_elbo = grads(lambda m, g, x: elbo.differentiable_loss(m, g, x), model, guide, x, 7)
    iwae = IWAEObjective(1)
    iwae(model, guide, x)  # the first call traces once to learn the plate nesting (drawing random numbers)
    g_iwae = grads(iwae, model, guide, x, 7)
    torch.testing.assert_close(g_iwae, g_elbo)
    assert g_elbo.abs().max() > 1e-3


def test_dreg_is_unbiased_for_the_iwae_gradient_and_lowers_the_guide_variance(ppca):
    model, x = ppca
    guide = LinearGuide()
    reps = x.repeat(500, 1, 1, 1)

    def stats(objective, seeds):
        g = torch.stack([grads(objective, model, guide, reps, s) / 500 for s in seeds])
        return g.mean(0), g.std(0) / math.sqrt(len(seeds))

    mean_iwae, se_iwae = stats(IWAEObjective(5), range(100, 110))
    mean_dreg, se_dreg = stats(IWAEObjective(5, dreg=True), range(200, 210))
    z = (mean_iwae - mean_dreg).abs() / (se_iwae**2 + se_dreg**2).sqrt()
    assert z.max() < 4.5  # 30 parameters; a biased estimator (w instead of w^2) scores above 100 here
    n_guide = sum(p.numel() for p in guide.parameters())
    # lower total variance of the guide's gradient (Tucker et al. 2018, fig. 2)
    assert (se_dreg[-n_guide:] ** 2).sum() < 0.7 * (se_iwae[-n_guide:] ** 2).sum()


def test_dreg_refuses_a_guide_without_reparameterization():
    def model(x):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample("z", dist.Bernoulli(0.3))

    with pytest.raises(pyrovae.PyrovaeError, match="reparameterizable.*'z'"):
        IWAEObjective(3, dreg=True)(model, guide, torch.zeros(4))


@pytest.mark.parametrize("objective", ["iwae", "dreg"])
def test_iwae_objectives_train_towards_the_exact_log_likelihood(ppca, objective):
    model, x = ppca
    for p in model.parameters():
        p.requires_grad_(False)
    guide = LinearGuide()
    data = x.repeat(10, 1, 1, 1)
    start = estimators.iwae_bound(model, guide, data, num_samples=5).mean().item()
    pyrovae.fit(
        model,
        guide,
        data,
        config=TrainConfig(objective=objective, k=5, epochs=40, batch_size=100, lr=0.02),
        progress=False,
    )
    end = estimators.iwae_bound(model, guide, data, num_samples=5).mean().item()
    exact = model.log_marginal(x).mean().item()
    assert end > start and exact - end < 0.3 * (exact - start)


def test_objective_names():
    with pytest.raises(pyrovae.ConfigError, match="Did you mean 'iwae'"):
        make_objective("iwea")
    with pytest.raises(pyrovae.ConfigError, match="k >= 1"):
        make_objective("iwae", k=0)
    with pytest.raises(pyrovae.ConfigError, match="set train.k"):
        make_objective("dreg", num_particles=5)


def test_paper_learning_rate_schedule():
    """Burda et al. (2015), sec. 5: 3^i epochs at 1e-3 * 10^(-i/7), 3280 epochs in all."""
    factors = [iwae_lr_factor(e) for e in range(3280)]
    for i in range(8):
        start = (3**i - 1) // 2
        assert factors[start : start + 3**i] == [pytest.approx(10 ** (-i / 7))] * 3**i
