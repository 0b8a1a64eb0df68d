"""Atomic, self-describing checkpoints that load without running code."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from pyrovae.errors import CheckpointError
from pyrovae.runtime.threads import available_cpus
from pyrovae.training.rundir import RunDir

FORMAT = 1


def _atomically(path: str | os.PathLike, write) -> None:
    """``write(file)`` to a temporary file, fsync, then rename over ``path``: a crash never leaves
    a torn file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to ``path`` atomically (:func:`_atomically`)."""
    _atomically(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically, as a checkpoint is written."""
    _atomically(path, lambda f: f.write(text.encode()))


def save_step(obj: Any, run_dir: Path, step: int, keep: int = 3) -> Path:
    """Write ``run_dir/checkpoints/step-NNNNNNNN.pt`` atomically, point ``run_dir/checkpoint.pt``
    at it (an atomic hard-link swap; a copy where links are unsupported) and keep the last
    ``keep`` step checkpoints."""
    files = RunDir(run_dir)
    files.history.mkdir(parents=True, exist_ok=True)
    path = files.step(step)
    atomic_save(obj, path)
    latest, tmp = files.checkpoint, run_dir / ".checkpoint.pt.link"
    try:
        if tmp.exists():
            tmp.unlink()
        os.link(path, tmp)
        os.replace(tmp, latest)
        _fsync_dir(run_dir)
    except OSError:
        atomic_save(obj, latest)
    for old in files.steps()[: -max(1, keep)]:
        old.unlink()
    return path


def load_latest(run_dir: str | os.PathLike, map_location=None) -> tuple[dict, Path]:
    """The newest readable checkpoint of a run: ``checkpoint.pt``, else the step checkpoints
    newest first. Raises the error of ``checkpoint.pt`` when none can be read."""
    files = RunDir(run_dir)
    candidates = [files.checkpoint, *reversed(files.steps())]
    first_error = None
    for path in candidates:
        try:
            return load(path, map_location=map_location), path
        except CheckpointError as e:
            first_error = first_error or e
    raise first_error


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | os.PathLike, map_location=None) -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain data only; nothing is executed)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; train first with `pyrovae fit`")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0]  # torch's advice is not ours
        raise CheckpointError(
            f"{path} is not a readable pyrovae checkpoint ({type(e).__name__}: {first}); "
            "it may be truncated or not a checkpoint at all: use another one from the run "
            "directory, or retrain"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pyrovae checkpoint of format {FORMAT}")
    return ckpt


def versions() -> dict:
    """Versions of Python, torch, pyro and the git commit of the working directory, with torch's CPU
    threads and the CPUs this process may use, for the run record."""
    import pyro

    out = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "pyro": str(pyro.__version__),
        "threads": torch.get_num_threads(),  # CPU threads the run computed with
        "cpus_available": available_cpus(),  # by affinity and cgroup quota (pyrovae.runtime.threads)
    }
    try:
        out["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).parent,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = "unknown"
    return out
