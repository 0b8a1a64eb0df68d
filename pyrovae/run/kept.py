"""The finished chunks of an evaluation kept on disk, so that a K = 5000 evaluation of hours
resumes as training does (``pyrovae evaluate`` started again continues where it stopped)."""

from __future__ import annotations

import hashlib
import time
import warnings
from pathlib import Path

import torch

from pyrovae.runtime.seeds import rng_state
from pyrovae.training import checkpoint as ckpt_io
from pyrovae.training.segments import Segments

KEEP_EVERY = 30.0  #: seconds between two writes of the finished chunks


def digest(*modules: torch.nn.Module) -> str:
    """A short SHA-256 of the modules' parameters and buffers: equal for the same weights."""
    h = hashlib.sha256()
    for m in modules:
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class KeptChunks:
    """The finished data chunks of one importance-sampling pass
    (:func:`pyrovae.inference.chunks.fold_terms`) in the file ``path``: the per-datapoint sums so
    far, how many datapoints they cover, the chunk sizes, the CPU threads and the random streams
    at that point, under ``key`` (what the pass evaluates: weights, images, K, seed, capture,
    ranks). A file under another key belongs to another pass and is replaced. Written
    atomically at most every ``every`` seconds and when the pass ends; each write also records
    this process's wall and CPU time in ``segments``."""

    def __init__(
        self, path: str | Path, key: dict, every: float = KEEP_EVERY, segments: Segments | None = None
    ):
        self.path, self.key, self.every, self.segments = Path(path), key, every, segments
        self._kept: dict | None = None
        self._loaded = False
        self._last = time.perf_counter()

    def load(self) -> dict | None:
        """What the file keeps for this pass (None: nothing, or another pass's); read once."""
        if not self._loaded:
            self._loaded, self._kept = True, self._read()
        return self._kept

    def _read(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            kept = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            warnings.warn(f"{self.path} could not be read ({type(e).__name__}); evaluating from the start")
            return None
        return kept if isinstance(kept, dict) and kept.get("key") == self.key else None

    def save(self, done: int, out: torch.Tensor, particle_chunk: int, data_chunk: int, threads) -> None:
        """Keep the sums of the first ``done`` datapoints (of ``out``'s columns); called after each
        finished data chunk, before the next draws."""
        now = time.perf_counter()
        if now - self._last < self.every and done < out.shape[1]:
            return
        self._last = now
        kept = {
            "key": self.key,
            "done": done,
            "out": out.detach().cpu().clone(),
            "particle_chunk": particle_chunk,
            "data_chunk": data_chunk,
            "threads": threads,
            "streams": rng_state(),
        }
        ckpt_io.atomic_save(kept, self.path)
        if self.segments is not None:
            self.segments.update(done=done, of=int(out.shape[1]))
