"""AIS and BDMC for a trained run (run level): what ``pyrovae evaluate --method ais`` and
``--bdmc N`` add beside the importance-sampled figure."""

from __future__ import annotations

import time

import torch

from . import estimators, hooks
from .checks import check_inputs
from .data import EVAL_BINARIZATION_SEED
from .experiment import load_data


def _stats(values: torch.Tensor) -> dict:
    mean, stderr = estimators.mean_and_stderr(values.detach().double().cpu())
    return {"mean": mean, "stderr": stderr}


def evaluate_ais(
    run,
    *,
    split="test",
    num_steps=1000,
    num_chains=16,
    initial="guide",
    seed=0,
    compile="auto",
    progress=False,
) -> dict:
    """AIS log p(x) on ``split`` (the binarization :func:`pyrovae.experiment.evaluate` uses):
    mean and standard error over datapoints, the mean per-datapoint Monte Carlo error, the
    acceptance rate and the seconds taken."""
    data = load_data(run.config, split, run.device)
    images = data.observe_fixed(seed + EVAL_BINARIZATION_SEED)
    args = check_inputs(
        run.model, run.guide, *hooks.evaluation_inputs(run.model, images, data.labels), images=images
    )
    torch.manual_seed(seed)
    start = time.perf_counter()
    r = estimators.ais_log_likelihood(
        run.model, run.guide, *args, num_steps=num_steps, num_chains=num_chains, initial=initial,
        compile=compile, progress="AIS" if progress else False,
    )  # fmt: skip
    return {
        "log_likelihood": _stats(r.log_likelihood),
        "chain_stderr": float(r.stderr.mean()),
        "acceptance": float(r.acceptance.mean()),
        "num_steps": num_steps,
        "num_chains": num_chains,
        "initial": initial,
        "num_datapoints": int(r.log_likelihood.shape[0]),
        "seconds": time.perf_counter() - start,
    }


def evaluate_bdmc(
    run,
    num_datapoints: int,
    *,
    num_steps=1000,
    num_chains=16,
    initial="guide",
    importance_samples=5000,
    seed=0,
    compile="auto",
    progress=False,
) -> dict:
    """BDMC on ``num_datapoints`` datapoints simulated from the run's model: the lower and upper
    bounds, their gap and the importance-sampled estimate on the same data, each averaged."""
    data = load_data(run.config, "test", run.device)
    images = data.observe_fixed(seed + EVAL_BINARIZATION_SEED)[:num_datapoints]
    x, *condition = hooks.evaluation_inputs(run.model, images, data.labels[:num_datapoints])
    torch.manual_seed(seed)
    start = time.perf_counter()
    r = estimators.bdmc(
        run.model, run.guide, x, *condition, num_steps=num_steps, num_chains=num_chains, initial=initial,
        importance_samples=importance_samples, compile=compile, progress="BDMC" if progress else False,
    )  # fmt: skip
    s = r.sandwich
    return {
        "lower": _stats(s.lower),
        "upper": _stats(s.upper),
        "gap": _stats(s.gap),
        "importance": _stats(r.importance),
        "importance_samples": importance_samples,
        "num_steps": num_steps,
        "num_chains": num_chains,
        "num_datapoints": int(s.lower.shape[0]),
        "seconds": time.perf_counter() - start,
    }


def _fmt(s: dict) -> str:
    return f"{s['mean']:.2f} +- {s['stderr']:.2f}"


def report(run, args, out: dict) -> None:
    """Add the AIS (``--method ais``) and BDMC (``--bdmc N``) figures to ``out`` and print them."""
    if args.method == "ais":
        a = out["ais"] = evaluate_ais(
            run, split=args.split, num_steps=args.steps, num_chains=args.chains, seed=args.seed,
            compile=args.compile, progress=not args.no_progress,
        )  # fmt: skip
        print(
            f"  AIS log p(x)    {_fmt(a['log_likelihood'])}   T = {a['num_steps']}, S = {a['num_chains']} "
            f"chains from q(z|x), acceptance {a['acceptance']:.2f}, {a['seconds']:.1f} s (Neal 2001)"
        )
    if args.bdmc:
        b = out["bdmc"] = evaluate_bdmc(
            run,
            args.bdmc,
            num_steps=args.steps,
            num_chains=args.chains,
            seed=args.seed,
            compile=args.compile,
            progress=not args.no_progress,
        )
        print(
            f"  BDMC on {b['num_datapoints']} datapoints simulated from the model, "
            f"T = {b['num_steps']}, {b['seconds']:.1f} s:"
        )
        for key, what in (("lower", "forward AIS"), ("upper", "reverse AIS"), ("gap", "upper - lower")):
            print(f"    {key:<14}{_fmt(b[key])}   {what}")
        print(f"    importance    {_fmt(b['importance'])}   K = {b['importance_samples']}, on the same data")
