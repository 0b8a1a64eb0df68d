"""Where a sweep's runs train: the standard library's process pool on this machine, or a Ray
cluster (a local head started by ``ray start --head``, or any cluster by address).

Ray is the engine for many machines because it needs no scheduler of its own: a researcher
starts a head and workers (``ray start``), or points at an existing cluster, and each run is one
task asking for its CPU threads (and a GPU, or a share of one); Ray places it where they are
free, and its local mode runs the same code on one machine. Either way one function,
:func:`run_point`, trains a run into its ordinary run directory, resuming it from its checkpoint
when it has one, and evaluates it; the sweep (:mod:`pyrovae.run.sweep`) records what each
returned. On this machine the CPUs :func:`pyrovae.runtime.threads.available_cpus` finds are
split among the workers (workers x threads never exceed them), and with GPUs each worker has
one (worker i the GPU i mod the count).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import math
import multiprocessing
import os
import signal
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pyrovae.errors import ConfigError, Interrupted
from pyrovae.run import evaluation, experiment, tracking
from pyrovae.run.config import config_from_dict
from pyrovae.run.recipes import evaluation_data
from pyrovae.runtime import threads
from pyrovae.runtime.devices import resolve_device
from pyrovae.training.rundir import RunDir

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Workers:
    """How a sweep runs: ``workers`` runs at a time with ``threads`` CPU threads each, on
    ``gpus`` GPUs (0: the CPU), through ``backend`` (at Ray's ``address`` if given)."""

    workers: int
    threads: int
    gpus: int = 0
    backend: str = "local"
    address: str | None = None

    def device(self, slot: int) -> str:
        return f"cuda:{slot % self.gpus}" if self.gpus else "cpu"


def split_cpus(
    runs: int, workers: int | None, threads: int | None, cpus: float, gpus: int = 0, backend: str = "local"
) -> Workers:
    """Workers and threads for ``runs`` runs on ``cpus`` CPUs and ``gpus`` GPUs: by default one
    worker per GPU, or on CPUs as many workers as whole CPUs (at most one per run), each with an
    equal share of threads; refused in one line when workers x threads exceed the CPUs."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: use one of {', '.join(BACKENDS)}")
    whole = max(1, math.floor(cpus))
    if workers is None:
        workers = max(1, min(runs, gpus or (whole // threads if threads else whole)))
    if workers < 1 or (threads is not None and threads < 1):
        raise ConfigError("--workers and --threads take whole numbers >= 1")
    threads = threads or max(1, whole // workers)
    if backend == "local" and workers * threads > whole:
        raise ConfigError(
            f"{workers} workers x {threads} thread{'s' * (threads > 1)} exceed the {cpus:g} CPUs this "
            "process may use; "
            f"lower --workers or --threads (at most {whole} in all)"
        )
    return Workers(workers, threads, gpus, backend)


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the sweep that started it dies, so that a killed sweep's
    runs checkpoint and stop (Signals in pyrovae.training.runfiles) rather than run on unseen."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def _held(run_dir: Path):
    """An exclusive lock on ``run_dir/.lock`` while a run trains (released if the process dies)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{run_dir} is being trained by another process; wait for it or stop it")
        yield


def is_running(run_dir: Path) -> bool:
    """Whether a process holds ``run_dir``'s lock now."""
    if not (run_dir / ".lock").exists():
        return False
    with open(run_dir / ".lock") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


@contextlib.contextmanager
def _logged(path: Path):
    """stdout and stderr of the block appended to ``path`` (a run's ``sweep.log``)."""
    with open(path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield


def run_point(task: dict) -> dict:
    """Train the run ``task["config"]`` describes (resuming it from its checkpoint when it has
    one, unless ``task["trained"]``), then with ``task["evaluate"]`` evaluate its test split.
    Returns the outcome: state (trained, evaluated, stopped or failed), seconds and the error."""
    _die_with_parent()
    config = config_from_dict(task["config"])
    files, start = RunDir(config.run_dir), time.perf_counter()
    device = resolve_device(task.get("device") or config.device)
    outcome = {"state": "trained" if task.get("trained") else "failed"}
    try:
        with _held(files.path), _logged(files.path / "sweep.log"):
            threads.configure(task["threads"])
            if not task.get("trained"):
                resume = files.has_checkpoint()
                if resume:
                    experiment.record_resume(config)
                experiment.fit_config(config, resume=resume, progress=False, device=device)
                figures = experiment.draw_figures(experiment.load_run(files.path, device=device), files.path)
                tracking.log_fitted(files.path, figures)  # with train.mlflow
                outcome["state"] = "trained"
            if task.get("evaluate"):
                run = experiment.load_run(files.path, device=device)
                data = evaluation_data(run.config, "test", run.device, 0)
                out = evaluation.evaluate_run(
                    run, data, num_samples=task.get("eval_samples"), run_dir=files.path
                )
                evaluation.save_evaluation(files.path, "test", out)
                outcome["state"] = "evaluated"
    except Interrupted as e:
        outcome |= {"state": "stopped", "error": str(e)}
    except Exception as e:  # one run's failure is recorded; the sweep goes on with the others
        outcome["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        with contextlib.suppress(OSError), open(files.path / "sweep.log", "a") as log:
            traceback.print_exc(file=log)
    return outcome | {"seconds": round(time.perf_counter() - start, 2)}


def run_local(tasks: list[dict], how: Workers, done: Callable[[dict, dict], None]) -> None:
    """Run ``tasks`` in a pool of ``how.workers`` processes (spawned: no state is shared with
    this one), each task on its worker's device; ``done(task, outcome)`` as each finishes."""
    context = multiprocessing.get_context("spawn")
    free, queue = list(range(how.workers)), list(tasks)
    with ProcessPoolExecutor(max_workers=how.workers, mp_context=context) as pool:
        running = {}
        while queue or running:
            while queue and free:
                slot = free.pop(0)
                task = queue.pop(0) | {"device": how.device(slot), "threads": how.threads}
                running[pool.submit(run_point, task)] = (task, slot)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                task, slot = running.pop(future)
                free.append(slot)
                done(task, future.result())


def run_ray(tasks: list[dict], how: Workers, done: Callable[[dict, dict], None]) -> None:
    """Run ``tasks`` as Ray tasks (each asking for ``how.threads`` CPUs and, with GPUs, an equal
    share of one per worker): on the cluster at ``how.address``, else on a local Ray started here."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError('--backend ray needs Ray: pip install "pyrovae[ray]"') from e
    env = {k: os.environ[k] for k in ("PYROVAE_DATA", "MPLBACKEND") if k in os.environ}
    ray.init(
        address=how.address,
        num_cpus=None if how.address else how.workers * how.threads,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    try:
        gpu = how.gpus / how.workers if how.gpus else 0
        remote = ray.remote(run_point).options(num_cpus=how.threads, num_gpus=gpu, max_retries=0)
        device = "cuda" if gpu else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES for each task
        pending = {remote.remote(t | {"device": device, "threads": how.threads}): t for t in tasks}
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1)
            for ref in finished:
                done(pending.pop(ref), ray.get(ref))
    finally:
        ray.shutdown()


def run_all(tasks: list[dict], how: Workers, done: Callable[[dict, dict], None]) -> None:
    """:func:`run_ray` or :func:`run_local`, as ``how.backend`` says."""
    (run_ray if how.backend == "ray" else run_local)(tasks, how, done)
