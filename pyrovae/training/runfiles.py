"""What a training run writes: metrics rows, checkpoints, ``versions.json``, curves; and the
signals that stop it cleanly. Rank 0 alone writes; without a run directory nothing is written
(rows are still kept in memory and passed to the callbacks)."""

from __future__ import annotations

import json
import signal
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch

from pyrovae.errors import Interrupted
from pyrovae.training import checkpoint as ckpt_io
from pyrovae.training.guard import describe_checkpoint
from pyrovae.training.rundir import RunDir
from pyrovae.training.segments import Segments
from pyrovae.training.state import TrainState


class RunFiles:
    """The files of a run directory (or none, with ``run_dir=None``) for one :class:`TrainState`."""

    def __init__(
        self, run_dir: str | Path | None, state: TrainState, callbacks: Iterable[Callable] = (), keep: int = 3
    ):
        self.files = None if run_dir is None else RunDir(run_dir)
        self.state, self.callbacks, self.keep = state, list(callbacks), keep
        self.main = state.group.main
        self.metrics = None if self.files is None or not self.main else self.files.metrics
        self.rows: list[dict] = []
        self.last: Path | None = None  #: the newest checkpoint written or resumed from
        self.resumed_threads: int | None = None  #: the CPU threads the resumed checkpoint recorded
        self.segments = None if self.metrics is None else Segments(self.files.segments)

    @property
    def run_dir(self) -> Path | None:
        return None if self.files is None else self.files.path

    def start(self, resume: bool, seed: int, device: torch.device) -> None:
        """A fresh run (an empty metrics file, ``versions.json``) or the newest readable checkpoint's."""
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            state, self.last = ckpt_io.load_latest(self.run_dir, map_location=device)
            if self.last != self.files.checkpoint:
                warnings.warn(
                    f"{self.files.checkpoint} could not be read; resuming from {self.last} "
                    f"(step {state['step']})",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self.state.load_state_dict(state, seed=seed, source=str(self.last))
            self.resumed_threads = state.get("versions", {}).get("threads")
            if "metrics_rows" in state:  # rows written after that checkpoint are written again
                self._truncate(state["metrics_rows"])
        elif self.main:
            self._truncate(0)
            self.files.versions.write_text(json.dumps(ckpt_io.versions(), indent=2) + "\n")
            self.files.segments.unlink(missing_ok=True)
        if self.segments is not None:
            self.segments.open(device, resumed=resume, step_from=self.state.step, epoch_from=self.state.epoch)

    def _truncate(self, count: int) -> None:
        if self.metrics is not None:
            lines = (
                self.metrics.read_text().splitlines(keepends=True)[:count] if self.metrics.exists() else []
            )
            self.metrics.write_text("".join(lines))
        self.state.metrics_rows = count

    def write(self, row: dict) -> bool:
        """Record a metrics row; True when a callback asks to stop (by returning True)."""
        self.rows.append(row)
        self.state.metrics_rows += 1
        if self.metrics is not None:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(row) + "\n")
        return any([bool(cb(row)) for cb in self.callbacks])

    def save(self) -> None:
        """checkpoints/step-N.pt and checkpoint.pt (every rank takes part: the state gathers the ranks')."""
        if self.run_dir is None:
            return
        state = self.state.state_dict()
        if self.main:
            self.last = ckpt_io.save_step(state, self.run_dir, self.state.step, keep=self.keep)
            self.segments.update(step=self.state.step, epoch=self.state.epoch)
        else:
            self.last = self.files.step(self.state.step)

    def save_best(self) -> None:
        if self.run_dir is not None:
            state = self.state.state_dict()
            if self.main:
                ckpt_io.atomic_save(state, self.files.best)

    def interrupted(self, signum: int) -> Interrupted:
        """The error that ends a run stopped by a signal, once its checkpoint is saved."""
        return Interrupted(
            f"training stopped by {Signals.name(signum)} at step {self.state.step}; checkpoint "
            f"saved to {self.last}; continue with `pyrovae fit --resume {self.run_dir}`",
            signum,
        )

    def describe_last(self) -> str:
        return describe_checkpoint(self.run_dir, self.last)


class Signals:
    """While active (in the main thread), SIGINT and SIGTERM only set ``received``: the loop
    saves a checkpoint and stops at the end of the step."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self._old: dict[int, object] = {}

    @staticmethod
    def name(signum: int) -> str:
        return signal.Signals(signum).name

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> "Signals":
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl``."""
    path = RunDir(run_dir).metrics
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
