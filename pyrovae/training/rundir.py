"""The run directory: every file a run holds, named in one place.

Training writes ``metrics.jsonl``, ``versions.json``, ``segments.jsonl``, ``checkpoints/step-N.pt``,
``checkpoint.pt`` (the newest) and ``best.pt`` (the best validation figure); ``pyrovae fit``
adds ``config.json``, ``curves.png`` and ``tensorboard/``; ``evaluate`` writes
``eval_SPLIT.json`` (and the per-datapoint values in ``eval_SPLIT.pt``; while it runs, its
finished chunks in ``eval_SPLIT.kept.pt`` and its processes' times in
``eval_SPLIT.segments.jsonl``), ``diagnose`` the
``diagnostics.*`` files and ``khat_gap.png``; the figures are ``samples.png``,
``reconstructions.png``, ``latent.png``, ``manifold.png`` and ``completions.png``.
"""

from __future__ import annotations

import os
from pathlib import Path

FIGURES = ("samples", "reconstructions", "latent", "manifold", "completions")


class RunDir:
    """The files of the run directory at ``path`` (nothing is created or read here)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config = property(lambda self: self.path / "config.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    resumes = property(lambda self: self.path / "resumes.jsonl")  #: one line per `fit --resume`
    #: one line per process that trained the run: its wall and CPU seconds (:mod:`pyrovae.training.segments`)
    segments = property(lambda self: self.path / "segments.jsonl")
    versions = property(lambda self: self.path / "versions.json")
    curves = property(lambda self: self.path / "curves.png")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")  #: the newest checkpoint
    best = property(lambda self: self.path / "best.pt")  #: the best by validation ELBO (or error)
    history = property(lambda self: self.path / "checkpoints")  #: the last few step checkpoints
    tensorboard = property(lambda self: self.path / "tensorboard")
    diagnostics_table = property(lambda self: self.path / "diagnostics.csv")
    diagnostics_summary = property(lambda self: self.path / "diagnostics.json")
    khat_gap = property(lambda self: self.path / "khat_gap.png")

    def step(self, step: int) -> Path:
        """The checkpoint of ``step`` in :attr:`history`."""
        return self.history / f"step-{step:08d}.pt"

    def steps(self) -> list[Path]:
        """The step checkpoints present, oldest first."""
        return sorted(self.history.glob("step-*.pt"))

    def has_checkpoint(self) -> bool:
        return self.checkpoint.exists() or bool(self.steps())

    def evaluation(self, split: str, values: bool = False) -> Path:
        """``eval_SPLIT.json`` (the summary) or, with ``values``, ``eval_SPLIT.pt`` (per datapoint)."""
        return self.path / f"eval_{split}.{'pt' if values else 'json'}"

    def kept(self, split: str, rank: int | None = None) -> Path:
        """``eval_SPLIT.kept.pt`` (``eval_SPLIT.kept-rankR.pt`` under torchrun): the finished chunks
        of an evaluation in progress, removed once ``eval_SPLIT.json`` is written."""
        return self.path / f"eval_{split}.kept{'' if rank is None else f'-rank{rank}'}.pt"

    def evaluation_segments(self, split: str) -> Path:
        """``eval_SPLIT.segments.jsonl``: the wall and CPU time of each process that evaluated."""
        return self.path / f"eval_{split}.segments.jsonl"

    def figure(self, name: str) -> Path:
        """One of :data:`FIGURES`, as PNG."""
        if name not in FIGURES:
            raise ValueError(f"unknown figure {name!r}; known: {', '.join(FIGURES)}")
        return self.path / f"{name}.png"
