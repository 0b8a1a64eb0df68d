"""Evaluation of a trained pair on data: per-datapoint ELBO, its terms and importance-sampled
log p(x) from one pass (:func:`pyrovae.inference.estimators.evaluate_terms`), with means,
standard errors and bits per dimension; classification and clustering from q(c | x)."""

from __future__ import annotations

import math
import time
from typing import Any, Iterable

import pyro
import torch

from pyrovae import hooks
from pyrovae.data.splits import EVAL_BINARIZATION_SEED, Split
from pyrovae.errors import ConfigError, ModelError, NonFiniteError
from pyrovae.inference import clusters, estimators, pairs
from pyrovae.inference.checks import as_split, check_inputs
from pyrovae.runtime import distributed, threads
from pyrovae.runtime.seeds import keeps_streams

CLASS_DRAWS = 16  #: binarizations of a dynamic split that q(c | x) is averaged over to classify


def class_report(model, guide, args: Iterable[tuple], labels: torch.Tensor) -> dict:
    """For each discrete site of the guide, on labelled data: the classification error of the
    model's label site (semi-supervised), the clustering accuracy (Hungarian) of the others;
    q(c | x) averaged over the argument tuples ``args`` (draws of the same datapoints)."""
    probs, draws = {}, 0
    for a in args:
        for site, p in clusters.discrete_probs(guide, *a).items():
            probs[site] = p if site not in probs else probs[site] + p
        draws += 1
    known = labels >= 0
    if not probs or not known.any():
        return {}
    out = {}
    for site, p in probs.items():
        p, y = p[known] / draws, labels[known]
        if site == hooks.label_site(model):
            error = clusters.classification_error(p, y)
            out["classification_error"] = {"site": site, **error, "binarizations": draws}
        else:
            out.setdefault("cluster_accuracy", {})[site] = clusters.cluster_accuracy(p, y)
    return out


def class_report_data(model, guide, data: Split, seed: int = 0, draws: int = CLASS_DRAWS) -> dict:
    """:func:`class_report` on ``data``; with dynamic pixels, q(c | x) averaged over ``draws``
    seeded binarizations, the class of the grey image under the model's pixel process rather
    than of one draw of it (Pyro's ss-vae example classifies the grey image itself)."""
    draws = draws if data.pixels == "dynamic" else 1
    args = (
        hooks.evaluation_inputs(model, data.observe_fixed(seed + EVAL_BINARIZATION_SEED + i), data.labels)
        for i in range(draws)
    )
    return class_report(model, guide, args, data.labels)


@keeps_streams
def evaluate_data(
    model,
    guide,
    x: torch.Tensor,
    *condition: torch.Tensor,
    images: Split | torch.Tensor | None = None,
    num_samples: int = 5000,
    seed: int = 0,
    compile: str = "auto",
    max_rows: int | None = None,
    bits_per_dim: bool | None = None,
    progress: bool | None = False,
    per_datapoint: bool = False,
    store=None,
) -> dict:
    """ELBO, reconstruction, KL and importance-sampled log p(x) of the datapoints ``x`` (for a
    conditional model, ``model(x, *condition)``: log p(x | condition), or log p(y | x) for a
    structured-output model) from one pass of K = ``num_samples`` samples each: mean and
    standard error over datapoints, in nats (and bits per observed dimension, ``bits_per_dim``:
    by default for a probability of unconditioned data), a sequence model's per time step too
    (:func:`summary`), with the importance ESS and the seconds taken (and with ``per_datapoint``
    the values themselves, on the CPU). The data (``images`` when the arguments are derived from
    images: best the Split they came from, whose pixel mode is then known) are checked first
    (:class:`~pyrovae.errors.DataError`); a non-finite result is a
    :class:`~pyrovae.errors.NonFiniteError`. Chunks hold ``max_rows`` particle-datapoint pairs
    (default: sized from free memory, see :func:`pyrovae.inference.chunks.chunk_rows`) and run
    through ``compile`` (see :mod:`pyrovae.runtime.compile`); on CPU, timing the chunks chooses the
    threads (:class:`pyrovae.runtime.threads.Tuner`, reported as ``threads``). Inside a
    torch.distributed process group each rank evaluates a contiguous part of the datapoints with
    its own draws, and every rank gets the gathered result. ``layout`` records whether the data
    ran whole (a pair with per-datapoint state, :func:`pyrovae.inference.pairs.whole_data`) or in
    chunks. ``progress`` shows a bar with an ETA over the chunks (rank 0). ``store`` keeps this
    rank's finished chunks (:func:`pyrovae.inference.chunks.fold_terms`): a pass started again
    with a store holding some continues from them, on the threads they were computed with."""
    args = check_inputs(model, guide, x, *condition, images=images, num_samples=num_samples)
    steps = hooks.sequence_steps(model, args)
    if bits_per_dim is None:  # a probability of the data themselves (a sequence's mask is no condition)
        discrete = hooks.likelihood_is_discrete(model, as_split(x if images is None else images).pixels)
        bits_per_dim = discrete and (not condition or steps is not None)
    rank, world = distributed.world()
    if world > x.shape[0]:
        raise ConfigError(f"{x.shape[0]} datapoints cannot be shared among {world} ranks")
    whole = pairs.per_datapoint_state(model, guide, args, {})
    if whole and world > 1:
        raise ModelError(f"the pair holds per-datapoint state ({whole}): evaluate it in one process")
    sizes = distributed.shard_sizes(x.shape[0], world)
    pyro.set_rng_seed(distributed.rank_seed(seed, rank))  # under torch.distributed: this rank's draws
    t0 = time.perf_counter()
    with pyro.validation_enabled(False), threads.Tuner(enabled=x.device.type == "cpu") as tuner:
        kept = None if store is None else store.load()
        if kept is not None and kept["threads"]:
            tuner.fix(kept["threads"])
        terms = estimators.evaluate_terms(
            model,
            guide,
            *(distributed.shard(a, rank, world) for a in args),
            num_samples=num_samples,
            compile=compile,
            max_rows=max_rows,
            progress=bool(progress) and rank == 0 and "evaluate",
            tuner=tuner,
            store=store,
        )
    terms = {k: distributed.gather_rows(v, sizes) for k, v in terms.items()}
    seconds = float(distributed.all_max(torch.tensor(time.perf_counter() - t0, device=x.device)))
    if not all(torch.isfinite(v).all() for v in terms.values()):
        raise NonFiniteError(
            "the evaluation gave non-finite values: the model or guide produces NaN or inf on "
            "these data (check their parameters, e.g. with pyrovae.training.loop.diagnose_nonfinite)"
        )
    out: dict[str, Any] = {"num_datapoints": x.shape[0], "num_samples": num_samples, "seconds": seconds}
    out["threads"] = tuner.threads  # the CPU threads its chunks ended with
    out["layout"] = "whole data" if whole else "chunks"  # per-datapoint state: never sliced
    out |= summary(terms, steps)
    out["discrete"] = bits_per_dim
    if per_datapoint:  # the values behind the means, on the CPU, one per datapoint
        out["per_datapoint"] = {k: v.detach().cpu() for k, v in terms.items()}
    dims = x[0].numel() if steps is None else steps.double().mean().item() * args[0].shape[-1]
    return out | (in_bits_per_dim(out, dims) if bits_per_dim else {})


def summary(terms: dict[str, torch.Tensor], steps: torch.Tensor | None = None) -> dict:
    """Mean and standard error of each per-datapoint term and the importance ESS; with the
    observed ``steps`` of each sequence, each term per time step as well
    (:func:`~pyrovae.inference.estimators.per_step_and_stderr`)."""
    keys = ("elbo", "reconstruction", "kl", "log_likelihood")
    out: dict[str, Any] = {
        k: dict(zip(("mean", "stderr"), estimators.mean_and_stderr(terms[k]))) for k in keys
    }
    out["ess"] = {"mean": terms["ess"].mean().item(), "min": terms["ess"].min().item()}
    if steps is not None:  # a sequence model: each term per observed time step
        per = {
            k: dict(zip(("mean", "stderr"), estimators.per_step_and_stderr(terms[k], steps))) for k in keys
        }
        out["per_step"] = {"steps": int(steps.sum()), **per}
    return out


def in_bits_per_dim(out: dict, dims: float) -> dict:
    """The ELBO and log p(x) of ``out`` in bits per dimension, -log2 p(x) / D (Salimans et al.
    2017, sec. 3; uniform over 256 levels is 8), D the observed dimensions per datapoint (for
    sequences, their mean: the ratio of totals)."""
    nats_per_bit_dim = dims * math.log(2.0)
    return {
        "elbo_bits_per_dim": -out["elbo"]["mean"] / nats_per_bit_dim,
        "log_likelihood_bits_per_dim": -out["log_likelihood"]["mean"] / nats_per_bit_dim,
        "log_likelihood_bits_per_dim_stderr": out["log_likelihood"]["stderr"] / nats_per_bit_dim,
    }
