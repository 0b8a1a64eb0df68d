"""Posterior diagnostics for amortized guides q(z | x), one datapoint at a time.

- :func:`to_inference_data`: draws of every latent site per datapoint, posterior predictive
  draws, observed data, log importance weights and pointwise log-likelihoods as an
  ``arviz.InferenceData`` (ArviZ 0.x, 0.18 or later: the line that installs on Python 3.11;
  ArviZ 1.x changed ``from_dict`` and is not supported yet);
- :func:`posterior_quality`: per datapoint, the Pareto k-hat of the importance weights
  (PSIS, Yao et al. 2018, sec. 2.2, through ``arviz.psislw``), the importance ESS and the
  gap log p(x) - ELBO(x), an estimate of KL(q(z|x) || p(z|x));
- :func:`amortization_gap`: that gap split into approximation and amortization gaps
  (Cremer et al. 2018, eq. 4) by fitting a local Gaussian q_n(z) to each chosen datapoint;
- :func:`latent_activity`: active units (Burda et al. 2015, sec. 5.2: Cov_x(E_q[z_u]) > 0.01)
  and the KL per latent dimension, with a posterior-collapse warning;
- latent plots: posterior means by label, the decoded manifold of a 2-D latent, traversals
  and interpolations.

Reading k-hat (Yao et al. 2018, sec. 2.2; Vehtari et al. 2024, sec. 3): below 0.5 the
importance weights have finite variance and the IS estimate of log p(x) converges fast;
between 0.5 and 0.7 it still converges, slowly; above 0.7 the estimate is unreliable at any
practical K: q(z|x) misses mass of p(z|x) (too narrow, too light tails, or off centre).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.util import site_is_subsample
from torch import nn

from . import estimators, experiment, plots
from .errors import ConfigError, ModelError
from .sites import DATA_PLATE

KHAT_GOOD = 0.5  #: k-hat at most this: finite-variance weights, reliable importance estimates
KHAT_BAD = 0.7  #: k-hat above this: the importance estimate is unreliable (Yao et al. 2018, sec. 2.2)
FLAT_SPREAD = 1e-3  #: log weights spread less than this (nats) are flat: no Pareto tail to fit
ACTIVE_THRESHOLD = 0.01  #: Cov_x(E_q[z_u]) above this makes unit u active (Burda et al. 2015, sec. 5.2)


class PosteriorCollapseWarning(UserWarning):
    """Few latent units are active: the decoder ignores most of the code."""


# --------------------------------------------------------------------------- draws


def _sites(model, guide, args):
    """(latent sites {name: (site, event_dim)} in guide order, observed sites {name: site},
    particle dim) from one inspection run on ``args``."""
    guide_tr, model_tr = estimators.inspection_traces(model, guide, args, {})
    nesting = estimators.plate_nesting(model, guide, args, {}, traces=(guide_tr, model_tr))
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
    return estimators.per_datapoint(site["value"], site, particle_dim, 1, site["fn"].event_dim)[0]


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
    particles and datapoints like :func:`pyrovae.estimators.map_terms`."""
    latent, observed, model_tr, pdim = _sites(model, guide, args)
    if not latent:
        raise ModelError("the guide samples no latent site: there is no posterior to inspect")
    sizes = {n: _layout(s, pdim).shape[-1] for n, s in latent.items()}
    obs_sizes = {n: _layout(s, pdim).shape[-1] for n, s in observed.items()}

    def pack(guide_tr, model_tr, particle_dim, k):
        cols = [
            estimators.per_datapoint(
                guide_tr.nodes[n]["value"],
                guide_tr.nodes[n],
                particle_dim,
                k,
                guide_tr.nodes[n]["fn"].event_dim,
            )
            for n in latent
        ]
        cols += [estimators.site_log_prob(model_tr.nodes[n], particle_dim, k)[..., None] for n in observed]
        log_p = sum(
            estimators.site_log_prob(s, particle_dim, k)
            for n, s in model_tr.nodes.items()
            if n in latent or n in observed
        )
        log_q = sum(estimators.site_log_prob(guide_tr.nodes[n], particle_dim, k) for n in latent)
        return torch.cat([*cols, (log_p - log_q)[..., None]], -1)

    packed = estimators.map_terms(
        model, guide, *args, num_samples=num_samples, reduce_traces=pack, max_rows=max_rows
    )
    parts = _unpack(
        packed, {**{("z", n): s for n, s in sizes.items()}, **{("ll", n): 1 for n in observed}, ("lw", ""): 1}
    )
    predictive = {}
    if predictive_draws > 0 and observed:

        def draw(guide_tr, model_tr, particle_dim, k):
            return torch.cat(
                [
                    estimators.per_datapoint(
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
            estimators.map_terms(
                model, guide, *args, num_samples=predictive_draws, reduce_traces=draw, max_rows=max_rows
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
    - ``constant_data``: ``label`` [datapoint], when ``labels`` are given.

    The ``num_samples`` draws are independent; they are split into ``chains`` chains only
    so that ArviZ's summaries (r-hat needs two or more) run unchanged; r-hat is then 1 up to
    noise. ``index`` labels the datapoints (default 0..N-1); ``condition`` are the further
    arguments of a conditional model; ``images`` are the pixels checked when ``x`` is
    derived from images (as in :func:`pyrovae.experiment.evaluate_data`).
    """
    import arviz as az
    import xarray as xr

    if not isinstance(chains, int) or chains < 1 or num_samples % chains:
        raise ConfigError(f"num_samples ({num_samples}) must split into chains ({chains!r}) of equal length")
    args = experiment.check_inputs(
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

    def by_chain(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().reshape(chains, t.shape[0] // chains, *t.shape[1:])

    latent_dim = _dim_names(list(draws.latents), "latent")
    pixel_dim = _dim_names(list(draws.observed), "pixel")
    coords = {"datapoint": index}
    for name, v in draws.latents.items():
        coords[latent_dim[name]] = np.arange(v.shape[-1])
    for name, v in draws.observed.items():
        coords[pixel_dim[name]] = np.arange(v.shape[-1])
    attrs = {
        "inference_library": "pyrovae",
        "model": type(model).__name__,
        "guide": type(guide).__name__,
        "num_samples": num_samples,
        "note": "posterior holds draws from q(z|x); sample_stats.log_weight reweights them to p(z|x)",
    }

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
    idata = az.InferenceData(**groups)
    table = importance_table(draws.log_weights, labels=labels, index=index)
    idata.add_groups(
        {
            "datapoint_stats": xr.Dataset(
                {
                    c: ("datapoint", table[c].to_numpy())
                    for c in table.columns
                    if c not in ("datapoint", "label")
                },
                coords={"datapoint": index},
                attrs=attrs,
            )
        }
    )
    return idata


# --------------------------------------------------------------------------- importance weights


def psis_khat(log_weights: torch.Tensor) -> torch.Tensor:
    """Pareto k-hat of each datapoint's importance weights (columns of ``log_weights``, (S, N)),
    from the generalized Pareto fit PSIS makes to the largest weights (Yao et al. 2018,
    sec. 2.2; ``arviz.psislw`` with relative efficiency 1, the draws being independent).

    Weights within a factor exp(FLAT_SPREAD) of each other (q(z|x) = p(z|x) up to rounding:
    every estimate is exact to 0.1%) have no tail to fit; ArviZ returns inf or fits the
    rounding noise, here they get -inf, the limit of a bounded tail.
    """
    import arviz as az

    s = log_weights.shape[0]
    if s < 20:
        raise ConfigError(f"k-hat needs at least 20 importance samples per datapoint to fit a tail, got {s}")
    lw = log_weights.detach().double().cpu()
    flat = (lw.amax(0) - lw.amin(0)) <= FLAT_SPREAD
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns about large k; the table reports it
        _, k = az.psislw(lw.T.contiguous().numpy(), reff=1.0)
    k = torch.as_tensor(np.asarray(k, dtype=np.float64))
    return k.masked_fill(flat, -math.inf)


def importance_table(
    log_weights: torch.Tensor, labels: torch.Tensor | None = None, index: Sequence[int] | None = None
):
    """Per-datapoint quality of q(z|x) from log weights (S, N), as a pandas DataFrame:
    ``log_px`` (the S-sample importance estimate, Burda et al. 2015, eq. 8), ``elbo`` (mean
    log weight), ``gap`` = log_px - elbo (>= 0; an estimate of KL(q || p(z|x)), biased low
    with log_px), ``k_hat`` (:func:`psis_khat`), ``ess`` ((sum w)^2 / sum w^2, Kong 1992)
    and ``ess_fraction`` = ess / S."""
    import pandas as pd

    lw = log_weights.detach().double().cpu()
    s, n = lw.shape
    log_px = estimators.iwae_from_log_weights(lw)
    elbo = lw.mean(0)
    ess = estimators.ess_from_log_weights(lw)
    table = pd.DataFrame({"datapoint": np.arange(n) if index is None else np.asarray(index)})
    if labels is not None:
        table["label"] = labels.cpu().numpy()
    table["log_px"] = log_px.numpy()
    table["elbo"] = elbo.numpy()
    table["gap"] = (log_px - elbo).numpy()
    table["k_hat"] = psis_khat(lw).numpy()
    table["ess"] = ess.numpy()
    table["ess_fraction"] = (ess / s).numpy()
    table.attrs["num_samples"] = s
    return table


def posterior_quality(
    model,
    guide,
    x: torch.Tensor,
    *condition: torch.Tensor,
    num_samples: int = 1000,
    labels: torch.Tensor | None = None,
    index: Sequence[int] | None = None,
    images: torch.Tensor | None = None,
    seed: int = 0,
    max_rows: int | None = None,
):
    """:func:`importance_table` of ``num_samples`` draws from q(z | x) for each datapoint."""
    args = experiment.check_inputs(
        model, guide, x, *condition, images=images, num_samples=num_samples, name="diagnostics"
    )
    pyro.set_rng_seed(seed)
    with pyro.validation_enabled(False):
        lw = estimators.log_weights(model, guide, *args, num_samples=num_samples, max_rows=max_rows)
    return importance_table(lw, labels=labels, index=index)


def worst(table, n: int = 10, by: str = "k_hat"):
    """The ``n`` datapoints with the largest ``by`` (k-hat by default; or "gap")."""
    return table.sort_values(by, ascending=False).head(n)


def quality_summary(table) -> dict:
    """Share of datapoints in each k-hat band, mean gap with its standard error, mean ESS share."""
    k = table["k_hat"].to_numpy()
    gap = torch.tensor(table["gap"].to_numpy())
    mean, se = estimators.mean_and_stderr(gap)
    return {
        "num_datapoints": len(table),
        "num_samples": table.attrs.get("num_samples"),
        "k_hat_good": float(np.mean(k <= KHAT_GOOD)),
        "k_hat_ok": float(np.mean((k > KHAT_GOOD) & (k <= KHAT_BAD))),
        "k_hat_bad": float(np.mean(k > KHAT_BAD)),
        "gap": {"mean": mean, "stderr": se},
        "ess_fraction": float(table["ess_fraction"].mean()),
    }


def plot_quality(table, ax=None):
    """k-hat against the gap log p(x) - ELBO(x) per datapoint, with the 0.5 and 0.7 thresholds."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4)) if ax is None else (ax.figure, ax)
    k = np.clip(table["k_hat"].to_numpy(), -0.5, None)  # -inf (exact posterior) drawn at the floor
    colours = table["label"].to_numpy() if "label" in table else None
    sc = ax.scatter(
        table["gap"].to_numpy(), k, c=colours, cmap="tab10" if colours is not None else None, s=6, alpha=0.7
    )
    if colours is not None:
        fig.colorbar(sc, ax=ax, label="label")
    for level, style in ((KHAT_GOOD, ":"), (KHAT_BAD, "--")):
        ax.axhline(level, color="k", ls=style, lw=1, label=f"k-hat = {level}")
    ax.set_xlabel("gap log p(x) - ELBO(x) (nats)")
    ax.set_ylabel("Pareto k-hat")
    ax.set_title(f"q(z|x) per datapoint, S = {table.attrs.get('num_samples')}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- amortization gap


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


def amortization_gap(
    model,
    guide,
    x: torch.Tensor,
    *condition: torch.Tensor,
    steps: int = 1000,
    lr: float = 0.02,
    num_particles: int = 16,
    num_samples: int = 5000,
    index: Sequence[int] | None = None,
    images: torch.Tensor | None = None,
    seed: int = 0,
):
    """Split log p(x) - ELBO(x) of each datapoint into the approximation gap
    log p(x) - ELBO(q*_n) and the amortization gap ELBO(q*_n) - ELBO(q(.|x)) (Cremer et al.
    2018, eq. 4), with q*_n the best diagonal Gaussian for datapoint n alone: a
    :class:`LocalGaussian` started at the amortized q's moments and fitted by ``steps``
    Adam steps on the ``num_particles``-sample ELBO (learning rate ``lr`` decaying
    geometrically to lr / 100), the model and guide held fixed.

    Both ELBOs and log p(x) use ``num_samples`` draws; log p(x) is the importance estimate
    from q or q*_n, whichever is reliable (k-hat <= 0.7, :func:`psis_khat`) with the larger
    ESS (taking the larger estimate instead would favour heavy-tailed overshoots), and
    ``log_px_k_hat`` says how far to trust it.
    Returns a DataFrame: ``datapoint``, ``log_px``, ``log_px_k_hat``, ``elbo_amortized``, ``elbo_local``,
    ``approximation_gap``, ``amortization_gap``, ``total_gap``. The datapoints are fitted
    together, so choose tens, not thousands.
    """
    import pandas as pd

    args = experiment.check_inputs(
        model, guide, x, *condition, images=images, num_samples=num_samples, name="the amortization gap"
    )
    n = x.shape[0]
    pyro.set_rng_seed(seed)
    latent, _, _, pdim = _sites(model, guide, args)
    shapes = {}
    for name, site in latent.items():
        if tuple(site["value"].shape) != (n, *site["fn"].event_shape):
            raise ModelError(
                f"latent site {name!r} has value shape {tuple(site['value'].shape)}; the local "
                f"Gaussian needs one event of shape {tuple(site['fn'].event_shape)} per datapoint, "
                f"batch shape (N,) = ({n},)"
            )
        shapes[name] = site["fn"].event_shape
    draws = sample_posterior(model, guide, *args, num_samples=256, predictive_draws=0)
    local = LocalGaussian({nm: (v.mean(0), v.std(0)) for nm, v in draws.latents.items()}, shapes).to(x.device)
    held = [p for m in (model, guide) if isinstance(m, nn.Module) for p in m.parameters() if p.requires_grad]
    for p in held:
        p.requires_grad_(False)
    try:
        optim = torch.optim.Adam(local.parameters(), lr=lr)
        decay = torch.optim.lr_scheduler.ExponentialLR(optim, 0.01 ** (1 / max(steps, 1)))  # to lr / 100
        nesting = estimators.plate_nesting(model, local, args, {})
        with pyro.validation_enabled(False):
            for _ in range(steps):
                optim.zero_grad()
                terms = estimators.log_prob_terms(
                    model, local, *args, num_samples=num_particles, max_plate_nesting=nesting
                )
                (-terms.log_weights.mean(0).sum()).backward()
                optim.step()
                decay.step()
    finally:
        for p in held:
            p.requires_grad_(True)
    chunk = max(1, estimators.CPU_ROWS // n)
    with pyro.validation_enabled(False):
        lw_q = estimators.log_weights(model, guide, *args, num_samples=num_samples)
        lw_local = estimators.log_weights(
            model, local, *args, num_samples=num_samples, particle_chunk=chunk, data_chunk=n
        )
    lw_q, lw_local = lw_q.double().cpu(), lw_local.double().cpu()
    k_q, k_local = psis_khat(lw_q), psis_khat(lw_local)
    ess_q, ess_local = estimators.ess_from_log_weights(lw_q), estimators.ess_from_log_weights(lw_local)
    ok_q, ok_local = k_q <= KHAT_BAD, k_local <= KHAT_BAD
    # a reliable proposal (k-hat <= 0.7) over an unreliable one, then the larger ESS
    use_local = torch.where(ok_q == ok_local, ess_local >= ess_q, ok_local)
    log_px = torch.where(
        use_local, estimators.iwae_from_log_weights(lw_local), estimators.iwae_from_log_weights(lw_q)
    )
    k_used = torch.where(use_local, k_local, k_q)
    elbo_q, elbo_local = lw_q.mean(0), lw_local.mean(0)
    table = pd.DataFrame(
        {
            "datapoint": np.arange(n) if index is None else np.asarray(index),
            "log_px": log_px.numpy(),
            "log_px_k_hat": k_used.numpy(),
            "elbo_amortized": elbo_q.cpu().numpy(),
            "elbo_local": elbo_local.cpu().numpy(),
            "approximation_gap": (log_px - elbo_local).cpu().numpy(),
            "amortization_gap": (elbo_local - elbo_q).cpu().numpy(),
            "total_gap": (log_px - elbo_q).cpu().numpy(),
        }
    )
    table.attrs.update(steps=steps, num_particles=num_particles, num_samples=num_samples)
    return table


# --------------------------------------------------------------------------- latent activity


def _elementwise(fn):
    """The per-element distribution under Independent wrappers, or None."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn if fn.event_shape == torch.Size() else None


@dataclass
class LatentActivity:
    """Active units and KL per dimension of one latent site."""

    site: str
    variance: torch.Tensor  #: Cov_x(E_q[z_u | x]) per unit u
    active: torch.Tensor  #: variance > threshold
    kl_per_dim: torch.Tensor | None  #: E_x E_q[KL per unit]; None when the prior is not a product over units
    threshold: float
    note: str = ""

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
            f"(Cov_x E_q[z] > {self.threshold}){kl}{self.note}"
        )


@torch.no_grad()
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
    units (and at least one) are active; ``warn_below = 0`` never warns.
    """
    args = experiment.check_inputs(
        model, guide, x, *condition, images=images, num_samples=num_samples, name="diagnostics"
    )
    pyro.set_rng_seed(seed)
    latent, _, model_tr, pdim = _sites(model, guide, args)
    if not latent:
        raise ModelError("the guide samples no latent site: there are no units to inspect")
    sizes = {n: _layout(s, pdim).shape[-1] for n, s in latent.items()}
    per_unit = {
        n: _elementwise(s["fn"]) is not None and _elementwise(model_tr.nodes[n]["fn"]) is not None
        for n, s in latent.items()
    }

    def pack(guide_tr, model_tr, particle_dim, k):
        cols = []
        for name in latent:
            g, m = guide_tr.nodes[name], model_tr.nodes[name]
            ev = g["fn"].event_dim
            try:
                mean = g["fn"].mean.expand(g["value"].shape)
            except NotImplementedError:
                mean = g["value"]
            cols.append(estimators.per_datapoint(mean, g, particle_dim, k, ev))
            if per_unit[name]:
                qb, pb = _elementwise(g["fn"]), _elementwise(m["fn"])
                try:
                    kl = torch.distributions.kl_divergence(qb, pb)
                except NotImplementedError:
                    kl = qb.log_prob(g["value"]) - pb.log_prob(g["value"])
                cols.append(estimators.per_datapoint(kl.expand(g["value"].shape), g, particle_dim, k, ev))
        return torch.cat(cols, -1)

    with pyro.validation_enabled(False):
        packed = estimators.map_terms(model, guide, *args, num_samples=num_samples, reduce_traces=pack).mean(
            0
        )
    out, start = {}, 0
    for name in latent:
        d = sizes[name]
        means = packed[:, start : start + d].double()
        start += d
        kl = None
        if per_unit[name]:
            kl = packed[:, start : start + d].double().mean(0)
            start += d
        variance = means.var(0) if means.shape[0] > 1 else torch.zeros(d, dtype=torch.float64)
        prior = type(model_tr.nodes[name]["fn"]).__name__
        note = (
            ""
            if per_unit[name]
            else f" (the prior at {name!r}, {prior}, is not a product over units: no KL per unit)"
        )
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


# --------------------------------------------------------------------------- latent plots


def _decoder(model, decode: Callable | None) -> Callable:
    return decode or model.decode


@torch.no_grad()
def posterior_means(
    model, guide, x: torch.Tensor, *condition: torch.Tensor, site: str | None = None
) -> torch.Tensor:
    """E_q[z | x] at ``site`` (default: the code site ``model.decode`` takes), (N, D)."""
    return experiment.posterior_means(guide, x, *condition, site=site or experiment.code_site(model))


def plot_latent_means(
    model,
    guide,
    x: torch.Tensor,
    *condition: torch.Tensor,
    labels: torch.Tensor | None = None,
    site: str | None = None,
    ax=None,
):
    """Scatter of posterior means coloured by label (first two principal components when D > 2)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5)) if ax is None else (ax.figure, ax)
    plots.latent_scatter(posterior_means(model, guide, x, *condition, site=site), labels, ax)
    fig.tight_layout()
    return fig


def plot_manifold(model, n: int = 20, decode: Callable | None = None, ax=None):
    """E[x | z] on an n x n grid of a 2-D code at the N(0, 1) quantiles 0.05..0.95
    (Kingma & Welling 2013, fig. 4)."""
    import matplotlib.pyplot as plt

    dim = model.latent_dim if isinstance(model.latent_dim, int) else model.latent_dim[-1]
    if dim != 2:
        raise ModelError(
            f"the manifold grid needs a 2-D code; this model's has {dim} dimensions "
            "(use plot_latent_means, traversals or interpolate)"
        )
    param = next(model.parameters())
    images = plots.manifold_grid(_decoder(model, decode), n, param.device, param.dtype)
    fig, ax = plt.subplots(figsize=(7, 7)) if ax is None else (ax.figure, ax)
    plots.show_grid(images, ax, nrow=n, title="decoded manifold of the 2-D code")
    return fig


@torch.no_grad()
def traversals(
    model,
    guide,
    x: torch.Tensor,
    *condition: torch.Tensor,
    dims: Sequence[int] | None = None,
    span: float = 3.0,
    steps: int = 9,
    decode: Callable | None = None,
) -> torch.Tensor:
    """Decode E_q[z | x] of the first datapoint with one unit at a time set to ``steps`` values
    in [-span, span] (the others held): (len(dims) * steps, *image shape), one row per unit."""
    z0 = posterior_means(model, guide, x[:1], *(c[:1] for c in condition))
    dims = list(range(z0.shape[-1])) if dims is None else list(dims)
    values = torch.linspace(-span, span, steps, device=z0.device, dtype=z0.dtype)
    z = z0.repeat(len(dims) * steps, 1)
    for row, d in enumerate(dims):
        z[row * steps : (row + 1) * steps, d] = values
    return _decoder(model, decode)(z)


@torch.no_grad()
def interpolate(
    model,
    guide,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    *condition: torch.Tensor,
    steps: int = 10,
    decode: Callable | None = None,
) -> torch.Tensor:
    """Decode codes on the line from E_q[z | x_a] to E_q[z | x_b] (single datapoints, batch
    shape (1, ...)): (steps, *image shape)."""
    za = posterior_means(model, guide, x_a, *condition)
    zb = posterior_means(model, guide, x_b, *condition)
    t = torch.linspace(0, 1, steps, device=za.device, dtype=za.dtype)[:, None]
    return _decoder(model, decode)((1 - t) * za + t * zb)


def plot_images(images: torch.Tensor, nrow: int, title: str | None = None, ax=None):
    """A grid of images in a figure (for traversals, interpolations, samples)."""
    import matplotlib.pyplot as plt

    rows = math.ceil(images.shape[0] / nrow)
    fig, ax = plt.subplots(figsize=(nrow * 0.8, rows * 0.8 + 0.5)) if ax is None else (ax.figure, ax)
    plots.show_grid(images, ax, nrow=nrow, title=title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- runs


def diagnose_run(
    run,
    out_dir,
    *,
    split: str = "test",
    limit: int = 1000,
    num_samples: int = 1000,
    amortization: int = 0,
    seed: int = 0,
) -> dict:
    """The diagnostics of a trained run (:func:`pyrovae.experiment.load_run`) on the first
    ``limit`` datapoints of ``split``: ``diagnostics.csv`` (the :func:`posterior_quality`
    table), ``khat_gap.png`` and ``diagnostics.json`` (the :func:`quality_summary`, active
    units, and, for ``amortization`` > 0, the mean gaps of that many datapoints) in ``out_dir``."""
    import json
    from pathlib import Path

    from matplotlib.figure import Figure

    from .data import EVAL_BINARIZATION_SEED
    from .train import model_inputs

    out_dir = Path(out_dir)
    data = experiment.load_data(run.config, split, run.device)
    images = data.observe_fixed(seed + EVAL_BINARIZATION_SEED)[:limit]
    labels = data.labels[:limit]
    args = model_inputs(run.model, images, labels)
    table = posterior_quality(
        run.model, run.guide, *args, images=images, num_samples=num_samples, labels=labels.cpu(), seed=seed
    )
    table.to_csv(out_dir / "diagnostics.csv", index=False)
    fig = plot_quality(table, ax=Figure(figsize=(6, 4)).subplots())  # no pyplot: any backend, or none
    fig.savefig(out_dir / "khat_gap.png", dpi=100)
    out = {"split": split, **quality_summary(table), "worst": worst(table, 10).to_dict(orient="records")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PosteriorCollapseWarning)
        activity = latent_activity(run.model, run.guide, *args, images=images, seed=seed)
    out["active_units"] = {
        name: {
            "active": a.num_active,
            "units": a.variance.numel(),
            "kl": None if a.kl_per_dim is None else a.kl_per_dim.tolist(),
            "variance": a.variance.tolist(),
        }
        for name, a in activity.items()
    }
    out["warnings"] = [str(w.message) for w in caught]
    if amortization > 0:
        gaps = amortization_gap(
            run.model,
            run.guide,
            *(a[:amortization] for a in args),
            images=images[:amortization],
            seed=seed,
            num_samples=num_samples,
        )
        out["amortization"] = {
            "num_datapoints": len(gaps),
            **{
                c: dict(zip(("mean", "stderr"), estimators.mean_and_stderr(torch.tensor(gaps[c].to_numpy()))))
                for c in ("total_gap", "approximation_gap", "amortization_gap")
            },
        }
    (out_dir / "diagnostics.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    return out
