"""What a discrete latent says about the data: q(c | x) per datapoint, the classification
error of a semi-supervised model's q(y | x), and the clustering accuracy of an unsupervised one."""

from __future__ import annotations

import math
from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from pyrovae.inference.plates import slice_args


def _categorical_probs(fn) -> torch.Tensor | None:
    while hasattr(fn, "base_dist"):  # masked, independent or expanded wrappers
        fn = fn.base_dist
    if isinstance(fn, (torch.distributions.Categorical, torch.distributions.OneHotCategorical)):
        return fn.probs
    return None


@torch.no_grad()
def discrete_probs(guide: Callable, *args, chunk: int = 2000) -> dict[str, torch.Tensor]:
    """{site: q(c | x) of shape (N, C)} for every categorical sample site of the guide, read off
    one trace per ``chunk`` datapoints (enumeration off, Pyro's checks off)."""
    n, out = args[0].shape[0], {}
    for start in range(0, n, chunk):
        a, _ = slice_args(args, {}, n, start, min(n, start + chunk))
        with pyro.validation_enabled(False), torch.random.fork_rng():
            tr = poutine.trace(guide).get_trace(*a)
        for name, site in tr.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                continue
            probs = _categorical_probs(site["fn"])
            if probs is not None:
                out.setdefault(name, []).append(probs.expand(a[0].shape[0], -1))
    return {k: torch.cat(v) for k, v in out.items()}


def classification_error(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Share of datapoints whose most probable class under q(y | x) is not the label, with its
    standard error sqrt(e (1 - e) / N)."""
    wrong = (probs.argmax(-1) != labels.to(probs.device)).double()
    e = wrong.mean().item()
    return {"error": e, "stderr": math.sqrt(e * (1 - e) / max(len(wrong), 1))}


def cluster_accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Unsupervised clustering accuracy: the share of datapoints whose most probable cluster
    maps to their label under the best one-to-one map of clusters to labels (Hungarian
    matching on the contingency table, as in Xie et al. 2016, eq. 10); with more clusters than
    labels the unmatched clusters count as wrong."""
    from scipy.optimize import linear_sum_assignment

    clusters, labels = probs.argmax(-1).cpu(), labels.cpu().long()
    table = torch.zeros(probs.shape[-1], int(labels.max()) + 1, dtype=torch.long)
    table.index_put_((clusters, labels), torch.ones_like(labels), accumulate=True)
    rows, cols = linear_sum_assignment(-table.numpy())
    return float(table[rows, cols].sum()) / len(labels)
