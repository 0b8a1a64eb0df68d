"""Progress bars with an ETA for long calls (training, evaluation, diagnostics)."""

from __future__ import annotations

import contextlib
from typing import Iterator

from tqdm import tqdm  # the text bar everywhere (tqdm.auto needs ipywidgets in notebooks)


@contextlib.contextmanager
def bar(
    label: str, total: int, unit: str = "it", initial: int = 0, show: bool | None = True
) -> Iterator[tqdm]:
    """A tqdm bar on stderr named ``label``, with rate and ETA. ``show=False`` shows none (an
    inert bar); ``None`` shows it only on a terminal."""
    b = tqdm(
        total=total,
        initial=initial,
        desc=label,
        unit=unit,
        disable=None if show is None else not show,
        mininterval=1.0,
    )
    try:
        yield b
    finally:
        b.close()
