"""Chunked evaluation of the log-weight core, in memory bounded by the chunk.

K particles for each of N datapoints are evaluated ``max_rows`` particle-datapoint pairs at
a time: :func:`map_terms` keeps a (K, N, ...) result, :func:`fold_terms` reduces each data
chunk to per-datapoint summaries as it goes (memory O(N), not O(K N)). Chunk sizes come
from the free memory and a measured bound on the bytes one pair needs. A guide sized for
all N datapoints (a table of one row per datapoint, an exact posterior computed once) cannot
run on a slice of the data: it is found (:func:`pyrovae.inference.pairs.whole_data`) and chunked
over particles only.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from typing import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pyrovae.hooks import auto_compile, owner_modules, trim_steps
from pyrovae.inference import weights
from pyrovae.inference.pairs import check_pair, whole_data
from pyrovae.inference.particles import decide
from pyrovae.inference.plates import data_size, slice_args
from pyrovae.inference.weights import (
    LogProbTerms,
    cuda_devices,
    plate_nesting,
    traces,
)
from pyrovae.runtime.compile import Compiled
from pyrovae.runtime.progress import bar
from pyrovae.runtime.seeds import set_rng_state
from pyrovae.runtime.threads import Tuner


def spans(total: int, size: int, first: int = 0):
    for start in range(first, total, size):
        yield start, min(size, total - start)


MEMORY_FRACTION = 0.25  #: share of the free memory one chunk may use
CPU_ROWS = 4096  #: on CPU, chunks of this many pairs stay in cache and run fastest (benchmarks/eval_speed.py)
MAX_ROWS = 1 << 22  #: no chunk is larger, whatever the free memory
#: compile = "auto" captures an evaluation of at least this many chunks, fewer run eagerly: on CPU
#: a capture of the default VAE's chunk costs 0.21 s and saves 0.25 ms a chunk, paying from about
#: 870 chunks (``benchmarks/capture_cost.py``, benchmarks/RESULTS.md)
AUTO_CAPTURE_CHUNKS = 1000


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: ``cudaMemGetInfo`` on CUDA, MemAvailable on Linux, else free pages."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class _CountBytes(TorchDispatchMode):
    """Sum of the bytes of every tensor the ops produce: an upper bound on the memory they need."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.total += sum(
            t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor)
        )
        return out


def bytes_per_row(
    model: Callable,
    guide: Callable,
    args,
    kwargs,
    probe: int = 16,
    whole: bool | None = None,
    enumerated: bool = True,
) -> float:
    """Memory one particle-datapoint pair needs, measured on a probe of ``probe`` particles of
    one datapoint (every intermediate counted as if kept: a bound, not an average). A program
    that only runs on all its datapoints at once (``whole``; found by
    :func:`pyrovae.inference.pairs.whole_data` when None) is probed on them with one particle."""
    n = data_size(args, kwargs)
    if whole is None:
        whole = whole_data(model, guide, args, kwargs)
    with torch.random.fork_rng(devices=cuda_devices(args, kwargs)), torch.no_grad():
        a, k = slice_args(args, kwargs, n, 0, 1)
        if whole:
            a, k, probe = args, kwargs, 1
        nesting = plate_nesting(model, guide, a, k)
        rows = probe * data_size(a, k)
        dense = not weights.guide_point_masses(model, guide, a, k)  # a point mass has no log q to take
        with _CountBytes() as count:
            if dense:
                weights.log_prob_terms(
                    model, guide, *a, num_samples=probe, max_plate_nesting=nesting, enumerated=enumerated, **k
                )
            else:
                traces(model, guide, a, k, probe, nesting, enumerated)
    return count.total / rows


def chunk_rows(device: torch.device, row_bytes: float, fraction: float = MEMORY_FRACTION) -> int:
    """Particle-datapoint pairs per chunk: as many as ``fraction`` of the free memory holds,
    at most :data:`MAX_ROWS`, and on CPU at most :data:`CPU_ROWS` (cache-sized chunks are faster)."""
    rows = int(free_memory(device) * fraction / max(row_bytes, 1.0))
    if device.type == "cpu":
        rows = min(rows, CPU_ROWS)
    return max(1, min(rows, MAX_ROWS))


def chunk_sizes(
    model,
    guide,
    args,
    kwargs,
    num_samples,
    particle_chunk=None,
    data_chunk=None,
    max_rows=None,
    enumerated=True,
):
    """(particle chunk, data chunk): at most ``max_rows`` pairs (default: sized from the free
    memory), equal particle chunks, and the whole data at once for a pair that needs it
    (:func:`pyrovae.inference.pairs.whole_data`); the pair is checked first
    (:func:`pyrovae.inference.pairs.check_pair`)."""
    n = data_size(args, kwargs)
    whole = whole_data(model, guide, args, kwargs)
    check_pair(model, guide, args, kwargs, whole=whole)
    if num_samples > 1:  # under a particle plate, or on repeated data (decided once per pair)
        decide(model, guide, args, kwargs)
    if max_rows is None and not (particle_chunk and data_chunk):
        device = next(t.device for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor))
        row = bytes_per_row(model, guide, args, kwargs, min(16, num_samples), whole, enumerated)
        max_rows = chunk_rows(device, row)
    max_rows = max_rows or particle_chunk * data_chunk
    if not particle_chunk:  # equal particle chunks: 5000 in 2 x 2500, not 4096 + 904
        particle_chunk = math.ceil(num_samples / math.ceil(num_samples / max_rows))
    data_chunk = data_chunk or max(1, max_rows // particle_chunk)
    if whole and data_chunk < n:
        data_chunk = n
        particle_chunk = max(1, min(particle_chunk, max_rows // n))
    return particle_chunk, data_chunk


def _chunk_fn(model, guide, kk, nesting, reduce, reduce_traces, compile, args, kwargs, enumerated):
    """The function of one chunk shape (k particles), captured unless ``compile = "none"``."""

    def fn(*a, **k):
        if reduce_traces is not None:
            return reduce_traces(*traces(model, guide, a, k, kk, nesting, enumerated), kk)
        return reduce(
            weights.log_prob_terms(
                model, guide, *a, num_samples=kk, max_plate_nesting=nesting, enumerated=enumerated, **k
            )
        )

    tensors_only = not kwargs and all(isinstance(t, torch.Tensor) for t in args)
    if compile == "none" or reduce_traces is not None or not tensors_only:
        return fn
    return Compiled(fn, owner_modules(model, guide), compile, grad=False)


def pieces(
    model,
    guide,
    args,
    kwargs,
    num_samples,
    *,
    reduce=None,
    reduce_traces=None,
    particle_chunk=None,
    data_chunk=None,
    max_rows=None,
    compile="auto",
    progress=None,
    enumerated=True,
    tuner=None,
    start_at=0,
    streams=None,
) -> Iterator:
    """Yield ``(data start, data size, particle start, k, piece)`` over all chunks, ``piece``
    being ``reduce(terms)`` (or ``reduce_traces(guide_trace, model_trace, particle_dim, k)``)
    of k particles of those datapoints; ``progress`` (a label) shows a bar with an ETA;
    ``enumerated`` sums out the sites marked for enumeration (else they are sampled); ``compile``
    "auto" captures from :data:`AUTO_CAPTURE_CHUNKS` chunks on; a
    :class:`pyrovae.runtime.threads.Tuner` times each chunk to choose the CPU threads (without
    one, a Tuner of its own does on CPU, and torch's threads are restored when the chunks end;
    ``PYROVAE_TUNE_THREADS=0`` or ``torch.set_num_threads`` through
    :func:`pyrovae.runtime.threads.configure` keeps them fixed). A pass resumed from the data
    chunk at datapoint ``start_at`` sets the random ``streams`` recorded there
    (:func:`pyrovae.runtime.seeds.rng_state`) before its first chunk."""
    n = data_size(args, kwargs)
    pc, dc = chunk_sizes(
        model, guide, args, kwargs, num_samples, particle_chunk, data_chunk, max_rows, enumerated
    )
    nesting, fns = None, {}  # one function per chunk shape (at most two particle counts)
    label = progress if isinstance(progress, str) else "evaluate"
    total = math.ceil(n / dc) * math.ceil(num_samples / pc)
    compile = auto_compile(model, compile)
    if compile == "auto" and total < AUTO_CAPTURE_CHUNKS:
        compile = "none"
    device = next(t.device for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor))
    own = tuner is None  # called from Python: threads timed as `pyrovae evaluate` times them
    tuner = Tuner(enabled=device.type == "cpu") if own else tuner
    if compile == "none":
        tuner.warm = 0  # an eager chunk has nothing to capture: the first one is timed too
    done = (start_at // dc) * math.ceil(num_samples / pc)
    if streams is not None:
        set_rng_state(streams)
    with tuner if own else nullcontext(), bar(label, total, "chunk", done, show=bool(progress)) as b:
        for start, size in spans(n, dc, start_at):
            a, k = slice_args(args, kwargs, n, start, start + size)
            a = trim_steps(model, a)  # sequences: this chunk's longest
            if nesting is None:
                nesting = plate_nesting(model, guide, a, k)
            for p_start, kk in spans(num_samples, pc):
                if kk not in fns:
                    fns[kk] = _chunk_fn(
                        model, guide, kk, nesting, reduce, reduce_traces, compile, args, kwargs, enumerated
                    )
                with tuner.unit(kk * size):
                    piece = fns[kk](*a, **k)
                yield start, size, p_start, kk, piece
                b.update(1)


def map_terms(
    model: Callable, guide: Callable, *args, num_samples: int = 1, reduce=None, **options
) -> torch.Tensor:
    """``reduce`` of the :class:`LogProbTerms` of every particle and datapoint, as (K, N, ...).

    ``reduce`` maps terms of shape (k, n) to a tensor of shape (k, n, ...). Options of
    :func:`pieces`: ``particle_chunk``, ``data_chunk``, ``max_rows`` (pairs per chunk;
    default :func:`chunk_rows` of the measured :func:`bytes_per_row`), ``compile`` (each chunk
    shape through :class:`pyrovae.runtime.compile.Compiled`; positional tensor arguments only; default
    "auto", as ``pyrovae evaluate``: captured from :data:`AUTO_CAPTURE_CHUNKS` chunks on),
    ``tuner`` (a :class:`pyrovae.runtime.threads.Tuner` choosing the CPU threads),
    ``reduce_traces(guide_trace, model_trace, particle_dim, k)`` for consumers of the site
    values themselves (eager), ``progress``, ``enumerated`` (default True: sites marked
    ``infer={"enumerate": "parallel"}`` are summed out exactly, :mod:`pyrovae.inference.enumeration`;
    False samples them); other keywords go to model and guide.
    """
    kwargs = {k: options.pop(k) for k in list(options) if k not in _OPTIONS}
    n = data_size(args, kwargs)
    # one preallocated result: many small kept pieces between large short-lived chunk
    # temporaries fragment the CPU heap, and its resident size then grows with N
    out = None
    for start, size, p_start, kk, piece in pieces(
        model, guide, args, kwargs, num_samples, reduce=reduce, **options
    ):
        if out is None:
            out = piece.new_empty((num_samples, n, *piece.shape[2:]))
        out[p_start : p_start + kk, start : start + size] = piece
    return out


def fold_terms(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1,
    stats: Callable[[LogProbTerms], torch.Tensor],
    combine: Callable,
    **options,
) -> torch.Tensor:
    """Per-datapoint summaries over all K particles without keeping them: ``stats(terms)`` maps
    the terms of k particles to (m, n); ``combine(a, b)`` merges the summaries of two particle
    chunks (sums add, log-sum-exps ``logaddexp``). Returns (m, N); memory O(m N) whatever K.
    Options as :func:`map_terms`, and ``store``: where the finished data chunks are kept
    (``load() -> dict | None`` and ``save(done, out, particle_chunk, data_chunk, threads)``;
    :class:`pyrovae.run.kept.KeptChunks` keeps them in a file), so that a pass stopped anywhere
    continues from its last kept chunk with the same chunks and random streams, to the same
    values bit for bit."""
    store = options.pop("store", None)
    kwargs = {k: options.pop(k) for k in list(options) if k not in _OPTIONS}
    n = data_size(args, kwargs)
    out, acc, kept = None, None, None if store is None else store.load()
    if kept is not None:
        out = kept["out"].to(next(t.device for t in args if isinstance(t, torch.Tensor)))
        sizes = {"particle_chunk": kept["particle_chunk"], "data_chunk": kept["data_chunk"]}
        options |= sizes | {"start_at": kept["done"], "streams": kept["streams"]}
    pc, dc = options.get("particle_chunk"), options.get("data_chunk")
    for start, size, p_start, kk, piece in pieces(
        model, guide, args, kwargs, num_samples, reduce=stats, **options
    ):
        pc, dc = pc or kk, dc or size
        acc = piece if p_start == 0 else combine(acc, piece)
        if p_start + kk == num_samples:
            if out is None:
                out = acc.new_empty((acc.shape[0], n, *acc.shape[2:]))
            out[:, start : start + size] = acc
            if store is not None:
                tuner = options.get("tuner")
                store.save(start + size, out, pc, dc, None if tuner is None else tuner.choice)
    return out


_OPTIONS = (
    "particle_chunk",
    "data_chunk",
    "max_rows",
    "compile",
    "progress",
    "reduce_traces",
    "enumerated",
    "tuner",
    "start_at",
    "streams",
)
