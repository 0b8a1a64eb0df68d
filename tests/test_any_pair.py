"""Any Pyro model and guide: Pyro's settings left alone, the tutorial idiom captured, guides sized
for all N datapoints, float32 and float64 training."""

import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyrovae
from pyrovae.diagnostics import LocalGaussian
from pyrovae.errors import ModelError
from pyrovae.guides import MLPGuide
from pyrovae.inference import estimators, pairs
from pyrovae.models import LinearGaussian
from pyrovae.sites import DATA_PLATE, LATENT
from pyrovae.training.settings import TrainConfig


@pytest.mark.parametrize("local", [False, True])
def test_import_and_fit_leave_pyro_settings_as_the_user_had_them(local):
    code = f"""
import pyro, torch
pyro.settings.set(module_local_params={local})
before = pyro.settings.get()
import pyrovae
from pyrovae.models import LinearGaussian
from pyrovae.guides import MLPGuide
assert pyro.settings.get() == before, (before, pyro.settings.get())
model, guide = LinearGaussian((1, 1, 5), 2), MLPGuide((1, 1, 5), 2, hidden=[8])
r = pyrovae.fit(model, guide, torch.randn(64, 1, 1, 5), config=pyrovae.TrainConfig(epochs=1, batch_size=16),
                device="cpu", progress=False)
assert pyro.settings.get() == before
assert r.compile == "capture", r.compile
assert len(pyro.get_param_store().keys()) == 0  # pyrovae's modules keep their parameters to themselves
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


class TutorialVAE(nn.Module):
    """Pyro's VAE tutorial: model and guide are methods of one module and register their
    networks with pyro.module."""

    def __init__(self, pixels=12, latent=2, hidden=16):
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(nn.Linear(pixels, hidden), nn.Softplus(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.Softplus(), nn.Linear(hidden, pixels))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.latent), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        loc, raw = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def _tutorial_run(compile_mode, x):
    pyro.clear_param_store()
    torch.manual_seed(3)
    vae = TutorialVAE()
    cfg = TrainConfig(epochs=3, batch_size=16, compile=compile_mode, log_every=4)
    result = pyrovae.fit(vae.model, vae.guide, x, config=cfg, seed=5, device="cpu", progress=False)
    return vae, result


def test_the_tutorial_idiom_is_captured_and_equals_eager():
    x = torch.bernoulli(torch.full((64, 12), 0.3), generator=torch.Generator().manual_seed(0))
    captured, r_cap = _tutorial_run("auto", x)
    eager, r_eager = _tutorial_run("none", x)
    assert r_cap.compile == "capture" and r_eager.compile == "none"
    for a, b in zip(captured.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert [r["loss"] for r in r_cap.metrics if r["kind"] == "step"] == pytest.approx(
        [r["loss"] for r in r_eager.metrics if r["kind"] == "step"], rel=1e-5
    )
    # a second run in the same process: stale param-store entries of the same names are ignored
    again, r_again = _tutorial_run("auto", x)
    assert r_again.compile == "capture"
    for a, b in zip(again.parameters(), captured.parameters()):
        torch.testing.assert_close(a, b)


def _whole_data_guide(model, x):
    """The exact posterior of all N datapoints, computed once: a guide that ignores its argument
    and only runs on the N datapoints it was built for."""
    post = model.posterior(x)
    loc, tril = post.loc.detach(), post.scale_tril.detach()

    def guide(x_):
        with pyro.plate(DATA_PLATE, loc.shape[0]):
            pyro.sample(LATENT, dist.MultivariateNormal(loc, scale_tril=tril))

    return guide


def test_estimators_run_a_guide_sized_for_all_datapoints(ppca):
    model, x = ppca
    guide = _whole_data_guide(model, x)
    exact = model.log_marginal(x)
    assert pairs.whole_data(model, guide, (x,), {})
    # chunks of 64 pairs would cut the 40 datapoints; the data are kept whole, particles chunked
    lp = estimators.log_likelihood(model, guide, x, num_samples=50, max_rows=64)
    torch.testing.assert_close(lp, exact, rtol=0, atol=1e-9)
    terms = estimators.evaluate_terms(model, guide, x, num_samples=20)
    torch.testing.assert_close(terms["elbo"], exact, rtol=0, atol=1e-9)
    assert estimators.log_weights(model, guide, x, num_samples=7, max_rows=10).shape == (7, 40)


def test_fit_trains_a_guide_with_local_parameters(ppca):
    model, x = ppca
    for p in model.parameters():
        p.requires_grad_(False)
    n = x.shape[0]
    local = LocalGaussian(
        {LATENT: (torch.zeros(n, 2, dtype=x.dtype), torch.ones(n, 2, dtype=x.dtype))},
        {LATENT: torch.Size([2])},
    )
    before = estimators.elbo(model, local, x, num_samples=200).mean()
    result = pyrovae.fit(
        model,
        local,
        x,
        config=TrainConfig(max_steps=300, lr=0.05, batch_size=8),
        device="cpu",
        progress=False,
    )
    after = estimators.elbo(model, local, x, num_samples=200).mean()
    assert result.step == 300  # one full batch of all 40 datapoints per step, whatever batch_size says
    gap = (model.log_marginal(x) - estimators.elbo(model, local, x, num_samples=2000)).mean()
    assert after > before + 1.0 and 0 <= gap < 0.5  # a diagonal Gaussian: close to, not at, p(z|x)
    with pytest.raises(ModelError, match="all 40 training datapoints"):
        pyrovae.fit(model, local, x, x, config=TrainConfig(max_steps=2), device="cpu", progress=False)


@pytest.mark.parametrize("default", [torch.float32, torch.float64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_runs_in_the_parameters_dtype(default, dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        torch.manual_seed(0)
        model = LinearGaussian((1, 1, 5), 2).to(dtype)
        guide = MLPGuide((1, 1, 5), 2, hidden=[8]).to(dtype)
        x = torch.randn(64, 1, 1, 5, dtype=dtype) * 2 + 1
        before = estimators.elbo(model, guide, x, num_samples=50).mean()
        result = pyrovae.fit(
            model,
            guide,
            x,
            x[:16],
            config=TrainConfig(epochs=20, batch_size=16, lr=0.01),
            device="cpu",
            progress=False,
        )
        after = estimators.elbo(model, guide, x, num_samples=50).mean()
    finally:
        torch.set_default_dtype(old)
    assert result.compile == "capture" and result.skipped == 0
    assert all(p.dtype == dtype for p in [*model.parameters(), *guide.parameters()])
    assert after > before + 1.0


def test_a_guide_that_reads_its_table_by_position_is_kept_whole(ppca):
    """A guide with a per-datapoint table read as ``loc[:x.shape[0]]`` runs on any slice with
    plates of the slice's size, and would score every chunk with rows 0..m-1: the probe compares
    its log-densities on a slice with those inside a larger run, finds them different, and the
    estimators keep the data whole: exact numbers, chunked or not."""
    model, x = ppca
    post = model.posterior(x)
    loc, tril = post.loc.detach(), post.scale_tril.detach()

    def by_position(x_):
        n = x_.shape[0]
        with pyro.plate(DATA_PLATE, n):
            pyro.sample(LATENT, dist.MultivariateNormal(loc[:n], scale_tril=tril[:n]))

    assert not pairs.whole_data(model, model.exact_guide(), (x,), {})  # a guide of x itself
    assert pairs.whole_data(model, by_position, (x,), {})
    assert "elsewhere in a batch" in pairs.per_datapoint_state(model, by_position, (x,), {})
    exact = model.log_marginal(x)
    for options in ({}, dict(data_chunk=7, particle_chunk=3), dict(max_rows=16)):
        lp = estimators.log_likelihood(model, by_position, x, num_samples=5, **options)
        torch.testing.assert_close(lp, exact, rtol=0, atol=1e-9)
