"""Draws from q(z|x) per datapoint, what the model makes of them, and ArviZ InferenceData."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyro
import torch
from pyro.poutine.util import site_is_subsample

from pyrovae.diagnostics.importance import importance_table
from pyrovae.errors import ConfigError, ModelError
from pyrovae.inference import chunks, weights
from pyrovae.inference.checks import check_inputs
from pyrovae.inference.clusters import discrete_probs
from pyrovae.runtime.seeds import keeps_streams


def _sites(model, guide, args):
    """(latent sites {name: (site, event_dim)} in guide order, observed sites {name: site},
    particle dim) from one inspection run on ``args``."""
    guide_tr, model_tr = weights.inspection_traces(model, guide, args, {})
    nesting = weights.plate_nesting(model, guide, args, {}, traces=(guide_tr, model_tr))
    latent = {
        n: s
        for n, s in guide_tr.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    }
    observed = {
        n: s
        for n, s in model_tr.nodes.items()
        if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s)
    }
    return latent, observed, model_tr, -nesting - 1


def _layout(site, particle_dim) -> torch.Tensor:
    """A site's value as (N, size)."""
    return weights.per_datapoint(site["value"], site, particle_dim, 1, site["fn"].event_dim)[0]


@dataclass
class PosteriorDraws:
    """Draws from q(z | x) for every datapoint, and what the model makes of them."""

    latents: dict[str, torch.Tensor]  #: site -> (S, N, size of the site per datapoint)
    observed: dict[str, torch.Tensor]  #: site -> (N, size): the data
    predictive: dict[str, torch.Tensor]  #: site -> (S_pred, N, size): x ~ p(x | z), z ~ q(z | x)
    log_lik: dict[str, torch.Tensor]  #: site -> (S, N): log p(x | z) at the draws
    log_weights: torch.Tensor  #: (S, N): log p(x, z) - log q(z | x)


def _unpack(packed: torch.Tensor, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = packed[..., start : start + size]
        start += size
    return out


@torch.no_grad()
def sample_posterior(
    model, guide, *args, num_samples: int = 1000, predictive_draws: int = 100, max_rows: int | None = None
) -> PosteriorDraws:
    """``num_samples`` draws of every latent site from the guide for each datapoint, with the
    log-likelihood of each observed site and the log importance weights at each draw, and
    ``predictive_draws`` posterior predictive draws (from fresh z ~ q(z|x)); chunked over
    particles and datapoints like :func:`pyrovae.inference.chunks.map_terms`."""
    latent, observed, model_tr, pdim = _sites(model, guide, args)
    if not latent:
        raise ModelError("the guide samples no latent site: there is no posterior to inspect")
    sizes = {n: _layout(s, pdim).shape[-1] for n, s in latent.items()}
    obs_sizes = {n: _layout(s, pdim).shape[-1] for n, s in observed.items()}

    def pack(guide_tr, model_tr, particle_dim, k):
        cols = [
            weights.per_datapoint(
                guide_tr.nodes[n]["value"],
                guide_tr.nodes[n],
                particle_dim,
                k,
                guide_tr.nodes[n]["fn"].event_dim,
            )
            for n in latent
        ]
        cols += [weights.site_log_prob(model_tr.nodes[n], particle_dim, k)[..., None] for n in observed]
        log_p = sum(
            weights.site_log_prob(s, particle_dim, k)
            for n, s in model_tr.nodes.items()
            if n in latent or n in observed
        )
        log_q = sum(weights.site_log_prob(guide_tr.nodes[n], particle_dim, k) for n in latent)
        return torch.cat([*cols, (log_p - log_q)[..., None]], -1)

    packed = chunks.map_terms(  # discrete sites drawn from q(c | x), not enumerated: these are draws
        model, guide, *args, num_samples=num_samples, reduce_traces=pack, max_rows=max_rows, enumerated=False
    )
    parts = _unpack(
        packed, {**{("z", n): s for n, s in sizes.items()}, **{("ll", n): 1 for n in observed}, ("lw", ""): 1}
    )
    predictive = {}
    if predictive_draws > 0 and observed:

        def draw(guide_tr, model_tr, particle_dim, k):
            return torch.cat(
                [
                    weights.per_datapoint(
                        model_tr.nodes[n]["fn"].sample(),
                        model_tr.nodes[n],
                        particle_dim,
                        k,
                        model_tr.nodes[n]["fn"].event_dim,
                    )
                    for n in observed
                ],
                -1,
            )

        predictive = _unpack(
            chunks.map_terms(
                model,
                guide,
                *args,
                num_samples=predictive_draws,
                reduce_traces=draw,
                max_rows=max_rows,
                enumerated=False,
            ),
            obs_sizes,
        )
    return PosteriorDraws(
        latents={n: parts["z", n] for n in latent},
        observed={n: _layout(s, pdim) for n, s in observed.items()},
        predictive=predictive,
        log_lik={n: parts["ll", n][..., 0] for n in observed},
        log_weights=parts["lw", ""][..., 0],
    )


def _dim_names(names: Sequence[str], single: str) -> dict[str, str]:
    """One shared dim name when there is one site, else one per site (their sizes may differ)."""
    return {n: single if len(names) == 1 else f"{n}_{single}" for n in names}


@keeps_streams
def to_inference_data(
    model,
    guide,
    x: torch.Tensor,
    *condition: torch.Tensor,
    num_samples: int = 1000,
    chains: int = 4,
    predictive_draws: int = 100,
    labels: torch.Tensor | None = None,
    index: Sequence[int] | None = None,
    images: torch.Tensor | None = None,
    seed: int = 0,
    max_rows: int | None = None,
):
    """An ``arviz.InferenceData`` of the amortized posterior of the datapoints ``x``.

    Groups (dims in brackets; ``latent`` is ``<site>_latent`` and ``pixel`` is
    ``<site>_pixel`` when a model has several latent or observed sites):

    - ``posterior``: each latent site, draws from q(z | x) [chain, draw, datapoint, latent];
    - ``posterior_predictive``: each observed site, x ~ p(x | z), z ~ q(z | x)
      [chain, draw, datapoint, pixel], ``predictive_draws`` in all;
    - ``observed_data``: each observed site [datapoint, pixel];
    - ``log_likelihood``: each observed site, log p(x | z) at the posterior draws
      [chain, draw, datapoint];
    - ``sample_stats``: ``log_weight`` = log p(x, z) - log q(z | x) [chain, draw, datapoint]:
      self-normalised, these weights turn the q draws into p(z | x) draws;
    - ``datapoint_stats``: the :func:`posterior_quality` columns (``log_px``, ``elbo``,
      ``gap``, ``k_hat``, ``ess``, ``ess_fraction``) [datapoint];
    - ``constant_data``: ``label`` [datapoint], when ``labels`` are given;
    - ``discrete_probs``: for each discrete (categorical) site of the guide, q(c | x)
      [datapoint, ``<site>_value``]; its draws in ``posterior`` are sampled from it.

    The ``num_samples`` draws are independent; they are split into ``chains`` chains only
    so that ArviZ's summaries (r-hat needs two or more) run unchanged; r-hat is then 1 up to
    noise. ``index`` labels the datapoints (default 0..N-1); ``condition`` are the further
    arguments of a conditional model; ``images`` are the pixels checked when ``x`` is
    derived from images (as in :func:`pyrovae.inference.scoring.evaluate_data`).
    """
    import xarray as xr

    if not isinstance(chains, int) or chains < 1 or num_samples % chains:
        raise ConfigError(f"num_samples ({num_samples}) must split into chains ({chains!r}) of equal length")
    args = check_inputs(
        model, guide, x, *condition, images=images, num_samples=num_samples, name="diagnostics"
    )
    predictive_draws = math.ceil(predictive_draws / chains) * chains
    pyro.set_rng_seed(seed)
    draws = sample_posterior(
        model, guide, *args, num_samples=num_samples, predictive_draws=predictive_draws, max_rows=max_rows
    )
    n = x.shape[0]
    index = np.arange(n) if index is None else np.asarray(index)
    if index.shape != (n,):
        raise ConfigError(f"index needs one entry per datapoint ({n}), got shape {index.shape}")

    attrs = {
        "inference_library": "pyrovae",
        "model": type(model).__name__,
        "guide": type(guide).__name__,
        "num_samples": num_samples,
        "note": "posterior holds draws from q(z|x); sample_stats.log_weight reweights them to p(z|x)",
    }
    idata = _groups(draws, index, labels, chains, attrs)
    table = importance_table(draws.log_weights, labels=labels, index=index)
    columns = {
        c: ("datapoint", table[c].to_numpy()) for c in table.columns if c not in ("datapoint", "label")
    }
    idata.add_groups({"datapoint_stats": xr.Dataset(columns, coords={"datapoint": index}, attrs=attrs)})
    probs = discrete_probs(guide, *args)
    if probs:  # q(c | x) of each discrete site [datapoint, <site>_value]
        data = {n: (["datapoint", f"{n}_value"], p.cpu().numpy()) for n, p in probs.items()}
        coords = {"datapoint": index, **{f"{n}_value": np.arange(p.shape[-1]) for n, p in probs.items()}}
        idata.add_groups({"discrete_probs": xr.Dataset(data, coords=coords, attrs=attrs)})
    return idata


def _groups(draws: PosteriorDraws, index: np.ndarray, labels, chains: int, attrs: dict):
    """The InferenceData groups of :func:`to_inference_data` (all but ``datapoint_stats``)."""
    import arviz as az

    def by_chain(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().reshape(chains, t.shape[0] // chains, *t.shape[1:])

    latent_dim = _dim_names(list(draws.latents), "latent")
    pixel_dim = _dim_names(list(draws.observed), "pixel")
    coords = {"datapoint": index}
    for name, v in draws.latents.items():
        coords[latent_dim[name]] = np.arange(v.shape[-1])
    for name, v in draws.observed.items():
        coords[pixel_dim[name]] = np.arange(v.shape[-1])

    def group(data: dict, dims: dict, draws_first: bool = True):
        return az.dict_to_dataset(
            data, coords=coords, dims=dims, attrs=attrs, default_dims=None if draws_first else []
        )

    per_point = {n: ["datapoint"] for n in ("log_weight", "label", *draws.log_lik)}
    pixels = {n: ["datapoint", pixel_dim[n]] for n in draws.observed}
    groups = {
        "posterior": group(
            {n: by_chain(v) for n, v in draws.latents.items()},
            {n: ["datapoint", latent_dim[n]] for n in draws.latents},
        ),
        "observed_data": group({n: v.cpu().numpy() for n, v in draws.observed.items()}, pixels, False),
        "log_likelihood": group({n: by_chain(v) for n, v in draws.log_lik.items()}, per_point),
        "sample_stats": group({"log_weight": by_chain(draws.log_weights)}, per_point),
    }
    if draws.predictive:
        groups["posterior_predictive"] = group({n: by_chain(v) for n, v in draws.predictive.items()}, pixels)
    if labels is not None:
        groups["constant_data"] = group({"label": labels.cpu().numpy()}, per_point, False)
    return az.InferenceData(**groups)
