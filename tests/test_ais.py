"""Annealed importance sampling and BDMC against probabilistic PCA's exact log p(x)."""

import pyro.distributions as dist
import pytest
import torch

from pyrovae.errors import PyrovaeError
from pyrovae.inference import ais, bidirectional, stepsize


def test_one_step_from_the_exact_posterior_is_exact(ppca, device):
    model, x = ppca
    model, x = model.to(device), x.to(device)
    r = ais.ais_log_likelihood(model, model.exact_guide(), x, num_steps=1, num_chains=3, progress=False)
    torch.testing.assert_close(r.log_likelihood, model.log_marginal(x), rtol=0, atol=1e-10)
    assert r.log_weights.shape == (3, 40) and torch.all(r.stderr < 1e-10)
    assert r.log_likelihood.device.type == device


def test_captured_chains_move_as_the_eager_ones(ppca, device):
    """The path's densities through one captured graph per shape (chunks of 16 and 8 datapoints)
    give the eager run's weights, acceptances and step sizes, draw for draw; the parameters are
    trainable again afterwards."""
    model, x = ppca
    model, x = model.to(device), x.to(device)
    guide = model.exact_guide()
    runs = {}
    for mode in ("none", "capture"):
        torch.manual_seed(0)
        runs[mode] = ais.ais_log_likelihood(
            model, guide, x, num_steps=20, num_chains=4, data_chunk=16, compile=mode, progress=False
        )
    for a, b in zip(runs["none"], runs["capture"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    chains = ais.Chains(model, guide, (x,), {}, 4, "guide", compile="capture")
    with ais.annealing(model, guide):
        chains.ends(chains.start())
    assert chains._ends.summary() == "capture" and all(p.requires_grad for p in model.parameters())


def test_keyword_arguments_are_sliced_with_every_chunk(ppca):
    """A model with a per-datapoint keyword tensor runs eagerly, each chunk on its own slice."""
    base, x = ppca
    shift = torch.linspace(-1, 1, 40, dtype=x.dtype).reshape(40, 1, 1, 1)
    exact = base.exact_guide()

    def model(x, *, shift):
        base(x - shift)

    def guide(x, *, shift):
        exact(x - shift)

    r = ais.ais_log_likelihood(model, guide, x, shift=shift, num_steps=1, num_chains=2, data_chunk=16)
    torch.testing.assert_close(r.log_likelihood, base.log_marginal(x - shift), rtol=0, atol=1e-10)


def test_sigmoid_schedule_rises_from_zero_to_one():
    b = ais.sigmoid_schedule(100)
    assert b.shape == (101,) and b[0] == 0 and b[-1] == 1 and torch.all(b.diff() > 0)
    assert b[1] < 0.01 < 0.99 < b[-2]  # dense at both ends
    with pytest.raises(PyrovaeError, match="num_steps >= 1"):
        ais.sigmoid_schedule(0)


def test_hmc_transitions_reach_and_keep_the_target(ppca):
    """Chains started from the prior, moved by transitions at beta = 1, have the exact
    posterior's moments (a wrong gradient, momentum or Metropolis test shifts them)."""
    model, x = ppca
    x = x[:10]
    chains = ais.Chains(model, model.exact_guide(), (x,), {}, 1000, "prior")
    u = chains.start()
    ends = chains.ends(u)
    step = torch.full((1, 10, 1), 0.25, dtype=x.dtype)
    rates = []
    for _ in range(60):
        u, ends, accept = chains.transition(u, 1.0, step, 10, ends)
        rates.append(accept.double().mean())
    post = model.posterior(x)
    standard = (u - post.mean) / post.variance.sqrt()  # N(0, 1) per coordinate if the chains mix
    assert abs(standard.mean()) < 0.05 and abs(standard.var() - 1) < 0.05
    assert 0.5 < torch.stack(rates[-10:]).mean() < 1  # a real Metropolis test: some proposals fail
    torch.testing.assert_close(ends.log_joint, chains.ends(u).log_joint)  # kept ends match the state


def test_ais_from_the_prior_converges_to_the_exact_log_likelihood(ppca):
    """The mean error over 40 datapoints: importance sampling from the prior (T = 1) below, AIS
    rising with T and within 0.02 nats at T = 1000, S = 16 (over seeds: within 0.007)."""
    model, x = ppca
    exact = model.log_marginal(x)
    errors = {}
    for steps in (1, 30, 1000):
        torch.manual_seed(steps)
        r = ais.ais_log_likelihood(
            model, model.exact_guide(), x, num_steps=steps, num_chains=16, initial="prior", progress=False
        )
        errors[steps] = (r.log_likelihood - exact).mean().item()
    assert errors[1] < errors[1000] - 0.02 and errors[30] < 0.02  # a lower bound, rising with T
    assert abs(errors[1000]) < 0.02
    assert 0.3 < r.acceptance.mean() < 1 and torch.all(r.step_size > 0.05)  # adapted upwards


def test_bdmc_sandwiches_the_exact_value_and_the_gap_shrinks(ppca):
    model, _ = ppca
    torch.manual_seed(3)
    data = bidirectional.simulate(model, torch.zeros(20, 1, 1, 5, dtype=torch.float64))
    assert data.latents["z"].shape == (20, 2) and data.x.shape == (20, 1, 1, 5)
    exact = model.log_marginal(data.x)
    gaps = []
    for steps in (3, 100):
        s = bidirectional.sandwich(
            model, model.exact_guide(), data, num_steps=steps, num_chains=8, initial="prior", leapfrog_steps=5
        )
        below, above = s.lower - exact, s.upper - exact  # in expectation <= 0 and >= 0
        assert below.mean() < 3 * below.std() / 20**0.5 and above.mean() > -3 * above.std() / 20**0.5
        gaps.append(s.gap.mean().item())
    assert gaps[0] > 0.2 and gaps[1] < 0.3 * gaps[0], (
        gaps
    )  # T = 3 was over 1 nat before adaptation reached its target


def test_bdmc_reports_importance_sampling_on_the_same_data(ppca):
    model, x = ppca
    r = bidirectional.bdmc(
        model, model.exact_guide(), x, num_datapoints=10, num_steps=30, num_chains=4, initial="prior",
        leapfrog_steps=5, importance_samples=7,
    )  # fmt: skip
    assert r.data.x.shape == (10, 1, 1, 5) and not torch.equal(r.data.x, x[:10])  # simulated, not x
    torch.testing.assert_close(r.importance, model.log_marginal(r.data.x), rtol=0, atol=1e-8)  # exact guide
    below, above = r.sandwich.lower - r.importance, r.sandwich.upper - r.importance  # exact: <= 0, >= 0
    assert below.mean() < 3 * below.std() / 10**0.5 and above.mean() > -3 * above.std() / 10**0.5
    with pytest.raises(PyrovaeError, match=r"num_datapoints must be in \[1, 40\]"):
        bidirectional.bdmc(model, model.exact_guide(), x, num_datapoints=41)


def test_simulated_data_follow_the_model(ppca):
    """x ~ p(x | z*) with z* ~ p(z): the simulated data have the model's marginal covariance."""
    model, _ = ppca
    data = bidirectional.simulate(model, torch.zeros(20000, 1, 1, 5, dtype=torch.float64))
    flat = data.x.reshape(20000, 5)
    cov = model.weight @ model.weight.T + model.log_sigma.exp() ** 2 * torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(flat.mean(0), model.bias.detach(), atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(flat.T), cov.detach(), atol=0.06, rtol=0)


def test_discrete_latents_are_refused_by_name():
    def model(x):
        import pyro

        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3))
            pyro.sample("x", dist.Normal(c.float(), 1.0), obs=x)

    def guide(x):
        import pyro

        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(torch.ones(3) / 3))

    with pytest.raises(PyrovaeError, match="site 'c' is discrete"):
        ais.ais_log_likelihood(model, guide, torch.zeros(4), num_steps=2, num_chains=2, progress=False)


def _frozen_passes(model, x, chains_count, steps_count):
    """Frozen step sizes from an adaptation pass, then forward AIS from the prior and reverse AIS
    from exact posterior samples under them: per-chain log-weights (S, n) of each."""
    chains = ais.Chains(model, model.exact_guide(), (x,), {}, chains_count, "prior", compile="none")
    adapting = ais.Chains(model, model.exact_guide(), (x,), {}, 4, "prior", compile="none")
    betas = ais.sigmoid_schedule(steps_count)
    with ais.annealing(model, None):
        steps = stepsize.frozen_steps(adapting, x.shape[0], betas, 0.5, 5, 0.65)
        forward, _, used = ais.anneal(chains, chains.start(), betas, steps, 5)
        exact = model.posterior(x).sample((chains_count,))
        reverse, _, _ = ais.anneal(chains, exact, betas.flip(0), steps.flip(0), 5)
    assert torch.equal(used, steps) and (
        steps_count < 3 or steps.std() > 0
    )  # frozen in the measured pass, adapted before it
    return forward, reverse


def test_frozen_schedule_weights_are_unbiased_for_p_and_one_over_p(ppca):
    """With the schedule frozen before the measured passes, E[w] = p(x) forward and
    E[w] = 1 / p(x) in reverse (Neal 2001; Grosse et al. 2015): the mean of w / p(x) (and of
    w p(x)) over 4000 chains on each of 5 datapoints is 1 within its standard error, while
    one-chain estimates sit below (forward) and above (reverse) the exact log p(x) (Jensen)."""
    model, x = ppca
    x = x[:5]
    torch.manual_seed(11)
    forward, reverse = _frozen_passes(model, x, 4000, 20)
    log_px = model.log_marginal(x).detach()
    for ratio in (torch.exp(forward - log_px), torch.exp(reverse + log_px)):
        se = ratio.std() / ratio.numel() ** 0.5
        assert se < 0.03 and abs(ratio.mean() - 1) < 3.5 * se  # unbiased, and the test has power
    # one chain's estimate: below in expectation forward, above in reverse (Jensen)
    assert (forward.mean(0) < log_px).all() and (-reverse.mean(0) > log_px).all()


def test_adaptation_and_measured_passes_draw_from_different_streams(ppca, monkeypatch):
    """The adaptation pass starts from draws of its own stream (not the measured pass's), and a
    seeded run is reproducible."""
    model, x = ppca
    starts, start = [], ais.Chains.start
    monkeypatch.setattr(ais.Chains, "start", lambda self: starts.append(start(self)) or starts[-1])
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(
            ais.ais_log_likelihood(
                model, model.exact_guide(), x, num_steps=10, num_chains=4, adapt_chains=4, initial="prior"
            )
        )
    assert len(starts) == 4 and not torch.allclose(starts[0], starts[1])  # adaptation, then measured
    torch.testing.assert_close(starts[1], starts[3])
    torch.testing.assert_close(runs[0].log_weights, runs[1].log_weights)
    assert runs[0].steps.shape == (11, 40)
    with pytest.raises(PyrovaeError, match="adapt_chains must be an integer >= 0"):
        ais.ais_log_likelihood(model, model.exact_guide(), x, num_steps=2, adapt_chains=-1)


@pytest.mark.parametrize("step_size", [0.01, 0.5])
def test_adaptation_reaches_the_target_acceptance_at_every_temperature(ppca, step_size):
    """From a step size 20 times too small or about right, T = 100: the old rule (x1.02 per
    transition) left acceptance near 1 over most of the path from the small one; updates at each
    temperature bring every band of the measured pass near 0.65, and a fixed step far from it
    warns."""
    import warnings

    model, x = ppca
    options = dict(num_steps=100, num_chains=8, initial="prior", step_size=step_size, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no band far from the target: no warning
        r = ais.ais_log_likelihood(model, model.exact_guide(), x[:8], adapt_chains=4, **options)
    assert r.acceptance_bands.shape == (stepsize.BANDS, 8)
    assert (r.acceptance_bands.mean(1) - 0.65).abs().max() < stepsize.FAR
    if step_size == 0.01:
        with pytest.warns(RuntimeWarning, match=r"acceptance is far from its target 0.65 \(band 1/5: 1.00"):
            fixed = ais.ais_log_likelihood(model, model.exact_guide(), x[:8], adapt_chains=0, **options)
        assert fixed.acceptance.mean() > 0.95
