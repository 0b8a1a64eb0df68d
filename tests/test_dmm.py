"""The deep Markov model and its combiner guide: the backward RNN sees each sequence's own
steps only, and the guide, trained on a linear-Gaussian state-space model's sequences, closes
the gap to the Kalman filter's exact log p(x)."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyrovae.blocks.sequence import BackwardRNN, reverse_within
from pyrovae.guides.dmm import CombinerGuide
from pyrovae.hooks import prefix_mask
from pyrovae.inference.scoring import evaluate_data
from pyrovae.models.dmm import DMM
from pyrovae.models.state_space import LinearGaussianSSM


def test_reverse_within_reverses_each_sequence_up_to_its_length():
    x = torch.arange(8.0).reshape(2, 4, 1)
    got = reverse_within(x, torch.tensor([4, 2]))
    assert got[..., 0].tolist() == [[3, 2, 1, 0], [5, 4, 6, 7]]
    torch.testing.assert_close(reverse_within(got, torch.tensor([4, 2])), x)


def test_the_backward_rnn_summarises_the_future_of_each_sequence_only():
    """h_t depends on x_{t:L} alone: changing the padded steps or the past changes nothing."""
    torch.manual_seed(0)
    rnn = BackwardRNN(3, 5)
    x, lengths = torch.randn(2, 6, 3), torch.tensor([6, 4])
    h = rnn(x, lengths)
    y = x.clone()
    y[1, 4:] = 100.0  # past the end of sequence 1
    y[:, 0] = -7.0  # the first step: only h_0 may change
    g = rnn(y, lengths)
    torch.testing.assert_close(g[0, 1:], h[0, 1:])
    torch.testing.assert_close(g[1, 1:4], h[1, 1:4])
    assert not torch.allclose(g[:, 0], h[:, 0])


@pytest.mark.parametrize("num_iafs", [0, 1])
def test_dmm_pair_sites_match_and_masked_steps_do_not_count(num_iafs):
    """The guide samples exactly the model's latent sites; a sequence's log weight ignores the
    steps past its end."""
    torch.manual_seed(1)
    model, guide = DMM(88, 4, 8, 8), CombinerGuide(88, 4, 8, num_iafs=num_iafs, iaf_dim=8)
    lengths = torch.tensor([5, 2, 3])
    mask = prefix_mask(lengths, 5)
    x = torch.bernoulli(torch.full((3, 5, 88), 0.1)) * mask[..., None]

    def log_weight(data):
        pyro.set_rng_seed(2)
        g = poutine.trace(guide).get_trace(data, mask)
        m = poutine.trace(poutine.replay(model, trace=g)).get_trace(data, mask)
        m.compute_log_prob(), g.compute_log_prob()
        latent = {n for n, s in m.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
        assert latent == {n for n, s in g.nodes.items() if s["type"] == "sample"}
        return sum(s["log_prob"] for s in m.nodes.values() if s["type"] == "sample") - sum(
            s["log_prob"] for s in g.nodes.values() if s["type"] == "sample"
        )

    y = x.clone()
    y[1, 2:], y[2, 3:] = 1.0, 1.0
    with torch.no_grad():
        torch.testing.assert_close(log_weight(x), log_weight(y))


def test_the_combiner_guide_closes_the_gap_to_the_kalman_filter():
    """Trained by plain Trace_ELBO (the model held at the true parameters) on 100 sequences of a
    linear-Gaussian state-space model, the combiner guide's ELBO comes within 0.25 nats of the
    filter's exact log p(x) per sequence, and IS with it within 0.05."""
    torch.manual_seed(0)
    model = LinearGaussianSSM(2, 4)
    with torch.no_grad():
        model.transition.copy_(torch.tensor([[0.9, 0.2], [-0.3, 0.7]]))
    model.requires_grad_(False)
    n, steps = 100, 8
    mask = prefix_mask(torch.randint(3, steps + 1, (n,)), steps)
    with torch.no_grad():
        z, xs = torch.zeros(n, 2), []
        for _ in range(steps):
            z = z @ model.transition.T + model.log_q.exp() * torch.randn(n, 2)
            xs.append(z @ model.emission.T + model.bias + model.log_r.exp() * torch.randn(n, 4))
        x = torch.stack(xs, 1) * mask[..., None]
        exact = model.log_marginal(x, mask).mean().item()
    guide = CombinerGuide(x_dim=4, z_dim=2, rnn_dim=32)
    opt = torch.optim.Adam(guide.parameters(), lr=5e-3)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    for _ in range(200):
        loss = elbo.differentiable_loss(model, guide, x, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = evaluate_data(model, guide, x, mask, num_samples=1000)
    assert exact - 0.25 < out["elbo"]["mean"] < exact
    assert out["log_likelihood"]["mean"] == pytest.approx(exact, abs=0.05)
