"""Discrete latent sites summed out exactly, per datapoint, on the log-weight core.

A site marked ``infer={"enumerate": "parallel"}`` (or through ``pyro.infer.config_enumerate``)
is traced under Pyro's :class:`~pyro.poutine.enum_messenger.EnumMessenger`: it takes every
value of its support along a new dim left of the particle plate, and everything downstream
is computed once per value. For a guide site c with values g and K continuous draws
z_kg ~ q(z | x, c = g) per value,

    ELBO_k  = sum_g q(g | x) [log p(x, g, z_kg) - log q(g | x) - log q(z_kg | x, g)],
    log w_k = log sum_g p(x, g, z_kg) / q(z_kg | x, g),

the ELBO's expectation over c taken exactly (Kingma et al. 2014, eq. 7; Pyro's
``TraceEnum_ELBO``) and an importance weight with E[w_k] = p(x) (the discrete part summed,
Monte Carlo only in z). A site enumerated by the model alone (absent from the guide) is
marginalized inside the joint: log p(x, z) = log sum_c p(x, c, z). The weights q(g | x) are
renormalized per datapoint, so a masked enumerated site (observed for a labelled datapoint)
averages identical copies instead of counting them C times.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from pyro.poutine.util import site_is_subsample

from pyrovae.errors import ModelError
from pyrovae.sites import DATA_PLATE

ENUMERATE = {"enumerate": "parallel"}  #: the mark (a site's ``infer``) that sums a discrete site out exactly


class Enumerated(NamedTuple):
    """Per enumerated value g (all enumerated guide sites' values, flattened), each (G, K, N)."""

    log_a: torch.Tensor  #: log of the normalized weight of g under the guide (log 1/G for none)
    log_lik: torch.Tensor
    log_prior: torch.Tensor
    log_q: torch.Tensor

    def log_weights(self, beta=1.0) -> torch.Tensor:
        """log sum_g a_g exp(log p(x|g,z) + beta (log p(g, z) - log q(g, z | x))), (K, N)."""
        return torch.logsumexp(self.log_a + self.log_lik + beta * (self.log_prior - self.log_q), 0)


def enum_dim(site: dict) -> int | None:
    """The dim (negative, counted over batch dims) a site is enumerated along, or None."""
    return site["infer"].get("_enumerate_dim")


def check_site(site: dict, particle_dim: int) -> None:
    """Per-datapoint enumeration needs the site in the ``"data"`` plate (and the particle plate)
    only, enumerated in parallel."""
    name = site["name"]
    if site["infer"].get("enumerate") == "sequential":
        raise ModelError(
            f"site {name!r} asks for sequential enumeration; pyrovae enumerates in parallel: "
            'use infer={"enumerate": "parallel"}'
        )
    others = [
        f.name
        for f in site["cond_indep_stack"]
        if f.vectorized and f.dim != particle_dim and f.name != DATA_PLATE
    ]
    if others:
        raise ModelError(
            f"enumerated site {name!r} sits in plate(s) {others}; per-datapoint enumeration sums "
            f"discrete sites with one value per datapoint (in the {DATA_PLATE!r} plate only): "
            "sample it instead, or use Pyro's TraceEnum_ELBO"
        )


def _layout(site: dict, lp: torch.Tensor, particle_dim: int, dims: list[int], sizes: list[int], k: int):
    """``lp`` (the site's batch shape) as (*sizes, K, N): the enumeration ``dims`` (ascending)
    kept, the particle and data dims moved last, every other plate dim summed."""
    data = next(f for f in site["cond_indep_stack"] if f.name == DATA_PLATE)
    ndim = max(-min(dims + [particle_dim, data.dim]), lp.dim())
    lp = lp.reshape((1,) * (ndim - lp.dim()) + tuple(lp.shape))
    keep = [ndim + d for d in (*dims, particle_dim, data.dim)]
    other = [i for i in range(ndim) if i not in keep]
    if other:
        lp = lp.sum(other, keepdim=True)
    lp = lp.permute(keep + other).reshape([lp.shape[i] for i in keep])
    return lp.expand(*sizes, k, data.size)


def masked_log_prob(site: dict) -> torch.Tensor:
    """A sample site's log-density, masked (masked-out entries add nothing, as in Pyro's ELBOs)
    but not scaled."""
    lp = site["fn"].log_prob(site["value"])
    return lp if site["mask"] is None else lp * site["mask"]


def _sums(trace, particle_dim, dims, sizes, k, group) -> dict:
    """{key: sum of the masked log-densities of the sites ``group(site)`` puts under key}, each
    (*sizes, K, N); each site's log-density is computed once."""
    totals: dict = {}
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        for key in group(site):
            lp = _layout(site, masked_log_prob(site), particle_dim, dims, sizes, k)
            totals[key] = lp if key not in totals else totals[key] + lp
    return totals


def enumerated_terms(guide_tr, model_tr, particle_dim: int, k: int) -> tuple[torch.Tensor, ...] | None:
    """(log_lik, log_prior, log_q, enumerated) per particle and datapoint with every enumerated
    site summed out, or None when no site was enumerated (the plain core applies)."""
    guide_sites = {
        n: s for n, s in guide_tr.nodes.items() if s["type"] == "sample" and enum_dim(s) is not None
    }
    model_sites = {
        n: s for n, s in model_tr.nodes.items() if s["type"] == "sample" and enum_dim(s) is not None
    }
    if not guide_sites and not model_sites:
        return None
    dim_size = {}
    for s in (*guide_sites.values(), *model_sites.values()):
        check_site(s, particle_dim)
        d = enum_dim(s)
        dim_size[d] = s["value"].shape[d - s["fn"].event_dim]
    g_dims = sorted({enum_dim(s) for s in guide_sites.values()})
    m_dims = sorted(set(dim_size) - set(g_dims))
    all_dims = sorted(dim_size)
    sizes = [dim_size[d] for d in all_dims]
    g_sizes = [dim_size[d] for d in g_dims]
    model = _sums(model_tr, particle_dim, all_dims, sizes, k, lambda s: ("obs" if s["is_observed"] else "z",))
    zero = torch.zeros((), dtype=model["obs"].dtype, device=model["obs"].device)
    prior = model.get("z", zero.expand_as(model["obs"]))
    joint = model["obs"] + prior
    if m_dims:  # the model's own discrete sites: log sum_c inside the joint and p(z)
        pos = [all_dims.index(d) for d in m_dims]
        joint, prior = torch.logsumexp(joint, pos), torch.logsumexp(prior, pos)
    guide = _sums(
        guide_tr,
        particle_dim,
        g_dims,
        g_sizes,
        k,
        lambda s: () if s["is_observed"] else ("q", "c") if s["name"] in guide_sites else ("q",),
    )
    log_q, log_c = (guide.get(key, zero.expand_as(joint)) for key in ("q", "c"))
    g = math.prod(g_sizes)
    flat = lambda t: t.reshape(g, *t.shape[-2:])
    log_lik, prior, log_q, log_c = flat(joint - prior), flat(prior), flat(log_q), flat(log_c)
    log_a = torch.log_softmax(log_c, 0)  # q(g | x), renormalized: a masked site weighs copies equally
    a = log_a.exp()
    enum = Enumerated(log_a, log_lik, prior, log_q)
    return (a * log_lik).sum(0), (a * prior).sum(0), (a * log_q).sum(0), enum
