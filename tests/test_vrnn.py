"""The VRNN: its recurrence broadcast over particles gives each particle the weight a single
run gives it, masked steps do not count, and it learns."""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyrovae.guides.vrnn import VRNNGuide
from pyrovae.hooks import prefix_mask
from pyrovae.inference.weights import at_values, sum_sites, traces
from pyrovae.models.vrnn import VRNN


def pair_and_rolls(seed: int = 0):
    torch.manual_seed(seed)
    model = VRNN(x_dim=12, z_dim=3, hidden=8, rnn_dim=6)
    guide = VRNNGuide(model)
    mask = prefix_mask(torch.tensor([5, 2, 4]), 5)
    x = torch.bernoulli(torch.full((3, 5, 12), 0.3)) * mask[..., None]
    return model, guide, x, mask


def weight_of_one_run(model, guide, x, mask, values: dict) -> torch.Tensor:
    """log p(x, z) - log q(z | x) of one unvectorized run at the given draws, per sequence."""
    g = poutine.trace(at_values(guide, values)).get_trace(x, mask)
    m = poutine.trace(poutine.replay(model, trace=g)).get_trace(x, mask)
    m.compute_log_prob(), g.compute_log_prob()
    total = lambda tr: sum(s["log_prob"] for s in tr.nodes.values() if s["type"] == "sample")  # noqa: E731
    return total(m) - total(g)


def test_particles_broadcast_through_the_recurrence():
    """Each of K vectorized particles (the GRU's input flattened over them) has the log weight
    that a plain run of model and guide at that particle's draws gives."""
    model, guide, x, mask = pair_and_rolls()
    with torch.no_grad():
        guide_tr, model_tr, pdim = traces(model, guide, (x, mask), {}, 4, 1)
        log_lik, log_prior = sum_sites(model_tr, pdim, 4)
        _, log_q = sum_sites(guide_tr, pdim, 4)
        vectorized = log_lik + log_prior - log_q
        latent = [n for n, s in guide_tr.nodes.items() if s["type"] == "sample" and n.startswith("z_")]
        assert latent == [f"z_{t}" for t in range(1, 6)] and guide_tr.nodes["z_5"]["value"].shape == (4, 3, 3)
        for k in range(4):
            one = weight_of_one_run(model, guide, x, mask, {n: guide_tr.nodes[n]["value"][k] for n in latent})
            torch.testing.assert_close(vectorized[k], one)


def test_steps_past_the_end_leave_the_weights_alone():
    model, guide, x, mask = pair_and_rolls(1)
    y = torch.where(mask[..., None], x, 1.0)
    pyro.set_rng_seed(0)
    with torch.no_grad():
        values = {
            n: s["value"]
            for n, s in poutine.trace(guide).get_trace(x, mask).nodes.items()
            if s["type"] == "sample"
        }
        torch.testing.assert_close(
            weight_of_one_run(model, guide, x, mask, values), weight_of_one_run(model, guide, y, mask, values)
        )


def test_the_vrnn_learns_a_repeated_pattern():
    """Sequences of one repeated chord: 200 Trace_ELBO steps raise the ELBO per step by far."""
    model, guide, _, _ = pair_and_rolls(2)
    x = torch.zeros(16, 6, 12)
    x[:, ::2, :3] = 1.0
    mask = torch.ones(16, 6, dtype=torch.bool)
    params = {id(p): p for p in [*model.parameters(), *guide.parameters()]}.values()
    opt = torch.optim.Adam(params, lr=1e-2)
    elbo = Trace_ELBO(max_plate_nesting=1)
    first = elbo.loss(model, guide, x, mask)
    for _ in range(200):
        loss = elbo.differentiable_loss(model, guide, x, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert elbo.loss(model, guide, x, mask) < 0.3 * first
