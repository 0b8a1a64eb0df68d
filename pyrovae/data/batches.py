"""Minibatches of a device-resident split, by indexing a shuffled permutation (no
per-sample work in the training step); and rows of a split observed once each, for probes."""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from pyrovae import hooks
from pyrovae.data.splits import Split
from pyrovae.errors import DataError
from pyrovae.runtime.distributed import shard


class Batches:
    """Minibatches of a device-resident split, by indexing a shuffled permutation.

    The permutation of epoch ``e`` depends only on ``(seed, e)``, so a run resumed in the
    middle of an epoch sees exactly the batches it would have seen. With ``world`` > 1 a
    global batch holds ``batch_size * world`` datapoints and rank ``rank`` gets its part
    (:func:`pyrovae.runtime.distributed.shard`): the ranks share one permutation, not the data.
    """

    def __init__(
        self,
        data: Split,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ):
        if batch_size < 1:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.seed, self.drop_last, self.rank, self.world = seed, drop_last, rank, world
        self.global_size = batch_size * world
        if len(data) < world:
            raise DataError(f"{len(data)} datapoints cannot be shared among {world} ranks")

    def __len__(self) -> int:
        n = len(self.data)
        full, rest = divmod(n, self.global_size)
        # a last batch smaller than the number of ranks would leave a rank empty: it is dropped
        return full if self.drop_last or rest < self.world else full + 1

    def total(self, b: int) -> int:
        """The number of datapoints in global batch ``b`` (all ranks together)."""
        return min(self.global_size, len(self.data) - b * self.global_size)

    def epoch(self, epoch: int, start: int = 0, labels: bool = False) -> Iterator:
        """Yield the batches of ``epoch`` from batch number ``start`` on: observed pixels, or
        (pixels, labels) pairs with ``labels=True``."""
        n = len(self.data)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=g).to(self.data.images.device)
        else:
            perm = torch.arange(n, device=self.data.images.device)
        for b in range(start, len(self)):
            index = perm[b * self.global_size : (b + 1) * self.global_size]
            if self.world > 1:
                index = shard(index, self.rank, self.world)
            yield (self.data.observe(index), self.data.labels[index]) if labels else self.data.observe(index)


def observed_once(model, train: Split) -> Callable:
    """``rows(index)``: the model's arguments for the datapoints ``index`` of ``train``, each
    datapoint's pixels drawn once (a dynamic binarization draws anew at every observation, and
    the per-datapoint probe compares the same datapoints in two orders)."""
    seen: dict[int, torch.Tensor] = {}

    def rows(index: torch.Tensor):
        new = [i for i in index.tolist() if i not in seen]
        if new:
            seen.update(zip(new, train.observe(torch.tensor(new, device=train.images.device))))
        x = torch.stack([seen[i] for i in index.tolist()])
        return hooks.inputs(model, x, train.labels[index.to(train.labels.device)]), {}

    return rows
