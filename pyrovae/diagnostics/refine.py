"""Refined proposals: per-datapoint optimisation of q(z | x) before importance sampling.

An amortized guide pays an amortization gap (Cremer et al. 2018): one network serves every
datapoint. Refining its output for each datapoint alone by N steps of the ELBO, starting from
the amortized q, and importance sampling from the refined proposal gives a tighter estimate
of log p(x) and better-behaved weights (the per-datapoint optimisation of semi-amortized
inference, Kim et al. 2018, sec. 3, used here for evaluation only).

What is refined:

- a guide built on a distribution head (:class:`pyrovae.blocks.flows.PosteriorFlow`, with
  ``local_inputs(*args)`` returning the encoder's output: ``mlp``, ``conv``, ``resnet``,
  ``cond_mlp``) gets free per-datapoint encoder outputs h_n (:class:`LocalHead`): the
  Gaussian's mean and scale and, for a flow, its context; the flow's own networks stay shared;
- any other guide of continuous latent sites gets a local diagonal Gaussian per site
  (:class:`LocalGaussian`, Cremer et al. 2018, sec. 3), started at the moments of its draws.
"""

from __future__ import annotations

import time
from typing import NamedTuple, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.diagnostics.draws import _sites, sample_posterior
from pyrovae.diagnostics.importance import psis_khat
from pyrovae.errors import ConfigError, ModelError
from pyrovae.inference import estimators, weights
from pyrovae.inference.pairs import check_pair, whole_data
from pyrovae.runtime.progress import bar
from pyrovae.sites import DATA_PLATE, LATENT


class LocalGaussian(nn.Module):
    """q_n(z) = N(m_n, diag s_n^2): free parameters per datapoint and latent site, the local
    fully factorized Gaussian of Cremer et al. (2018, sec. 3). It ignores its arguments."""

    def __init__(
        self, init: dict[str, tuple[torch.Tensor, torch.Tensor]], event_shapes: dict[str, torch.Size]
    ):
        super().__init__()
        self.names = list(init)
        self.event_shapes = dict(event_shapes)
        self.loc = nn.ParameterList([nn.Parameter(init[n][0].clone()) for n in self.names])
        self.log_scale = nn.ParameterList(
            [nn.Parameter(init[n][1].clamp_min(1e-6).log()) for n in self.names]
        )

    def forward(self, *args, **kwargs) -> None:
        n = self.loc[0].shape[0]
        with pyro.plate(DATA_PLATE, n):
            for name, loc, log_scale in zip(self.names, self.loc, self.log_scale):
                shape = (n, *self.event_shapes[name])
                pyro.sample(
                    name,
                    dist.Normal(loc.reshape(shape), log_scale.exp().reshape(shape)).to_event(
                        len(self.event_shapes[name])
                    ),
                )


class LocalHead(nn.Module):
    """q_n(z) = head(h_n): a guide's distribution head on free per-datapoint inputs h_n, started
    at the encoder's output; the head's own parameters (a flow's networks) are the guide's and
    are not fitted. It ignores its arguments."""

    def __init__(self, head: nn.Module, inputs: torch.Tensor):
        super().__init__()
        object.__setattr__(self, "_head", head)  # not a submodule: its parameters stay the guide's
        self.h = nn.Parameter(inputs.detach().clone())

    def forward(self, *args, **kwargs) -> None:
        with pyro.plate(DATA_PLATE, self.h.shape[0]):
            pyro.sample(LATENT, self._head(self.h))


def local_proposal(model, guide, args: tuple) -> nn.Module:
    """The per-datapoint proposal a refinement starts from, equal to (a :class:`LocalHead`) or
    matched to (a :class:`LocalGaussian` at the moments of 256 draws) the guide on ``args``."""
    if callable(getattr(guide, "local_inputs", None)) and isinstance(getattr(guide, "head", None), nn.Module):
        with torch.no_grad():
            return LocalHead(guide.head, guide.local_inputs(*args))
    n = args[0].shape[0]
    latent, _, _, _ = _sites(model, guide, args)
    shapes = {}
    for name, site in latent.items():
        if site["fn"].has_enumerate_support:
            raise ModelError(
                f"a local Gaussian refines continuous latents; site {name!r} is discrete: "
                "refine a guide of continuous sites, or evaluate this pair without refinement"
            )
        if tuple(site["value"].shape) != (n, *site["fn"].event_shape):
            raise ModelError(
                f"latent site {name!r} has value shape {tuple(site['value'].shape)}; the local "
                f"Gaussian needs one event of shape {tuple(site['fn'].event_shape)} per datapoint, "
                f"batch shape (N,) = ({n},)"
            )
        shapes[name] = site["fn"].event_shape
    draws = sample_posterior(model, guide, *args, num_samples=256, predictive_draws=0)
    init = {name: (v.mean(0), v.std(0)) for name, v in draws.latents.items()}
    return LocalGaussian(init, shapes).to(args[0].device)


def refine(model, guide, *args, steps: int, lr: float = 0.02, num_particles: int = 16) -> nn.Module:
    """:func:`local_proposal` fitted by :func:`fit_local` (``steps`` Adam steps, the model and
    guide held fixed): a proposal sized for the datapoints of ``args``."""
    local = local_proposal(model, guide, args)
    fit_local(model, local, args, steps=steps, lr=lr, num_particles=num_particles, frozen=(model, guide))
    return local


def fit_local(
    model, local: nn.Module, args: tuple, *, steps: int, lr: float, num_particles: int, frozen: Sequence = ()
) -> None:
    """Fit the local guide's parameters by ``steps`` Adam steps on the ``num_particles``-sample
    ELBO, the learning rate decaying geometrically to lr / 100, with the modules of
    ``frozen`` held fixed."""
    held = [p for m in frozen if isinstance(m, nn.Module) for p in m.parameters() if p.requires_grad]
    for p in held:
        p.requires_grad_(False)
    try:
        optim = torch.optim.Adam(local.parameters(), lr=lr)
        decay = torch.optim.lr_scheduler.ExponentialLR(optim, 0.01 ** (1 / max(steps, 1)))  # to lr / 100
        nesting = weights.plate_nesting(model, local, args, {})
        with pyro.validation_enabled(False):
            for _ in range(steps):
                optim.zero_grad()
                terms = weights.log_prob_terms(
                    model, local, *args, num_samples=num_particles, max_plate_nesting=nesting
                )
                (-terms.log_weights.mean(0).sum()).backward()
                optim.step()
                decay.step()
    finally:
        for p in held:
            p.requires_grad_(True)


class Refined(NamedTuple):
    """Per datapoint (N,), from the amortized guide and from its refinement: the importance-
    sampled log p(x) and the Pareto k-hat of its weights; and the seconds each took."""

    log_likelihood: torch.Tensor
    k_hat: torch.Tensor
    refined_log_likelihood: torch.Tensor
    refined_k_hat: torch.Tensor
    seconds: float  #: importance sampling from the guide
    refined_seconds: float  #: refinement and importance sampling from the refined proposals


def refined_log_likelihood(
    model,
    guide,
    *args,
    steps: int,
    num_samples: int = 5000,
    lr: float = 0.02,
    num_particles: int = 16,
    data_chunk: int = 500,
    progress: bool = False,
) -> Refined:
    """log p(x) by importance sampling with ``num_samples`` draws from the guide and from its
    :func:`refine` ment (``steps`` steps), ``data_chunk`` datapoints refined at a time (each
    chunk's proposals are sized for it: the estimators keep such a chunk whole), all of them at
    once for a pair that holds per-datapoint state (:func:`pyrovae.inference.pairs.whole_data`).
    The pair is checked first (:func:`pyrovae.inference.pairs.check_pair`)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"refinement needs steps >= 1, got {steps!r}; 0 means no refinement")
    n, parts, seconds = args[0].shape[0], [], [0.0, 0.0]
    whole = whole_data(model, guide, args, {})
    check_pair(model, guide, args, {}, whole=whole)
    data_chunk = n if whole else data_chunk

    def refined(a):
        return refine(model, guide, *a, steps=steps, lr=lr, num_particles=num_particles)

    with bar("refine", -(-n // data_chunk), unit="chunk", show=progress) as b:
        for start in range(0, n, data_chunk):
            a = tuple(t[start : start + data_chunk] for t in args)
            row = []
            for i, make in enumerate((lambda a: guide, refined)):
                began = time.perf_counter()
                proposal = make(a)
                with torch.no_grad(), pyro.validation_enabled(False):
                    lw = estimators.log_weights(model, proposal, *a, num_samples=num_samples).double().cpu()
                row += [estimators.iwae_from_log_weights(lw), psis_khat(lw)]
                seconds[i] += time.perf_counter() - began
            parts.append(row)
            b.update(1)
    return Refined(*(torch.cat(p) for p in zip(*parts)), *seconds)
