"""The fast paths change speed, never results: captured and compiled losses against eager ones."""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovae
from pyrovae.blocks.likelihoods import BernoulliLogits
from pyrovae.guides import MLPGuide
from pyrovae.inference import chunks, estimators, weights
from pyrovae.models import VAE
from pyrovae.runtime.compile import Compiled
from pyrovae.sites import DATA_PLATE, LATENT
from pyrovae.training.catalog import make_objective
from pyrovae.training.objectives import ELBOObjective
from pyrovae.training.settings import TrainConfig


def pair(seed=0, hidden=(16,)):
    torch.manual_seed(seed)
    return VAE((1, 4, 4), 3, hidden=list(hidden)), MLPGuide((1, 4, 4), 3, hidden=list(hidden))


def data(n=40, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, 1, 4, 4, generator=g), generator=g)


def trajectory(mode, objective="elbo", steps=12, batch=16, device="cpu", **train):
    model, guide = pair()
    cfg = TrainConfig(
        max_steps=steps,
        batch_size=batch,
        log_every=1,
        compile=mode,
        objective=objective,
        kl_schedule="linear",
        warmup_steps=6,
        **train,
    )
    result = pyrovae.fit(model, guide, data(), config=cfg, device=device, progress=False, seed=5)
    losses = torch.tensor([r["loss"] for r in result.metrics if r["kind"] == "step"])
    return result, losses, [p.detach().clone() for p in (*model.parameters(), *guide.parameters())]


@pytest.mark.parametrize("objective", ["elbo", "iwae", "dreg"])
def test_capture_replays_the_eager_trajectory(objective, device):
    # 40 datapoints in batches of 16: two full batches and one of 8, so two shapes are captured;
    # the KL warm-up changes beta every step without a new capture
    eager, eager_losses, eager_params = trajectory("none", objective, device=device)
    captured, losses, params = trajectory("capture", objective, device=device)
    assert eager.compile == "none" and captured.compile == "capture"
    torch.testing.assert_close(losses, eager_losses, rtol=1e-6, atol=1e-6)
    for a, b in zip(params, eager_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_auto_is_capture():
    result, _, _ = trajectory("auto", steps=3)
    assert result.compile == "capture"


@pytest.mark.parametrize(
    "device,mode", [("cpu", "inductor")] + [("cuda", "cudagraphs")] * torch.cuda.is_available()
)
def test_inductor_matches_eager_with_the_same_noise(monkeypatch, device, mode):
    # inductor draws its own random numbers unless told to fall back to eager's generator
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    _, eager_losses, eager_params = trajectory("none", batch=20, steps=6, device=device)
    result, losses, params = trajectory(mode, batch=20, steps=6, device=device)
    assert result.compile == mode
    torch.testing.assert_close(losses, eager_losses, rtol=1e-4, atol=1e-4)
    for a, b in zip(params, eager_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compiled_evaluation_equals_eager():
    model, guide = pair()
    x = data(12)
    out = {}
    for mode in ("none", "capture"):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a refused capture warns: fail on it
            out[mode] = estimators.evaluate_terms(
                model, guide, x, num_samples=300, particle_chunk=128, data_chunk=5, compile=mode
            )
    for key in out["none"]:
        torch.testing.assert_close(out["capture"][key], out["none"][key], rtol=1e-6, atol=1e-6)


class BranchingGuide(MLPGuide):
    """Python control flow on a tensor value: cannot be recorded as one graph."""

    def forward(self, x):
        loc, scale = self.params(x)
        if loc.sum() > 1e9:
            scale = scale * 2
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(LATENT, dist.Normal(loc, scale).to_event(1))


class NumpyNoiseGuide(MLPGuide):
    """Noise from numpy: a recording would freeze it, so the check must refuse the capture."""

    def forward(self, x):
        loc, scale = self.params(x)
        loc = loc + torch.as_tensor(np.random.randn(), dtype=loc.dtype)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(LATENT, dist.Normal(loc, scale).to_event(1))


@pytest.mark.parametrize(
    "guide_cls,reason", [(BranchingGuide, "could not be recorded"), (NumpyNoiseGuide, "does not reproduce")]
)
def test_programs_that_cannot_be_captured_run_eagerly(guide_cls, reason):
    model, _ = pair()
    guide = guide_cls((1, 4, 4), 3, hidden=[16])
    objective = ELBOObjective()
    loss = Compiled(lambda x, beta: objective(model, guide, x, beta=beta), [model, guide], "auto")
    x = data(8)
    value = loss(x, torch.tensor(1.0))
    assert loss.summary().startswith("none") and reason in loss.summary()
    assert torch.isfinite(value) and value.requires_grad
    named = Compiled(lambda x, beta: objective(model, guide, x, beta=beta), [model, guide], "capture")
    with pytest.warns(RuntimeWarning, match=reason):
        named(x, torch.tensor(1.0))


def test_param_store_programs_and_pyro_elbos_run_eagerly():
    def model(x):
        w = pyro.param("w", torch.zeros(16))
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = pyro.sample(LATENT, dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1) + w, 1.0).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(LATENT, dist.Normal(loc, 1.0))

    x = torch.randn(30, 16)
    with pytest.warns(RuntimeWarning, match="pyro.param"):
        cfg = TrainConfig(max_steps=3, batch_size=10, compile="capture")
        result = pyrovae.fit(model, guide, x, config=cfg, device="cpu", progress=False)
    assert result.compile.startswith("none") and "pyro.param" in result.compile
    m, g = pair()
    meanfield = pyrovae.fit(
        m,
        g,
        data(),
        config=TrainConfig(max_steps=2, batch_size=20, objective="meanfield"),
        device="cpu",
        progress=False,
    )
    assert meanfield.compile == "none"
    with pytest.warns(RuntimeWarning, match="not captured"):
        pyrovae.fit(
            m,
            g,
            data(),
            config=TrainConfig(max_steps=1, batch_size=20, objective="meanfield", compile="capture"),
            device="cpu",
            progress=False,
        )


@pytest.mark.parametrize("particles", [1, 3])
def test_elbo_objective_equals_pyro_trace_elbo(particles):
    model, guide = pair()
    x = data(10)
    ours = ELBOObjective(particles)
    ours.prepare(model, guide, x)  # inspects on a forked stream: the draws below are the same
    pyro_elbo = pyro.infer.Trace_ELBO(
        num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1
    )
    params = [*model.parameters(), *guide.parameters()]
    values, grads = [], []
    for loss in (lambda: ours(model, guide, x), lambda: pyro_elbo.differentiable_loss(model, guide, x)):
        torch.manual_seed(11)
        value = loss()
        values.append(value.detach())
        grads.append(torch.autograd.grad(value, params))
    torch.testing.assert_close(values[0], values[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_elbo_hands_non_reparameterized_guides_to_trace_elbo():
    def model(x):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = pyro.sample(LATENT, dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(LATENT, dist.Bernoulli(p))

    x = torch.randn(7)
    ours = make_objective("elbo")
    pyro.set_rng_seed(2)
    value = ours(model, guide, x)
    assert not ours.capturable
    pyro.set_rng_seed(2)
    torch.testing.assert_close(value, pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x))


def test_bernoulli_log_density_equals_torch():
    logits = torch.cat([torch.randn(200) * 5, torch.tensor([-80.0, -30.0, 0.0, 30.0, 80.0])])
    for x in (
        torch.zeros_like(logits),
        torch.ones_like(logits),
        torch.bernoulli(torch.full_like(logits, 0.5)),
    ):
        torch.testing.assert_close(
            BernoulliLogits(logits=logits).log_prob(x),
            torch.distributions.Bernoulli(logits=logits).log_prob(x),
            rtol=1e-6,
            atol=1e-6,
        )


def test_evaluation_chunks_fit_the_free_memory(monkeypatch):
    model, guide = pair()
    x = data(30)
    row_bytes = chunks.bytes_per_row(model, guide, (x,), {})
    assert row_bytes >= 16 * 4 * 2  # at least the 16 logits and their log-densities, in float32
    monkeypatch.setattr(chunks, "free_memory", lambda device: int(400 * row_bytes))
    rows = chunks.chunk_rows(torch.device("cpu"), row_bytes)
    assert rows == 100  # a quarter of the free memory
    seen = []
    real = weights.log_prob_terms

    def spy(model, guide, xc, num_samples, **kw):
        seen.append(num_samples * xc.shape[0])
        return real(model, guide, xc, num_samples=num_samples, **kw)

    monkeypatch.setattr(weights, "log_prob_terms", spy)
    lw = estimators.log_weights(model, guide, x, num_samples=250)
    assert lw.shape == (250, 30) and max(seen[1:]) <= rows  # seen[0] is the probe
    monkeypatch.setattr(chunks, "free_memory", lambda device: 10**15)
    assert chunks.chunk_rows(torch.device("cpu"), row_bytes) == chunks.CPU_ROWS


def test_unknown_compile_mode_is_named():
    from pyrovae.errors import ConfigError

    model, guide = pair()
    with pytest.raises(ConfigError, match="compile mode.*capture"):
        pyrovae.fit(
            model,
            guide,
            data(),
            config=TrainConfig(max_steps=1, compile="fastest"),
            device="cpu",
            progress=False,
        )
