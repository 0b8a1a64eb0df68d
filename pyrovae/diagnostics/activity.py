"""Active units (Burda et al. 2015, sec. 5.2) and the KL per latent dimension, with a
posterior-collapse warning."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyro
import torch
from pyro.poutine.util import site_is_subsample

from pyrovae.diagnostics.draws import _layout, _sites
from pyrovae.errors import ModelError
from pyrovae.inference import chunks, weights
from pyrovae.inference.checks import check_inputs
from pyrovae.runtime.seeds import keeps_streams

ACTIVE_THRESHOLD = 0.01  #: Cov_x(E_q[z_u]) above this makes unit u active (Burda et al. 2015, sec. 5.2)


class PosteriorCollapseWarning(UserWarning):
    """Few latent units are active: the decoder ignores most of the code."""


@dataclass
class LatentActivity:
    """Active units and KL per dimension of one latent site."""

    site: str
    variance: torch.Tensor  #: Cov_x(E_q[z_u | x]) per unit u
    active: torch.Tensor  #: variance > threshold
    kl_per_dim: torch.Tensor | None  #: E_x E_q[KL per unit]; None when the prior is not a product over units
    threshold: float
    note: str = ""
    #: what the variance measures: Cov_x E_q[z_u], or for discrete codes the share of datapoints off
    #: the position's most common code
    criterion: str = "Cov_x E_q[z]"

    @property
    def num_active(self) -> int:
        return int(self.active.sum())

    def table(self):
        import pandas as pd

        out = pd.DataFrame(
            {
                "unit": np.arange(self.variance.numel()),
                "variance": self.variance.cpu().numpy(),
                "active": self.active.cpu().numpy(),
            }
        )
        if self.kl_per_dim is not None:
            out["kl"] = self.kl_per_dim.cpu().numpy()
        return out

    def __str__(self) -> str:
        kl = "" if self.kl_per_dim is None else f", KL {self.kl_per_dim.sum():.2f} nats"
        return (
            f"{self.site}: {self.num_active} of {self.variance.numel()} units active "
            f"({self.criterion} > {self.threshold}){kl}{self.note}"
        )


@torch.no_grad()
@keeps_streams
def latent_activity(
    model,
    guide,
    x: torch.Tensor,
    *condition: torch.Tensor,
    num_samples: int = 16,
    threshold: float = ACTIVE_THRESHOLD,
    warn_below: float = 0.1,
    images: torch.Tensor | None = None,
    seed: int = 0,
    progress: bool | str = False,
) -> dict[str, LatentActivity]:
    """Active units and KL per dimension of each latent site over the datapoints ``x``.

    Unit u is active when Cov_x(E_q[z_u | x]) > ``threshold`` (Burda et al. 2015, sec. 5.2).
    E_q[z | x] is the guide's own mean where its distribution has one (exact for a site with
    no latent parent in the guide), averaged over ``num_samples`` draws of the parents. The
    KL of unit u is E_x E_q[KL(q(z_u | .) || p(z_u | .))], in closed form where torch has it
    (Gaussians), else by Monte Carlo, when both the guide's and the model's distributions
    factorize over units (a standard prior does; a mixture, VampPrior or flow prior does not,
    and then only the total KL, E_q[log q - log p], is defined). A
    :class:`PosteriorCollapseWarning` is raised when fewer than ``warn_below`` of a site's
    units (and at least one) are active; ``warn_below = 0`` never warns. A point mass over
    discrete codes (a VQ-VAE's grid) has positions for units (:func:`_code_activity`)."""
    args = check_inputs(
        model, guide, x, *condition, images=images, num_samples=num_samples, name="diagnostics"
    )
    pyro.set_rng_seed(seed)
    latent, _, model_tr, pdim = _sites(model, guide, args)
    if not latent:
        raise ModelError("the guide samples no latent site: there are no units to inspect")
    codes = {n: _code_activity(guide, args, n, threshold) for n, s in latent.items() if _is_code(s)}
    latent = {n: s for n, s in latent.items() if n not in codes}
    sizes = {n: _layout(s, pdim).shape[-1] for n, s in latent.items()}
    per_unit = {
        n: weights.elementwise(s["fn"]) is not None
        and weights.elementwise(model_tr.nodes[n]["fn"]) is not None
        and not weights.is_point_mass(s["fn"])
        for n, s in latent.items()
    }

    pack = _packer(list(latent), per_unit)
    options = dict(reduce_traces=pack, progress=progress, enumerated=False)  # draws of discrete sites
    if latent:
        with pyro.validation_enabled(False):
            packed = chunks.map_terms(model, guide, *args, num_samples=num_samples, **options).mean(0)
    out, start = dict(codes), 0
    for name in latent:
        d = sizes[name]
        means, start = packed[:, start : start + d].double(), start + d
        kl = packed[:, start : start + d].double().mean(0) if per_unit[name] else None
        start += d if per_unit[name] else 0
        variance = means.var(0) if means.shape[0] > 1 else torch.zeros(d, dtype=torch.float64)
        prior = type(model_tr.nodes[name]["fn"]).__name__
        which = f"the prior at {name!r}, {prior},"
        if weights.elementwise(latent[name]["fn"]) is None:
            which = f"q at {name!r}, {type(latent[name]['fn']).__name__},"
        note = "" if per_unit[name] else f" ({which} is not a product over units: no KL per unit)"
        if weights.is_point_mass(latent[name]["fn"]):
            note = f" (q at {name!r} is a point mass: no KL)"
        act = LatentActivity(
            name,
            variance.cpu(),
            (variance > threshold).cpu(),
            None if kl is None else kl.cpu(),
            threshold,
            note,
        )
        if warn_below > 0 and act.num_active < max(1, math.ceil(warn_below * d)):
            warnings.warn(
                f"posterior collapse: {act.num_active} of {d} units of {name!r} are active "
                f"(Cov_x E_q[z] > {threshold}); the decoder ignores the rest of the code "
                "(try a KL warm-up, a weaker decoder or fewer latent dimensions)",
                PosteriorCollapseWarning,
                stacklevel=3,
            )  # the caller, past no_grad
        out[name] = act
    return out


def _is_code(site: dict) -> bool:
    return weights.is_point_mass(site["fn"]) and not torch.is_floating_point(site["value"])


def _code_activity(guide, args: tuple, name: str, threshold: float, batch: int = 1000) -> LatentActivity:
    """Positions as units of a site of discrete codes chosen by a point mass: each position's
    "variance" is the share of datapoints whose code there differs from the position's most
    common code (active above ``threshold``); the note gives the number of distinct codes used
    and the perplexity of their frequencies."""
    n = args[0].shape[0]
    with pyro.validation_enabled(False):
        parts = [
            pyro.poutine.trace(guide).get_trace(*(a[i : i + batch] for a in args)).nodes[name]["value"]
            for i in range(0, n, batch)
        ]
    codes = torch.cat(parts).reshape(n, -1).cpu()
    top = torch.stack([torch.bincount(c).max() for c in codes.T]).double()
    variance = 1.0 - top / n
    freq = torch.bincount(codes.reshape(-1)).double()
    freq = freq[freq > 0] / codes.numel()
    perplexity = float(torch.exp(-(freq * freq.log()).sum()))
    note = f" (discrete codes: {freq.numel()} distinct used, perplexity {perplexity:.1f}; no KL per position)"
    criterion = "share off the commonest code"
    return LatentActivity(name, variance, variance > threshold, None, threshold, note, criterion)


def _packer(latent: list[str], per_unit: dict[str, bool]) -> Callable:
    """reduce_traces for :func:`latent_activity`: per datapoint, E_q[z] of each latent site and,
    where the site factorizes over units, the KL of each unit."""

    def pack(guide_tr, model_tr, particle_dim, k):
        cols = []
        for name in latent:
            g, m = guide_tr.nodes[name], model_tr.nodes[name]
            ev = g["fn"].event_dim
            try:
                mean = g["fn"].mean.expand(g["value"].shape)
            except NotImplementedError:
                mean = g["value"]
            cols.append(weights.per_datapoint(mean, g, particle_dim, k, ev))
            if per_unit[name]:
                qb, pb = weights.elementwise(g["fn"]), weights.elementwise(m["fn"])
                try:
                    kl = torch.distributions.kl_divergence(qb, pb)
                except NotImplementedError:
                    kl = qb.log_prob(g["value"]) - pb.log_prob(g["value"])
                cols.append(weights.per_datapoint(kl.expand(g["value"].shape), g, particle_dim, k, ev))
        return torch.cat(cols, -1)

    return pack


@dataclass
class StepActivity:
    """Active units of a sequence model's latent z_t at each time step t (:func:`step_activity`)."""

    active: torch.Tensor  #: (T,) active units of z_t among the sequences that reach step t
    units: int  #: units of each z_t
    sequences: torch.Tensor  #: (T,) the sequences that reach step t
    kl: torch.Tensor  #: (T,) E_q[KL(q(z_t | .) || p(z_t | z_{t-1}))] over the sequences that reach t
    threshold: float
    variance: torch.Tensor  #: (T, units) Cov_x E_q[z_{t,u} | x] over the sequences that reach t

    def __str__(self) -> str:
        a = self.active.double()
        return (
            f"{self.units} units per step, active (Cov_x E_q[z] > {self.threshold}) at steps 1..{len(a)}: "
            f"median {a.median():.0f}, least {a.min():.0f}, most {a.max():.0f}; KL per step "
            f"{(self.kl * self.sequences).sum() / self.sequences.sum():.2f} nats on average"
        )


def _unmasked(fn):
    while isinstance(fn, pyro.distributions.MaskedDistribution):
        fn = fn.base_dist
    return fn


@torch.no_grad()
@keeps_streams
def step_activity(
    model,
    guide,
    x: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_samples: int = 16,
    threshold: float = ACTIVE_THRESHOLD,
    seed: int = 0,
) -> StepActivity:
    """Active units per time step of a sequence model ``model(x, mask)`` with latents z_1..z_T,
    in the order its guide samples them: unit u of z_t is active when Cov_x E_q[z_{t,u} | x] >
    ``threshold`` over the sequences that reach step t (Burda et al. 2015, sec. 5.2, step by
    step), E_q[z_t | x] averaged over ``num_samples`` draws of the guide (z_t's mean given its
    draws of z_{<t}); the KL of step t is KL(q(z_t | .) || p(z_t | z_{t-1})) in closed form where
    torch has it, else log q - log p at the draw, averaged likewise."""
    check_inputs(model, guide, x, mask, num_samples=num_samples, name="diagnostics")
    pyro.set_rng_seed(seed)
    means, kls = 0.0, 0.0
    with pyro.validation_enabled(False):
        for _ in range(num_samples):
            g = pyro.poutine.trace(guide).get_trace(x, mask)
            m = pyro.poutine.trace(pyro.poutine.replay(model, trace=g)).get_trace(x, mask)
            names = [n for n, s in g.nodes.items() if s["type"] == "sample" and not s["is_observed"]]
            names = [n for n in names if not site_is_subsample(g.nodes[n])]
            names = [n for n in names if n in m.nodes and not m.nodes[n]["is_observed"]]
            q = [_unmasked(g.nodes[n]["fn"]) for n in names]
            values = [g.nodes[n]["value"] for n in names]
            step_means = torch.stack([_mean(fn, v) for fn, v in zip(q, values)], 1)
            step_kl = torch.stack(
                [_kl(fn, _unmasked(m.nodes[n]["fn"]), v) for n, fn, v in zip(names, q, values)], 1
            )
            means, kls = means + step_means / num_samples, kls + step_kl / num_samples
    if means.shape[1] != mask.shape[1]:
        raise ModelError(
            f"the guide samples {means.shape[1]} latent sites for {mask.shape[1]} steps; "
            "step_activity takes one latent site per time step"
        )
    reach = mask.sum(0)
    variance, kl = [], []
    for t in range(mask.shape[1]):
        seen = means[mask[:, t], t].double()
        variance.append(
            seen.var(0) if seen.shape[0] > 1 else torch.zeros(seen.shape[-1], dtype=torch.float64)
        )
        kl.append(kls[mask[:, t], t].double().mean())
    variance = torch.stack(variance).cpu()
    active = (variance > threshold).sum(-1)
    return StepActivity(active, means.shape[-1], reach.cpu(), torch.stack(kl).cpu(), threshold, variance)


def _mean(fn, value: torch.Tensor) -> torch.Tensor:
    try:
        return fn.mean.expand(value.shape)
    except NotImplementedError:  # a flow: the draw itself
        return value


def _kl(q, p, value: torch.Tensor) -> torch.Tensor:
    try:
        return torch.distributions.kl_divergence(q, p)
    except NotImplementedError:
        return q.log_prob(value) - p.log_prob(value)
