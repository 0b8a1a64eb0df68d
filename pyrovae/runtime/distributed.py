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

from pyrovae.errors import ConfigError
from pyrovae.runtime.compile import warn_eager

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
    """True inside a process group (of any size): gradients and reports go through collectives."""
    return dist.is_available() and dist.is_initialized()


def init_from_env(device: str | None = "auto", single: bool = False) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE > 1):
    NCCL when training on CUDA (one GPU per local rank), else Gloo. False when not launched so.
    With ``single``, a job of one process joins a group of one too, so that it runs the
    collective path (DDP, all-reduce, NCCL on a GPU): the check that one rank equals no rank."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if active() or (size <= 1 and not (single and "RANK" in os.environ)):
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


def broadcast(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's values on every rank (in place); the tensor itself outside a process group."""
    if active():
        dist.broadcast(t, src=0)
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


class Group:
    """What differs between one process and a torch.distributed process group, in one object:
    outside a process group every method does nothing and returns its input, so the
    training loop reads the same either way."""

    def __init__(self) -> None:
        self.rank, self.size = world()
        self.alone = not active()  #: no process group: every method below returns its input

    @property
    def main(self) -> bool:
        """True on the rank that writes files (rank 0)."""
        return self.rank == 0

    def seed(self, seed: int) -> int:
        return rank_seed(seed, self.rank)

    def check_trainable(self, params: Sequence[torch.Tensor], modules: Sequence[nn.Module], mode: str) -> str:
        """The compile mode to use; under DDP every trained tensor must live in the modules,
        and the loss runs eagerly (``none``), with a warning when a mode was asked by name."""
        if self.alone:
            return mode
        in_modules = {id(p) for m in modules for p in m.parameters()}
        if any(id(p) not in in_modules for p in params):
            raise ConfigError(
                "distributed training all-reduces the gradients of nn.Module parameters; keep every "
                "trained tensor in the model's or guide's modules, not in pyro.param"
            )
        warn_eager(mode, "does not apply under torch.distributed (DistributedDataParallel)", stacklevel=3)
        return "none"

    def wrap(self, loss: Callable, modules: Sequence[nn.Module], device: torch.device) -> Callable:
        """``loss`` under DistributedDataParallel; ``loss`` itself in one process."""
        return loss if self.alone else wrap(loss, modules, device)

    def weigh(self, loss: torch.Tensor, local: int, total: int) -> torch.Tensor:
        """A rank's mean loss weighted so that DDP's average is the global batch's mean."""
        return loss if self.alone else loss * loss_scale(local, total)

    def agree(self, flag: torch.Tensor) -> torch.Tensor:
        """A boolean flag that is True on every rank when it is on one (every rank skips the
        same steps)."""
        return flag if self.alone else all_max(flag.float()) > 0

    def agree_signal(self, received: int | None, now: bool, device: torch.device) -> int | None:
        """A signal received by any rank, agreed at steps where ``now`` (logging steps), so that
        every rank stops at the same step; the signal itself in one process."""
        if self.alone:
            return received
        if not now:
            return None
        return int(all_max(torch.tensor(float(received or 0), device=device))) or None

    def any(self, flag: bool, device: torch.device) -> bool:
        """True when ``flag`` holds on some rank (a callback's stop)."""
        return flag if self.alone else bool(all_max(torch.tensor(float(flag), device=device)))

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order."""
        return gather_objects(obj)
