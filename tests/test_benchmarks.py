"""The benchmarks' hand-written references: the loss pyrovae trains, Pyro's M2 schedule."""

import importlib.util
from pathlib import Path

import pyro
import pytest
import torch

from pyrovae.training.catalog import make_objective
from pyrovae.training.objectives import make_elbo


def _load(name: str):
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


speed = _load("speed")


@pytest.mark.parametrize("softplus", [False, True])
def test_plain_loss_equals_trace_elbo_on_the_same_draws(softplus):
    model, guide = speed.build("iwae", torch.device("cpu"))
    x = torch.bernoulli(torch.full((16, 1, 28, 28), 0.3))
    pyro.set_rng_seed(4)
    ref = speed.plain_loss(model, guide, x, softplus=softplus)
    pyro.set_rng_seed(4)
    loss = make_elbo("elbo").differentiable_loss(model, guide, x) / 16
    torch.testing.assert_close(ref, loss)
    g_ref = torch.autograd.grad(ref, list(guide.parameters()))
    pyro.set_rng_seed(4)
    g = torch.autograd.grad(
        make_elbo("elbo").differentiable_loss(model, guide, x) / 16, list(guide.parameters())
    )
    for a, b in zip(g_ref, g):
        torch.testing.assert_close(a, b)


def test_pyrovae_default_objective_equals_the_plain_loss():
    model, guide = speed.build("examples", torch.device("cpu"))
    x = torch.bernoulli(torch.full((16, 1, 28, 28), 0.3))
    objective = make_objective("elbo")
    objective.prepare(model, guide, x)
    pyro.set_rng_seed(4)
    ours = objective(model, guide, x) / 16
    pyro.set_rng_seed(4)
    torch.testing.assert_close(ours, speed.plain_loss(model, guide, x))


def test_pyro_recipe_meets_each_batch_once_an_epoch_labelled_ones_at_its_interval():
    """The reference M2 schedule (Pyro's ss-vae example): every unlabelled and every labelled
    batch once an epoch, a labelled batch at each index i with i % interval == 1 until they run
    out, each taking an ELBO step and an auxiliary step."""
    recipe = _load("pyro_m2")
    calls = []

    class Recorder:
        def __init__(self, kind):
            self.kind = kind

        def step(self, x, y=None):
            calls.append((self.kind, y is not None, x[:, 0].tolist()))

    xl, yl = torch.arange(30.0)[:, None], torch.zeros(30, 10)
    xu = 100 + torch.arange(170.0)[:, None]
    steps = recipe.epoch(
        Recorder("elbo"), Recorder("aux"), (xl, yl), xu, 10, 4, torch.Generator().manual_seed(0)
    )
    assert steps == len(calls) == 17 + 2 * 3
    elbo = [c for c in calls if c[0] == "elbo"]
    assert [i for i, c in enumerate(elbo) if c[1]] == [1, 5, 9]  # interval 4, three labelled batches
    assert all(calls[calls.index(c) + 1][0] == "aux" for c in elbo if c[1])
    assert sorted(v for c in elbo if c[1] for v in c[2]) == list(range(30))
    assert sorted(v for c in elbo if not c[1] for v in c[2]) == list(range(100, 270))


def test_the_plain_evaluation_of_contention_py_is_pyrovaes_estimate():
    """benchmarks/contention.py's hand-written K-sample log p(x) equals pyrovae's (same arithmetic).
    The guide is wider than the prior, so that the weights are bounded and both estimates tight."""
    import types

    import pyro.distributions as dist

    from pyrovae.inference import estimators
    from pyrovae.models import VAE
    from pyrovae.sites import DATA_PLATE, LATENT

    class WideGuide:
        def __init__(self, loc):
            self.loc, self.scale = loc, torch.full_like(loc, 1.3)

        def params(self, x):
            return self.loc, self.scale

        def __call__(self, x):
            with pyro.plate(DATA_PLATE, x.shape[0]):
                pyro.sample(LATENT, dist.Normal(self.loc, self.scale).to_event(1))

    contention = _load("contention")
    torch.manual_seed(0)
    model = VAE((1, 4, 4), 2, hidden=[8])
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4))
    guide = WideGuide(0.3 * torch.randn(6, 2))
    plain = contention.plain_eval(types.SimpleNamespace(model=model, guide=guide), x, 20000, rows=6000)
    with torch.no_grad():
        ref = estimators.log_likelihood(model, guide, x, num_samples=20000)
    assert plain.shape == (6,)
    torch.testing.assert_close(plain, ref.to(plain.dtype), atol=0.05, rtol=0)  # seen: <= 0.017 over 8 seeds


def test_contention_py_tables_divide_by_the_idle_run_and_the_calls():
    import types

    contention = _load("contention")
    a = types.SimpleNamespace(busy=[0, 1])
    results = {
        ("eval", "default", 0): {"seconds": 2.0},
        ("eval", "default", 1): {"seconds": 5.0},
        ("eval", "1 thread", 0): {"seconds": 3.0},
        ("eval", "1 thread", 1): None,
    }
    lines = contention.slowdown_table(results, a)
    assert lines[2:] == [
        "| eval | default | 2.00 (1.0x) | 5.00 (2.5x) |",
        "| eval | 1 thread | 3.00 (1.0x) | failed |",
    ]
    profiled = {("eval", "all cores", 1): {"seconds": 3.0, "calls": 1000, "inside": 2.5}}
    assert contention.profile_table(profiled)[2] == "| eval | all cores | 1 | 3.00 | 1000 | 2500 | 0.50 |"


def test_capture_cost_py_fits_the_cost_and_the_saving_per_chunk():
    capture_cost = _load("capture_cost")
    intercept, slope = capture_cost.line_fit([10, 100, 400], [-0.2 + 0.001 * c for c in (10, 100, 400)])
    assert intercept == pytest.approx(-0.2) and slope == pytest.approx(0.001)


def test_long_step_py_hand_written_weights_are_pyros():
    """benchmarks/long_step.py's hand-written log weights of a VampPrior VAE equal the model's
    and guide's own Pyro log densities at the same draws."""
    import sys

    from pyro import poutine

    from pyrovae.guides import MLPGuide
    from pyrovae.models import VAE

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        long_step = _load("long_step")
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    model = VAE((1, 4, 4), 3, hidden=[8], activation="gated", prior="vamp", prior_options={"components": 4})
    guide = MLPGuide((1, 4, 4), 3, hidden=[8], activation="gated")
    model.attach_guide(guide)
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.4))
    eps = torch.randn(1, 5, 3)
    loc, scale = guide.params(x)
    z = loc + scale * eps[0]
    trace = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(x)
    trace.compute_log_prob()
    log_q = guide.posterior(x).log_prob(z)
    expected = trace.nodes["x"]["log_prob"] + 0.5 * (trace.nodes["z"]["log_prob"] - log_q)
    got = long_step.log_weights_at(model, guide, x, eps, beta=0.5)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
