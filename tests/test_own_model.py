"""A researcher's own model and guide, written as Pyro's examples write them: a two-site pair whose
guide concatenates an encoder feature (N, H) with a draw, trained and scored unchanged; no
particle dim at one particle; several particles on repeated data, equal to the broadcasting
twin of the same guide draw for draw; AIS refuses it by name."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyrovae
from pyrovae import estimators
from pyrovae.errors import ModelError
from pyrovae.inference import particles, weights
from pyrovae.training.settings import TrainConfig

PIXELS = 12


class TwoSiteVAE(nn.Module):
    """style ~ StudentT(3, 0, 1)^2, content ~ N(0, I_3), x ~ Bernoulli(f(style, content))."""

    def __init__(self):
        super().__init__()
        self.dec = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, PIXELS))

    def forward(self, x):
        n = x.shape[0]
        with pyro.plate("data", n):
            s = pyro.sample("style", dist.StudentT(3.0, x.new_zeros(n, 2), 1.0).to_event(1))
            c = pyro.sample("content", dist.Normal(x.new_zeros(n, 3), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(torch.cat([s, c], -1))).to_event(1), obs=x)


class TwoSiteGuide(nn.Module):
    """q(style | x) q(content | x, style): with ``broadcast`` False, written as Pyro's examples
    write it (torch.cat of the (N, H) feature and the draw), which no particle plate survives."""

    def __init__(self, broadcast: bool = False):
        super().__init__()
        self.broadcast = broadcast
        self.enc = nn.Sequential(nn.Linear(PIXELS, 16), nn.Tanh())
        self.style, self.content = nn.Linear(16, 4), nn.Linear(18, 6)

    def forward(self, x):
        h = self.enc(x)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.style(h).chunk(2, -1)
            s = pyro.sample("style", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))
            h = h.expand(*s.shape[:-1], -1) if self.broadcast else h
            loc, raw = self.content(torch.cat([h, s], -1)).chunk(2, -1)
            pyro.sample("content", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def _pair():
    torch.manual_seed(0)
    model, guide = TwoSiteVAE(), TwoSiteGuide()
    twin = TwoSiteGuide(broadcast=True)
    twin.load_state_dict(guide.state_dict())
    x = torch.bernoulli(torch.full((20, PIXELS), 0.3), generator=torch.Generator().manual_seed(1))
    return model, guide, twin, x


def test_the_pyro_style_guide_fails_under_a_particle_plate_and_is_told_where():
    model, guide, twin, x = _pair()
    why = particles.broadcast_failure(model, guide, (x,), {})
    assert "after site 'style'" in why and "Tensors must have same number of dimensions" in why
    assert particles.broadcast_failure(model, twin, (x,), {}) is None


def test_one_particle_has_no_particle_dim_and_scores_as_pyro_does():
    model, guide, _, x = _pair()
    pyro.set_rng_seed(3)
    guide_tr, model_tr, _ = weights.traces(model, guide, (x,), {}, 1, 1)
    assert guide_tr.nodes["style"]["value"].shape == (20, 2)  # (N, D): no leading dim of one
    pyro.set_rng_seed(3)
    terms = weights.log_prob_terms(model, guide, x, num_samples=1)
    pyro.set_rng_seed(3)
    elbo = -pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x)
    torch.testing.assert_close(terms.elbo.sum(), elbo)


@pytest.mark.parametrize("k", [2, 7])
def test_several_particles_on_repeated_data_equal_the_broadcasting_twin(k):
    model, guide, twin, x = _pair()
    with pytest.warns(RuntimeWarning, match="do not broadcast over a leading particle dim"):
        pyro.set_rng_seed(5)
        tiled = estimators.log_weights(model, guide, x, num_samples=k, compile="none")
    pyro.set_rng_seed(5)
    broadcast = estimators.log_weights(model, twin, x, num_samples=k, compile="none")
    assert tiled.shape == (k, 20)
    torch.testing.assert_close(tiled, broadcast, rtol=1e-5, atol=1e-4)
    with warnings.catch_warnings():  # said once per pair
        warnings.simplefilter("error")
        estimators.elbo(model, guide, x, num_samples=k, compile="none")


def test_a_linear_gaussian_pair_in_the_pyro_style_recovers_the_exact_log_likelihood():
    """z1 ~ N(0, 1), z2 ~ N(0, 1), x ~ N(W [z1, z2] + b, s^2 I): log p(x) is Gaussian in closed
    form; a guide that concatenates (N, H) with the z1 draw, scored on repeated data, recovers it."""
    torch.manual_seed(2)
    w, b, s = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, dtype=torch.float64), 0.8

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(torch.cat([z1, z2], -1) @ w.T + b, s).to_event(1), obs=x)

    cov = w @ w.T + s**2 * torch.eye(4, dtype=torch.float64)
    post = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + w.T @ w / s**2)  # exact posterior

    def guide(x):
        mean = (x - b) @ w @ post.T / s**2  # (N, 2)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(mean[:, :1], post[0, 0].sqrt() * 1.3).to_event(1))
            # the conditional of z2 given z1, read through a concatenation that does not broadcast
            feats = torch.cat([mean, z1], -1)
            gain = post[1, 0] / post[0, 0]
            loc = feats[:, 1:2] + gain * (feats[:, 2:3] - feats[:, 0:1])
            scale = (post[1, 1] - post[1, 0] ** 2 / post[0, 0]).sqrt() * 1.3
            pyro.sample("z2", dist.Normal(loc, scale).to_event(1))

    x = dist.MultivariateNormal(b, cov).sample((30,))
    exact = dist.MultivariateNormal(b, cov).log_prob(x)
    with pytest.warns(RuntimeWarning):
        est = estimators.log_likelihood(model, guide, x, num_samples=4000, compile="none")
    assert (est - exact).abs().max() < 0.02


def test_fit_trains_the_pyro_style_pair_with_elbo_iwae_and_dreg():
    model, guide, _, x = _pair()
    data = torch.bernoulli(torch.full((64, PIXELS), 0.3), generator=torch.Generator().manual_seed(2))
    r = pyrovae.fit(
        model, guide, data, config=TrainConfig(epochs=1, batch_size=16), device="cpu", progress=False
    )
    assert r.compile == "capture" and r.step == 4
    for objective in ("iwae", "dreg"):
        cfg = TrainConfig(epochs=2, batch_size=16, objective=objective, k=4)
        r = pyrovae.fit(model, guide, data, config=cfg, device="cpu", progress=False)
        rows = [row for row in r.metrics if row["kind"] == "step"]
        assert rows and all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)


def test_ais_from_the_guide_refuses_the_pyro_style_pair_by_name_and_from_the_prior_runs():
    model, guide, _, x = _pair()
    match = "AIS from the guide needs a pair that broadcasts.*'style'"
    with pytest.warns(RuntimeWarning), pytest.raises(ModelError, match=match):
        estimators.ais_log_likelihood(model, guide, x[:4], num_steps=4, num_chains=3)
    out = estimators.ais_log_likelihood(model, guide, x[:4], num_steps=4, num_chains=3, initial="prior")
    assert out.log_likelihood.shape == (4,) and torch.isfinite(out.log_likelihood).all()


def test_a_direct_call_of_the_core_names_the_fix():
    model, guide, _, x = _pair()
    with pytest.raises(ModelError, match="particles.decide"):
        weights.log_prob_terms(model, guide, x, num_samples=4)
    with pytest.warns(RuntimeWarning):
        particles.decide(model, guide, (x,))
    assert weights.log_prob_terms(model, guide, x, num_samples=4).log_weights.shape == (4, 20)


def test_a_resumed_run_of_the_pyro_style_pair_is_the_unbroken_one(tmp_path):
    data = torch.bernoulli(torch.full((64, PIXELS), 0.3), generator=torch.Generator().manual_seed(2))

    def run(where, **stop):
        torch.manual_seed(0)
        model, guide = TwoSiteVAE(), TwoSiteGuide()
        cfg = TrainConfig(epochs=2, batch_size=16, objective="iwae", k=3, checkpoint_every=1, **stop)
        pyrovae.fit(model, guide, data, config=cfg, seed=1, device="cpu", run_dir=where, progress=False)
        return model, guide

    whole = run(tmp_path / "whole")
    run(tmp_path / "broken", max_steps=3)
    torch.manual_seed(0)
    model, guide = TwoSiteVAE(), TwoSiteGuide()
    cfg = TrainConfig(epochs=2, batch_size=16, objective="iwae", k=3, checkpoint_every=1)
    broken = dict(seed=1, device="cpu", run_dir=tmp_path / "broken", resume=True, progress=False)
    r = pyrovae.fit(model, guide, data, config=cfg, **broken)
    assert r.step == 8
    for a, b in zip((model, guide), whole):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name


def test_a_broadcasting_pair_with_dropout_in_training_mode_is_not_taken_for_one_that_mixes():
    torch.manual_seed(0)
    model, guide = TwoSiteVAE(), TwoSiteGuide(broadcast=True)
    guide.enc.append(nn.Dropout(0.5))
    x = torch.bernoulli(torch.full((6, PIXELS), 0.3))
    assert guide.training and particles.broadcast_failure(model, guide, (x,), {}) is None
    assert guide.training and guide.enc[-1].training  # the modes are given back
