"""The quality of q(z|x) as an importance proposal, per datapoint: Pareto k-hat (PSIS,
Yao et al. 2018, sec. 2.2), importance ESS and the gap log p(x) - ELBO(x)."""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import pyro
import torch

from pyrovae.errors import ConfigError
from pyrovae.inference import estimators
from pyrovae.inference.checks import check_inputs
from pyrovae.runtime.seeds import keeps_streams

KHAT_GOOD = 0.5  #: k-hat at most this: finite-variance weights, reliable importance estimates
KHAT_BAD = 0.7  #: k-hat above this: the importance estimate is unreliable (Yao et al. 2018, sec. 2.2)
FLAT_SPREAD = 1e-3  #: log weights spread less than this (nats) are flat: no Pareto tail to fit


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


@keeps_streams
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
    progress: bool | str = False,
):
    """:func:`importance_table` of ``num_samples`` draws from q(z | x) for each datapoint."""
    args = check_inputs(
        model, guide, x, *condition, images=images, num_samples=num_samples, name="diagnostics"
    )
    pyro.set_rng_seed(seed)
    with pyro.validation_enabled(False):
        lw = estimators.log_weights(
            model, guide, *args, num_samples=num_samples, max_rows=max_rows, progress=progress
        )
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
