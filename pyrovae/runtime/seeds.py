"""The caller's random streams, left as they were: a library call that seeds (``fit``, the
evaluations and diagnostics that take a ``seed``) runs on streams of its own and gives Python's,
NumPy's and torch's (CPU and every CUDA device) back as it found them, so a user's
``torch.randn`` after ``pyrovae.fit(...)`` draws what it would have drawn without it."""

from __future__ import annotations

import functools
import random
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch


@contextmanager
def kept_streams() -> Iterator[None]:
    """Python's, NumPy's and torch's random states restored on leaving, however it is left."""
    state, np_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            random.setstate(state)
            np.random.set_state(np_state)


def keeps_streams(fn: Callable) -> Callable:
    """``fn`` run inside :func:`kept_streams`."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with kept_streams():
            return fn(*args, **kwargs)

    return wrapped


def rng_state() -> dict:
    """The random streams a seeded computation draws from: torch's (CPU and every CUDA device)
    and Python's, as plain data a checkpoint holds (``weights_only`` loads it)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Set the streams :func:`rng_state` recorded."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
