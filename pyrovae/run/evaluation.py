"""The evaluation of a trained run (run level): what ``pyrovae evaluate`` computes, returned,
not printed (:mod:`pyrovae.run.console` prints it). Every function reads one
:class:`~pyrovae.run.recipes.EvaluationData`, loaded once per command."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyro
import torch

from pyrovae import hooks
from pyrovae.diagnostics import refine
from pyrovae.diagnostics.importance import KHAT_BAD
from pyrovae.hooks import Takes
from pyrovae.inference import ais, bidirectional, estimators, weights
from pyrovae.inference.checks import check_inputs
from pyrovae.inference.scoring import class_report_data, evaluate_data
from pyrovae.run import tracking
from pyrovae.run.experiment import Run
from pyrovae.run.kept import KEEP_EVERY, KeptChunks, digest
from pyrovae.run.recipes import EvaluationData, evaluation_data
from pyrovae.runtime import distributed
from pyrovae.runtime.seeds import keeps_streams
from pyrovae.training import checkpoint as ckpt_io
from pyrovae.training import segments
from pyrovae.training.rundir import RunDir


def fingerprint(x: torch.Tensor) -> str:
    """A short SHA-256 of a tensor's values: equal for the same images, binarized the same way."""
    import hashlib

    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


@keeps_streams
def evaluate(
    run: Run,
    data: EvaluationData | None = None,
    *,
    split: str = "test",
    num_samples: int | None = None,
    seed: int | None = None,
    compile: str = "auto",
    max_rows: int | None = None,
    progress: bool | None = False,
    run_dir: str | Path | None = None,
    keep_every: float = KEEP_EVERY,
) -> dict:
    """Per-datapoint ELBO (with its reconstruction and KL terms) and importance-sampled log p(x)
    on the evaluation ``data`` (by default ``split`` of the run's dataset binarized at ``seed``):
    :func:`~pyrovae.inference.scoring.evaluate_data` with the per-datapoint values (under
    ``per_datapoint``), the run's description and, for discrete latents, the classification
    error or clustering accuracy. A guide with point-mass sites (a deterministic encoder) has
    no density, so neither ELBO nor importance sampling: then :func:`point_mass_report`. A
    guide whose every site is a point mass over discrete values (a VQ-VAE's nearest codes) has
    an exact ELBO, log p(x, c*), which importance sampling from it repeats for any K: it is
    computed once (K = 1) and reported as the bound it is (``bound_only``). ``seed`` seeds the
    draws (and, without ``data``, the binarization); by default the seed ``data`` was made with.
    With ``run_dir``, the finished chunks are kept there every ``keep_every`` seconds
    (:class:`~pyrovae.run.kept.KeptChunks`) and the same evaluation started again continues from
    them to the same values; ``segments`` then sums the wall and CPU time of every process."""
    data = evaluation_data(run.config, split, run.device, seed or 0) if data is None else data
    seed = data.seed if seed is None else seed
    args = data.inputs(run.model)
    masses = weights.guide_point_masses(run.model, run.guide, args)
    discrete = hooks.likelihood_is_discrete(run.model, run.config.data.pixels)
    hidden_labels = hooks.takes(run.model) == Takes.IMAGE_PARTIAL_LABEL
    out = {
        "split": data.name,
        "dataset": run.config.data.name,
        "pixels": run.config.data.pixels,
        "step": run.checkpoint["step"],
        "device": str(run.device),
        "images": fingerprint(args[0]),  # the observed pixels: runs with equal ones can be paired
    }
    if masses:
        return out | point_mass_report(run, data, masses)
    bound = weights.only_point_masses(run.model, run.guide, args)  # discrete codes: K = 1 is exact
    k = 1 if bound else num_samples or run.config.eval_samples
    store = None if run_dir is None else _store(run, run_dir, out, k, seed, compile, keep_every)
    if store is not None and store.load() is not None:
        out["resumed_from"] = store.load()["done"]
    out |= evaluate_data(
        run.model,
        run.guide,
        *args,
        images=data.split,
        num_samples=k,
        seed=seed,
        compile=compile,
        max_rows=max_rows,
        bits_per_dim=discrete
        and (len(args) == 1 + hidden_labels or hooks.sequence_steps(run.model, args) is not None),
        progress=progress,
        per_datapoint=True,
        store=store,
    )
    if store is not None and store.segments is not None:
        out["segments"] = segments.totals(segments.read_segments(store.segments.path))
    out |= class_report_data(run.model, run.guide, data.split, data.seed)
    return {**out, "discrete": discrete, "bound_only": bound}


def _store(run: Run, run_dir, out: dict, k: int, seed: int, compile: str, every: float) -> KeptChunks:
    """The kept chunks of this rank's pass in ``run_dir``, and on rank 0 the segment of this process
    (the segments start again with a pass that keeps nothing yet)."""
    rank, world = distributed.world()
    files = RunDir(run_dir)
    key = {"weights": digest(run.model, run.guide), "images": out["images"], "split": out["split"]}
    key |= {"num_samples": k, "seed": seed, "compile": compile, "rank": rank, "world": world}
    store = KeptChunks(files.kept(out["split"], rank if world > 1 else None), key, every)
    if rank == 0:
        store.segments = segments.Segments(files.evaluation_segments(out["split"]))
        if store.load() is None:
            store.segments.path.unlink(missing_ok=True)
        store.segments.open(run.device, resumed=store.load() is not None)
    return store


@keeps_streams
def point_mass_report(run: Run, data: EvaluationData, masses: list[str]) -> dict:
    """What a pair with point-mass guide sites ``masses`` has on ``data``: log p(x | z = mu(x))
    per datapoint (:func:`~pyrovae.inference.estimators.point_reconstruction`), mean and
    standard error, and by name what it cannot have (log p(x) needs AIS from the prior)."""
    args = check_inputs(run.model, run.guide, *data.inputs(run.model), images=data.split)
    torch.manual_seed(data.seed)
    start = time.perf_counter()
    with pyro.validation_enabled(False):
        rec = estimators.point_reconstruction(run.model, run.guide, *args)
    return {
        "num_datapoints": int(rec.shape[0]),
        "seconds": time.perf_counter() - start,
        "point_masses": masses,
        "reconstruction": _stats(rec),
        "unavailable": {
            k: f"needs the density of q(z|x); {masses} are point masses"
            for k in ("elbo", "kl", "log_likelihood", "importance ESS")
        },
        "per_datapoint": {"reconstruction": rec.detach().cpu()},
    }


@keeps_streams
def evaluate_refined(run: Run, data: EvaluationData, steps: int, *, num_samples=None, progress=False) -> dict:
    """log p(x), its standard error and the Pareto k-hat (mean, share above 0.7) by importance
    sampling from the guide and from proposals refined per datapoint by ``steps`` steps
    (:func:`pyrovae.diagnostics.refine.refined_log_likelihood`), with the seconds each took."""
    args = check_inputs(run.model, run.guide, *data.inputs(run.model), images=data.split)
    torch.manual_seed(data.seed)
    k = num_samples or run.config.eval_samples
    r = refine.refined_log_likelihood(
        run.model, run.guide, *args, steps=steps, num_samples=k, progress=progress
    )
    return {
        "steps": steps,
        "num_samples": k,
        "num_datapoints": int(r.log_likelihood.shape[0]),
        "amortized": _proposal(r.log_likelihood, r.k_hat, r.seconds),
        "refined": _proposal(r.refined_log_likelihood, r.refined_k_hat, r.refined_seconds),
        "per_datapoint": {"log_likelihood": r.refined_log_likelihood, "k_hat": r.refined_k_hat},
    }  # the likelihood's kind, whether or not bits/dim apply


def _proposal(log_likelihood, k_hat, seconds) -> dict:
    bad = float((k_hat > KHAT_BAD).double().mean())
    return {
        "log_likelihood": _stats(log_likelihood),
        "k_hat_mean": float(k_hat.mean()),
        "k_hat_bad": bad,
        "seconds": seconds,
    }


def _stats(values: torch.Tensor) -> dict:
    mean, stderr = estimators.mean_and_stderr(values.detach().double().cpu())
    return {"mean": mean, "stderr": stderr}


def _annealed(fn, run: Run, data: EvaluationData, args: tuple, initial, progress, **options):
    """(``fn``'s result, the initial density, seconds) of AIS or BDMC (``fn``) run on ``args`` on
    the data's seed, from ``initial``: by default the guide, or the prior when the guide has
    point-mass sites (no density to start from)."""
    if initial is None:
        initial = "prior" if weights.guide_point_masses(run.model, run.guide, args) else "guide"
    torch.manual_seed(data.seed)
    start = time.perf_counter()
    r = fn(run.model, run.guide, *args, initial=initial, progress=progress, **options)
    return r, initial, time.perf_counter() - start


@keeps_streams
def evaluate_ais(
    run: Run,
    data: EvaluationData,
    *,
    num_steps=1000,
    num_chains=16,
    initial=None,
    adapt_chains=4,
    compile="auto",
    progress=False,
) -> dict:
    """AIS log p(x) on the evaluation ``data`` (the datapoints and binarization :func:`evaluate`
    reads): mean and standard error over datapoints, the per-datapoint values, the mean
    per-datapoint Monte Carlo error, the acceptance rate and the seconds taken. The chains
    start from ``initial`` ("guide" or "prior"; by default the guide, or the prior when the
    guide has point-mass sites)."""
    args = check_inputs(run.model, run.guide, *data.inputs(run.model), images=data.split)
    options = dict(num_steps=num_steps, num_chains=num_chains, adapt_chains=adapt_chains, compile=compile)
    r, initial, seconds = _annealed(
        ais.ais_log_likelihood, run, data, args, initial, "AIS" if progress else False, **options
    )
    return {
        "log_likelihood": _stats(r.log_likelihood),
        "chain_stderr": float(r.stderr.mean()),
        "acceptance": float(r.acceptance.mean()),
        "acceptance_bands": [float(b) for b in r.acceptance_bands.mean(1)],
        "num_steps": num_steps,
        "num_chains": num_chains,
        "adapt_chains": adapt_chains,
        "initial": initial,
        "num_datapoints": int(r.log_likelihood.shape[0]),
        "seconds": seconds,
        "per_datapoint": {"log_likelihood": r.log_likelihood.detach().cpu()},
    }


@keeps_streams
def evaluate_bdmc(
    run: Run,
    data: EvaluationData,
    num_datapoints: int,
    *,
    num_steps=1000,
    num_chains=16,
    initial=None,
    adapt_chains=4,
    importance_samples=5000,
    compile="auto",
    progress=False,
) -> dict:
    """BDMC on ``num_datapoints`` datapoints simulated from the run's model (the first rows of
    ``data`` give the conditions and shapes): the lower and upper bounds, their gap and the
    importance-sampled estimate on the same data, each averaged (and per datapoint). For a
    guide with point-mass sites the chains start from the prior (unless ``initial`` says
    otherwise) and there is no importance-sampled estimate (``importance`` None)."""
    args = data.head(num_datapoints).inputs(run.model)
    options = dict(num_steps=num_steps, num_chains=num_chains, adapt_chains=adapt_chains, compile=compile)
    options["importance_samples"] = importance_samples
    r, initial, seconds = _annealed(
        bidirectional.bdmc, run, data, args, initial, "BDMC" if progress else False, **options
    )
    s = r.sandwich
    return {
        "lower": _stats(s.lower),
        "upper": _stats(s.upper),
        "gap": _stats(s.gap),
        "importance": None if r.importance is None else _stats(r.importance),
        "importance_samples": importance_samples,
        "num_steps": num_steps,
        "num_chains": num_chains,
        "adapt_chains": adapt_chains,
        "num_datapoints": int(s.lower.shape[0]),
        "seconds": seconds,
        "per_datapoint": {k: getattr(s, k).detach().cpu() for k in ("lower", "upper")}
        | ({} if r.importance is None else {"importance": r.importance.detach().cpu()}),
    }


def evaluate_run(
    run: Run,
    data: EvaluationData,
    *,
    num_samples: int | None = None,
    refine_steps: int | None = None,
    with_ais: bool = False,
    bdmc: int | None = None,
    annealing: dict | None = None,
    compile: str = "auto",
    progress: bool | None = False,
    run_dir: str | Path | None = None,
    keep_every: float = KEEP_EVERY,
) -> dict:
    """What ``pyrovae evaluate`` computes: :func:`evaluate` on every rank (its chunks kept in
    ``run_dir`` to resume from), then on the main rank
    the refined proposals (``refine_steps``, default the config's ``eval_refine``), AIS
    (``with_ais``) and BDMC on ``bdmc`` datapoints (both with the options ``annealing``), each under
    its name in the result."""
    out = evaluate(
        run,
        data,
        num_samples=num_samples,
        compile=compile,
        progress=progress,
        run_dir=run_dir,
        keep_every=keep_every,
    )
    if not distributed.is_main():
        return out
    steps = run.config.eval_refine if refine_steps is None else refine_steps
    if steps:
        out["refine"] = evaluate_refined(run, data, steps, num_samples=num_samples, progress=progress)
    if with_ais:
        out["ais"] = evaluate_ais(run, data, progress=progress, **(annealing or {}))
    if bdmc:
        out["bdmc"] = evaluate_bdmc(run, data, bdmc, progress=progress, **(annealing or {}))
    return out


def save_evaluation(run_dir: str | Path, split: str, out: dict) -> list[Path]:
    """Write an :func:`evaluate_run` result as ``eval_SPLIT.json`` and its per-datapoint values as
    ``eval_SPLIT.pt`` (both atomically), and log it to the run's MLflow run if it has one;
    returns the two paths."""
    files = RunDir(run_dir)
    out, values = dict(out), {}
    for k in ("ais", "bdmc", "refine"):
        if k in out:
            out[k] = dict(out[k])
            values[k] = out[k].pop("per_datapoint")
    values["is"] = out.pop("per_datapoint")
    ckpt_io.atomic_write_text(files.evaluation(split), json.dumps(out, indent=2) + "\n")
    ckpt_io.atomic_save(values, files.evaluation(split, values=True))
    for kept in files.path.glob(f"{files.kept(split).stem}*.pt"):  # every rank's: the pass is done
        kept.unlink()
    tracking.log_evaluation(run_dir, split, out, [files.evaluation(split)])  # with train.mlflow
    return [files.evaluation(split), files.evaluation(split, values=True)]
