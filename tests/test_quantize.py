"""The vector quantiser of a VQ-VAE against its definitions (van den Oord et al. 2017): the
nearest code, the straight-through gradient, the two losses of eq. 3, the moving averages of
appendix A.1, dead-code restarts and perplexity."""

import math

import pytest
import torch

from pyrovae.blocks.quantize import VectorQuantizer
from pyrovae.errors import ConfigError


def quantizer(**options):
    torch.manual_seed(0)
    return VectorQuantizer(8, 3, **options)


def test_quantisation_picks_the_nearest_code():
    vq = quantizer()
    z = torch.randn(5, 4, 3)
    by_hand = torch.cdist(z.reshape(-1, 3), vq.codebook.detach()).argmin(-1).reshape(5, 4)
    assert torch.equal(vq.nearest(z), by_hand)
    assert torch.equal(vq.nearest(vq.codebook.detach()[[2, 7, 0]]), torch.tensor([2, 7, 0]))


def test_the_straight_through_gradient_is_the_gradient_at_the_quantised_point():
    vq = quantizer()
    z_e = torch.randn(6, 3, requires_grad=True)
    z_q = vq.lookup(vq.nearest(z_e)).detach()
    f = lambda z: (z.sin() * torch.arange(1.0, 4.0)).sum()
    (grad,) = torch.autograd.grad(f(VectorQuantizer.straight_through(z_e, z_q)), z_e)
    at = z_q.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(f(at), at)
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(VectorQuantizer.straight_through(z_e, z_q), z_q)


def test_the_codebook_loss_moves_codes_and_the_commitment_loss_the_encoder():
    """Eq. 3: ||sg[z_e] - e||^2 reaches the codebook only, beta ||z_e - sg[e]||^2 the encoder only."""
    vq = quantizer(beta=0.25)
    z_e = torch.randn(6, 3, requires_grad=True)
    idx = vq.nearest(z_e)
    z_q = vq.lookup(idx)
    loss = vq.losses(z_e, z_q)
    d2 = (z_e - z_q).pow(2).sum(-1).detach()
    torch.testing.assert_close(loss.detach(), 1.25 * d2)
    g_e, g_code = torch.autograd.grad(loss.sum(), (z_e, vq.codebook))
    torch.testing.assert_close(g_e, 0.25 * 2 * (z_e - z_q).detach())
    by_hand = torch.zeros_like(vq.codebook).index_add_(0, idx, 2 * (z_q - z_e).detach())
    torch.testing.assert_close(g_code, by_hand)


def test_the_ema_update_equals_its_formula():
    vq = quantizer(ema=True, decay=0.9, eps=1e-5)
    n, m = vq.cluster_size.clone(), vq.embed_sum.clone()
    for step in range(2):
        z_e = torch.randn(10, 3) + step
        idx = vq.nearest(z_e)
        counts = torch.stack([(idx == k).sum() for k in range(8)]).float()
        sums = torch.stack([z_e[idx == k].sum(0) for k in range(8)])
        n, m = 0.9 * n + 0.1 * counts, 0.9 * m + 0.1 * sums
        vq.ema_update(z_e, idx)
        smoothed = (n + 1e-5) / (n.sum() + 8e-5) * n.sum()
        torch.testing.assert_close(vq.codebook, m / smoothed[:, None])
    assert not any(p.requires_grad for p in vq.parameters())  # moved by averages, not by gradients
    assert vq.losses(z_e, vq.lookup(idx)).allclose(0.25 * (z_e - vq.lookup(idx)).pow(2).sum(-1))


def test_dead_codes_restart_at_encoder_outputs_and_perplexity_counts_use():
    vq = quantizer()
    z_e = torch.randn(12, 3)
    idx = torch.tensor([0, 1] * 6)
    dead = vq.restart(z_e, vq.usage(idx), generator=torch.Generator().manual_seed(1))
    assert dead.tolist() == list(range(2, 8))
    assert all(any(torch.equal(vq.codebook[k].detach(), row) for row in z_e) for k in dead)
    assert vq.perplexity(vq.usage(torch.arange(8).repeat(3))).item() == pytest.approx(8.0)
    assert vq.perplexity(vq.usage(torch.zeros(9, dtype=torch.long))).item() == pytest.approx(1.0)
    assert vq.perplexity(vq.usage(idx)).item() == pytest.approx(math.exp(math.log(2)))


def test_bad_codebooks_are_named():
    with pytest.raises(ConfigError, match="num_codes >= 2"):
        VectorQuantizer(1, 3)
    with pytest.raises(ConfigError, match="decay"):
        VectorQuantizer(4, 3, ema=True, decay=1.0)
    with pytest.raises(ConfigError, match="ema=True"):
        quantizer().ema_update(torch.randn(2, 3), torch.tensor([0, 1]))
