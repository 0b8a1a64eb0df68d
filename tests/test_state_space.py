"""The linear-Gaussian state-space model: its Kalman filter against the joint Gaussian of the
observed steps, its exact guide, and the estimators on sequences of several lengths."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyrovae.hooks import prefix_mask
from pyrovae.inference.ais import ais_log_likelihood
from pyrovae.inference.estimators import per_step_and_stderr
from pyrovae.inference.scoring import evaluate_data
from pyrovae.models.state_space import LinearGaussianSSM
from pyrovae.sites import DATA_PLATE, step_site


def sequences(n: int = 6, steps: int = 5, obs: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = LinearGaussianSSM(2, obs).double()
    with torch.no_grad():
        model.transition.copy_(torch.tensor([[0.9, 0.2], [-0.3, 0.7]]))
    x = torch.randn(n, steps, obs, dtype=torch.float64)
    lengths = torch.randint(1, steps + 1, (n,))
    lengths[0] = steps
    return model, x, torch.arange(steps) < lengths[:, None], lengths


def test_kalman_filter_equals_the_joint_gaussian_of_the_observed_steps():
    """log p(x_{1:L}) from the filter equals N(x; c, (I (x) C) Cov z (I (x) C)^T + I (x) R) of
    the stacked observed steps, each sequence at its own length L."""
    model, x, mask, lengths = sequences()
    got = model.log_marginal(x, mask)
    for i, steps in enumerate(lengths.tolist()):
        cov = model.joint_prior(steps)
        emit = torch.block_diag(*[model.emission] * steps)
        noise = torch.diag((model.log_r.exp() ** 2).repeat(steps))
        marginal = dist.MultivariateNormal(model.bias.repeat(steps), emit @ cov @ emit.T + noise)
        torch.testing.assert_close(got[i], marginal.log_prob(x[i, :steps].reshape(-1)))


def test_the_exact_guide_makes_every_weight_log_p_x():
    """With q = p(z | x) the ELBO and the IS estimate both equal the filter's log p(x)."""
    model, x, mask, _ = sequences()
    with torch.no_grad():
        exact = model.log_marginal(x, mask)
        out = evaluate_data(model, model.exact_guide(), x, mask, num_samples=64, per_datapoint=True)
    for key in ("elbo", "log_likelihood"):
        torch.testing.assert_close(out["per_datapoint"][key], exact)


def test_importance_sampling_from_a_plain_pyro_guide_reaches_the_filter():
    """A guide written as Pyro users write one (a loop over time, no particle dimension in
    mind) proposing from the prior transition: K = 5000 draws bring the mean log p(x) of short
    sequences within 0.05 nats of the filter's, and the ELBO stays below it."""
    model, x, mask, _ = sequences(n=20, steps=3, obs=1, seed=1)

    def guide(x, mask):
        q = model.log_q.exp()
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = x.new_zeros(x.shape[0], model.latent_dim)
            for t in pyro.markov(range(x.shape[1])):
                z = pyro.sample(
                    step_site("z", t + 1), dist.Normal(z @ model.transition.T, q).to_event(1).mask(mask[:, t])
                )

    with torch.no_grad():
        exact = model.log_marginal(x, mask).mean().item()
        out = evaluate_data(model, guide, x, mask, num_samples=5000)
    assert out["log_likelihood"]["mean"] == pytest.approx(exact, abs=0.05)
    assert out["elbo"]["mean"] < exact - 0.1


def test_masked_steps_leave_no_trace_in_the_weights():
    """A sequence's log weights do not change with what its masked steps hold."""
    model, x, mask, _ = sequences()
    guide = model.exact_guide()
    y = torch.where(mask[..., None], x, torch.randn_like(x) * 100)

    def weights(data):
        pyro.set_rng_seed(3)
        with torch.no_grad():
            g = poutine.trace(guide).get_trace(data, mask)
            m = poutine.trace(poutine.replay(model, trace=g)).get_trace(data, mask)
        return m.log_prob_sum() - g.log_prob_sum()

    torch.testing.assert_close(weights(x), weights(y))


def test_per_step_report_weighs_every_step_alike():
    """The per-step figure is total over total steps; its standard error is the ratio
    estimator's, which matches the spread of the ratio over many resampled sets of sequences."""
    torch.manual_seed(0)
    lengths = torch.randint(5, 60, (4000,))
    values = -1.3 * lengths + 2.0 * lengths.double().sqrt() * torch.randn(4000, dtype=torch.float64)
    ratio, se = per_step_and_stderr(values, lengths)
    assert ratio == pytest.approx(values.sum().item() / lengths.sum().item())
    draws = []
    for _ in range(400):
        i = torch.randint(0, 4000, (4000,))
        draws.append(per_step_and_stderr(values[i], lengths[i])[0])
    assert se == pytest.approx(torch.tensor(draws).std().item(), rel=0.15)


def test_ais_from_the_prior_reaches_the_filter():
    """AIS from p(z) (Neal 2001) through 1000 temperatures, 16 chains: each sequence within
    0.15 nats of the Kalman filter's log p(x), their mean within 0.05."""
    torch.manual_seed(0)
    ssm = LinearGaussianSSM(2, 3)
    lengths = torch.randint(2, 4, (5,))
    mask = prefix_mask(lengths, 3)
    x = torch.randn(5, 3, 3) * mask[..., None]
    exact = ssm.log_marginal(x, mask).detach()
    out = ais_log_likelihood(
        ssm,
        ssm.exact_guide(),
        x,
        mask,
        num_steps=1000,
        num_chains=16,
        leapfrog_steps=5,
        initial="prior",
        adapt_chains=2,
        adapt_rounds=1,
    )
    error = out.log_likelihood - exact
    assert error.abs().max() < 0.15 and abs(float(error.mean())) < 0.05, error
