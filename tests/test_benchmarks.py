"""The benchmarks' hand-written reference computes exactly the loss pyrovae trains."""

import importlib.util
from pathlib import Path

import pyro
import pytest
import torch

from pyrovae.objectives import make_elbo, make_objective

spec = importlib.util.spec_from_file_location("speed", Path(__file__).parents[1] / "benchmarks" / "speed.py")
speed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(speed)


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
