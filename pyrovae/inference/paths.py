"""The annealing path of AIS and BDMC in coordinates the chains move in: the latent sites of a
traced run packed into one unconstrained (S, n, D) tensor (:class:`Layout`, Jacobian included),
and the path's ends at given values, log f_0 (the guide, or the prior) and log p(x, z)
(:func:`path_ends`), read off the importance-sampling core
(:func:`pyrovae.inference.weights.traces`, :func:`pyrovae.inference.weights.sum_sites`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from pyrovae.errors import PyrovaeError
from pyrovae.inference.plates import vectorize
from pyrovae.inference.weights import (
    at_values,
    data_frame,
    given_trace,
    refuse_point_masses,
    sum_sites,
    traces,
)


class Layout:
    """The latent sites of one traced run with S chains and n datapoints, packed into one
    unconstrained (S, n, D) tensor and back (Jacobian included)."""

    def __init__(self, trace, particle_dim: int):
        self.sites = []
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                continue
            if site["fn"].has_enumerate_support or not torch.is_floating_point(site["value"]):
                raise PyrovaeError(
                    f"AIS moves continuous latents by HMC; site {name!r} is discrete: sum it out in the "
                    "model if it is enumerable, else use `evaluate --method is` (a code grid: its bound)"
                )
            value, event = site["value"], site["fn"].event_dim
            left = (value.dim() + particle_dim - event, value.dim() + data_frame(site).dim - event)
            rest = value.movedim(left, (0, 1)).shape[2:]  # any S and n: one layout serves every chunk
            self.sites.append((name, left, rest, biject_to(site["fn"].support)))

    @property
    def names(self) -> set[str]:
        return {s[0] for s in self.sites}

    def pack(self, values: dict) -> torch.Tensor:
        """Constrained site values -> unconstrained (S, n, D)."""
        parts = []
        for name, left, _, t in self.sites:
            u = t.inv(values[name]).movedim(left, (0, 1))
            parts.append(u.reshape(*u.shape[:2], -1))
        return torch.cat(parts, -1)

    def unpack(self, u: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Unconstrained (S, n, D) -> (constrained site values, log |det dz/du| of shape (S, n))."""
        values, log_det, start = {}, u.new_zeros(u.shape[:2]), 0
        for name, left, rest, t in self.sites:
            size = math.prod(rest)
            part = u[..., start : start + size].reshape(*u.shape[:2], *rest).movedim((0, 1), left)
            start += size
            values[name] = t(part)
            ladj = t.log_abs_det_jacobian(part, values[name]).movedim(left, (0, 1))
            log_det = log_det + ladj.reshape(*u.shape[:2], -1).sum(-1)
        return values, log_det


class Ends(NamedTuple):
    """log f_0(z) and log p(x, z) of every chain, each (S, n), and log |det dz/du| of the
    unconstrained coordinates u the chains move in."""

    log_init: torch.Tensor
    log_joint: torch.Tensor
    log_det: torch.Tensor | float = 0.0

    def log_f(self, beta) -> torch.Tensor:
        """log f_beta in the coordinates u."""
        return self.log_init + beta * (self.log_joint - self.log_init) + self.log_det


def path_ends(model, guide, args, kwargs, values: dict, chains: int, nesting: int, initial: str) -> Ends:
    """log f_0 and log p(x, z) at the given latent values: the model replayed on them (from the
    prior), or on the guide set to them (the traces of the importance-sampling core)."""
    if initial == "prior":  # the guide plays no part
        pdim = -nesting - 1
        model_tr = poutine.trace(poutine.replay(vectorize(model, chains, pdim), trace=given_trace(values)))
        model_tr, guide_tr = model_tr.get_trace(*args, **kwargs), None
    else:
        guide_tr, model_tr, pdim = traces(model, at_values(guide, values), args, kwargs, chains, nesting)
    missing = {
        n
        for n, s in model_tr.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    } - set(values)
    if missing:
        raise PyrovaeError(
            f"AIS needs every latent site of the model in the guide; missing {sorted(missing)}"
        )
    log_lik, log_prior = sum_sites(model_tr, pdim, chains)
    log_prior = torch.zeros_like(log_lik) if log_prior is None else log_prior
    if guide_tr is None:
        return Ends(log_prior, log_lik + log_prior)
    refuse_point_masses(guide_tr, "AIS from the guide", "anneal from the prior (initial = 'prior')")
    _, log_q = sum_sites(guide_tr, pdim, chains)
    return Ends(torch.zeros_like(log_lik) if log_q is None else log_q, log_lik + log_prior)
