"""Data-parallel training and evaluation with torch.distributed.

``torchrun --nproc-per-node N -m pyrovae fit CONFIG`` starts N processes; each calls
:func:`init_from_env`, which joins the process group torchrun describes (NCCL on CUDA,
Gloo on CPU). ``fit`` then wraps the loss of model and guide in
:class:`~torch.nn.parallel.DistributedDataParallel` (:class:`DataParallelLoss`), so the
gradients are all-reduced by PyTorch's own engine, and each rank trains on its shard of
every global batch (``train.batch_size`` datapoints per rank). Rank 0 alone writes
metrics and checkpoints; every rank reads them to resume.
"""

from __future__ import annotations

import datetime
import inspect
import os
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError

#: seconds a collective waits for a silent peer before the job fails (PYROVAE_DIST_TIMEOUT)
DEFAULT_TIMEOUT = 300
RANK_SEED_STRIDE = 1_000_003  #: rank r draws its noise from seed + r * this


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def active() -> bool:
    return world()[1] > 1


def init_from_env(device: str | None = "auto") -> bool:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE > 1):
    NCCL when training on CUDA (one GPU per local rank), else Gloo. False when not launched so."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return active()
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run a single process")
    cuda = torch.cuda.is_available() and device not in ("cpu",)
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = datetime.timedelta(seconds=float(os.environ.get("PYROVAE_DIST_TIMEOUT", DEFAULT_TIMEOUT)))
    backend = "nccl" if cuda else "gloo"
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's own store, under a prefix of our own per restart: with the default env://
        # rendezvous, the workers of a restarted job (--max-restarts) fail to connect (torch 2.15)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        base = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            int(os.environ["WORLD_SIZE"]),
            False,
            timeout=timeout,
        )
        dist.init_process_group(
            backend,
            store=dist.PrefixStore(f"/pyrovae/attempt_{attempt}", base),
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            timeout=timeout,
        )
    else:
        dist.init_process_group(backend, timeout=timeout)
    return True


def device_for_rank(device: str | torch.device | None) -> str | torch.device | None:
    """Under torchrun with CUDA, each rank takes the GPU of its local rank."""
    if active() and str(device) in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def rank_seed(seed: int, rank: int | None = None) -> int:
    """The seed of a rank's noise: independent draws on every rank, the given seed on rank 0."""
    rank = world()[0] if rank is None else rank
    return seed + rank * RANK_SEED_STRIDE


def shard(index: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """Rank ``rank``'s part of ``index``: ``size`` contiguous parts whose lengths differ by at most one."""
    return index.tensor_split(size)[rank]


def shard_sizes(n: int, size: int) -> list[int]:
    """The lengths of the ``size`` parts :func:`shard` cuts ``n`` rows into."""
    return [n // size + (r < n % size) for r in range(size)]


class DataParallelLoss(nn.Module):
    """``loss(*args)`` of the modules ``modules`` as one module, so that
    :class:`~torch.nn.parallel.DistributedDataParallel` can wrap it: DDP broadcasts rank 0's
    parameters at construction and all-reduces (averages) the gradients in ``backward``."""

    def __init__(self, loss: Callable, modules: Sequence[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.loss = loss

    def forward(self, *args):
        return self.loss(*args)


def wrap(loss: Callable, modules: Sequence[nn.Module], device: torch.device) -> nn.Module:
    """``loss`` under DistributedDataParallel (one device per process on CUDA)."""
    module = DataParallelLoss(loss, modules)
    ids = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else None
    )
    # no batch-norm-like buffers to keep in sync: skip the per-step buffer broadcast (the
    # option's name changed in torch 2.15)
    ddp = nn.parallel.DistributedDataParallel
    sync = (
        "forward_sync_buffers"
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else "broadcast_buffers"
    )
    return ddp(module, device_ids=ids, **{sync: False})


def loss_scale(local: int, total: int) -> float:
    """Factor on a rank's mean loss over its ``local`` datapoints so that DDP's average over
    ranks is the mean over all ``total`` datapoints of the global batch: W * local / total."""
    return world()[1] * local / total


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place); the tensor itself outside a process group."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_max(t: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def gather_rows(t: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Concatenate every rank's ``t`` (rank r holds ``sizes[r]`` rows) in rank order, on every rank."""
    if not active():
        return t
    rows = max(sizes)
    padded = t.new_zeros((rows, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def gather_objects(obj) -> list:
    """Every rank's ``obj`` in rank order (a list of one outside a process group)."""
    if not active():
        return [obj]
    out = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
