"""FactorVAE (Kim & Mnih 2018): the ELBO with the total correlation of q(z) penalized, the total
correlation estimated by a discriminator that the same training loop trains with its own
optimizer.

    L = ELBO - gamma E_q(z)[log D(z) / (1 - D(z))]               (Kim & Mnih 2018, eq. 3)

D tells draws of the aggregate posterior q(z) from draws of the product of its marginals, by
cross-entropy. As in their Algorithm 2, the product's draws come from a second, independent batch:
each minibatch (shuffled, so its halves are independent draws of the data) trains the VAE on all
its datapoints, shows D the codes of its first half as q(z) and those of its second half, each
dimension permuted across them, as the product (``permute = "same"``: the shortcut of
permuting the codes D sees as q(z), as disentanglement_lib does). One backward pass serves both:
the VAE's terms see D's parameters detached, D's
cross-entropy sees z detached, so each set of parameters gets its own gradient; the loop steps
the VAE's optimizer and then :meth:`FactorVAEObjective.after_step` steps D's (its gradients
summed over ranks under torchrun). D's weights and optimizer are part of the checkpoint.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pyrovae.errors import ConfigError, ModelError, unknown_name
from pyrovae.inference import weights
from pyrovae.runtime import distributed
from pyrovae.training.regularized import _latent_sites, _Traced

#: where the product of marginals' draws come from: a second batch (Algorithm 2), or the same one
PERMUTE = ("independent", "same")


def discriminator(dim: int, hidden: Sequence[int]) -> nn.Sequential:
    """An MLP from a code of ``dim`` numbers to two logits (q(z), product of marginals), leaky
    ReLU between layers (Kim & Mnih 2018, appendix: 6 layers of 1000 units)."""
    layers, width = [], dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 2))


class FactorVAEObjective(_Traced):
    """-sum_n [ELBO_n - gamma (D_0(z_n) - D_1(z_n))] over a batch, D the discriminator's logits
    (see the module docstring), plus D's cross-entropy with zero value (its gradient alone);
    ``hidden``, ``lr`` and ``betas`` are D's (Kim & Mnih 2018: 6 x 1000, 1e-4, (0.5, 0.9))."""

    name = "factorvae"
    capturable = False
    eager_reason = "its discriminator's parameters and optimizer step live outside a captured step"

    def __init__(
        self,
        gamma: float = 10.0,
        hidden: Sequence[int] = (1000,) * 6,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        permute: str = "independent",
    ):
        super().__init__(1)
        if permute not in PERMUTE:
            raise unknown_name("train.factor_permute", permute, PERMUTE)
        self.permute = permute
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
            raise ConfigError(f"train.factor_gamma must be a number >= 0, got {gamma!r}")
        if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
            raise ConfigError(f"train.factor_hidden must be a list of positive integers, got {hidden!r}")
        self.gamma, self.hidden, self.lr, self.betas = float(gamma), list(hidden), lr, tuple(betas)
        self.discriminator, self.optimizer = None, None

    def prepare(self, model, guide, *args, **kwargs) -> None:
        """Inspect the pair and build D and its optimizer, on a forked random stream (the
        caller's draws are unchanged)."""
        super().prepare(model, guide, *args, **kwargs)
        if self.discriminator is not None:
            return
        with torch.random.fork_rng(devices=weights.cuda_devices(args, kwargs)):
            with torch.no_grad():
                guide_tr, _, _ = self._traces(model, guide, args, kwargs)
            sites = _latent_sites(guide_tr)
            if len(sites) != 1 or sites[0]["fn"].event_dim != 1:
                raise ModelError(
                    'objective "factorvae" needs one latent site with a vector value per datapoint'
                )
            z = sites[0]["value"]
            self.discriminator = discriminator(z.shape[-1], self.hidden).to(z.device, z.dtype)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.betas)

    def logits(self, z: torch.Tensor, detached: bool = False) -> torch.Tensor:
        """D's two logits for codes ``z`` (N, D); with ``detached``, D's parameters held fixed."""
        if not detached:
            return self.discriminator(z)
        fixed = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        return torch.func.functional_call(self.discriminator, fixed, (z,))

    def __call__(self, model, guide, *args, beta=1.0, **kwargs) -> torch.Tensor:
        if self.discriminator is None:
            self.prepare(model, guide, *args, **kwargs)
        guide_tr, model_tr, pdim = self._traces(model, guide, args, kwargs)
        site = _latent_sites(guide_tr)[0]
        log_lik = self._log_lik(model_tr, pdim)
        log_q = weights.site_log_prob(site, pdim, 1)
        log_p = weights.site_log_prob(model_tr.nodes[site["name"]], pdim, 1)
        z = self._per_unit(site["value"], site, pdim)[0]  # (N, D)
        tc = self.logits(z, detached=True)
        elbo = log_lik + beta * (log_p - log_q)
        vae = -(elbo.mean(0) - self.gamma * (tc[:, 0] - tc[:, 1])).sum()
        disc = self._disc_loss(z.detach())
        return vae + (disc - disc.detach())  # the value is the VAE's loss; D gets its own gradient

    def _disc_loss(self, z: torch.Tensor) -> torch.Tensor:
        """D's cross-entropy on q(z) draws (label 0) and product draws z~ (label 1), each
        dimension of z~ permuted across its batch (Kim & Mnih 2018, Algorithm 2): the first half
        of the batch against the permuted second half (``permute = "independent"``), or all of
        it against itself permuted (``"same"``); N times the mean either way."""
        n = z.shape[0]
        real, other = (z[: n // 2], z[n // 2 :]) if self.permute == "independent" and n > 1 else (z, z)
        order = torch.argsort(torch.rand(other.shape, device=z.device), dim=0)
        permuted = torch.gather(other, 0, order)
        labels = torch.cat(
            [z.new_zeros(len(real), dtype=torch.long), z.new_ones(len(permuted), dtype=torch.long)]
        )
        both = torch.cat([self.logits(real), self.logits(permuted)])
        return n * F.cross_entropy(both, labels)

    def synchronize(self, group) -> None:
        """Rank 0's initial D on every rank."""
        with torch.no_grad():
            for p in self.discriminator.parameters():
                distributed.broadcast(p.data)

    def after_step(self, group) -> None:
        """Step D's optimizer on the gradient the loss's backward left (averaged over ranks);
        a non-finite gradient skips the step."""
        grads = [p.grad for p in self.discriminator.parameters() if p.grad is not None]
        if grads and group.size > 1:
            for g in grads:
                distributed.all_sum(g).div_(group.size)
        if grads and all(torch.isfinite(g).all() for g in grads):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
