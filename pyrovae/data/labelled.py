"""Semi-supervised data: a few labels kept, and batches that keep labelled and unlabelled
datapoints apart."""

from __future__ import annotations

import torch

from pyrovae.data.batches import Batches
from pyrovae.data.splits import Split
from pyrovae.errors import ConfigError, DataError


def keep_labels(split: Split, n: int, seed: int = 0) -> Split:
    """``split`` with the labels of ``n`` datapoints kept, balanced over the classes (n // C
    each, the remainder to the first classes) and chosen by ``seed``; the others get -1
    (unlabelled), as in the semi-supervised benchmarks of Kingma et al. (2014), sec. 4.2."""
    labels = split.labels.cpu()
    classes = labels[labels >= 0].unique()
    if n > len(split) or len(classes) == 0 or n < len(classes):
        raise DataError(
            f"cannot keep {n} balanced labels of {len(split)} datapoints in {len(classes)} classes; "
            f"set data.labelled between {len(classes)} and {len(split)}"
        )
    g = torch.Generator().manual_seed(seed)
    keep = []
    for i, c in enumerate(classes.tolist()):
        members = (labels == c).nonzero().squeeze(1)
        want = n // len(classes) + (i < n % len(classes))
        if want > len(members):
            raise DataError(f"class {c} has {len(members)} images, fewer than the {want} labels asked")
        keep.append(members[torch.randperm(len(members), generator=g)[:want]])
    kept, index = torch.full_like(labels, -1), torch.cat(keep)
    kept[index] = labels[index]
    return Split(split.images, kept.to(split.labels.device), split.pixels, split.maximum)


def is_partly_labelled(split: Split) -> bool:
    known = split.labels >= 0
    return bool(known.any()) and not bool(known.all())


LABELLED_SHARE = 16  #: automatic repeat: at least one labelled batch in every 16 + 1


def labelled_repeat(labelled: int, unlabelled: int, batch_size: int, repeat: int | None = None) -> int:
    """How many times per epoch the labelled datapoints are drawn: ``repeat``, or where None the
    least that makes labelled batches at least one in every 17 (the rate of Pyro's ss-vae example
    with 3000 of 50,000 labels at batch 200): with 100 labels, a classifier that sees its labels
    once in 250 steps learns nothing from them before the entropy of q(y | x) flattens it."""
    if repeat is not None:
        if int(repeat) < 1:
            raise ConfigError(f"train.labelled_repeat must be a positive integer, got {repeat}")
        return int(repeat)
    n_l, n_u = -(-labelled // batch_size), -(-unlabelled // batch_size)
    return max(1, -(-n_u // (LABELLED_SHARE * n_l)))


class LabelledBatches(Batches):
    """Batches of unlabelled datapoints, with batches of the labelled ones interleaved at even
    intervals, a labelled batch observing its labels whole (the schedule of Pyro's ss-vae
    example). Each epoch sees every unlabelled datapoint once and every labelled one ``repeat``
    times (:func:`labelled_repeat`; each pass its own order). The order of epoch ``e`` depends
    only on ``(seed, e)``, as for :class:`Batches`; one process only."""

    def __init__(self, data: Split, batch_size: int, *, seed: int = 0, rank: int = 0, world: int = 1,
                 repeat: int | None = None):  # fmt: skip
        if world > 1:
            raise ConfigError("semi-supervised batches run in one process; train without torchrun")
        super().__init__(data, batch_size, shuffle=True, seed=seed)
        known = (data.labels >= 0).cpu()
        self.parts = {"l": known.nonzero().squeeze(1), "u": (~known).nonzero().squeeze(1)}
        self.repeat = labelled_repeat(len(self.parts["l"]), len(self.parts["u"]), batch_size, repeat)
        self.per_pass = {k: -(-len(v) // batch_size) for k, v in self.parts.items()}  # batches per pass
        n_u, n_l = self.per_pass["u"], self.per_pass["l"] * self.repeat
        slots = {(i + 1) * (n_u + n_l) // (n_l + 1) for i in range(n_l)}  # distinct: n_u >= 1
        seen = {"l": 0, "u": 0}
        self.layout = []  # (part, chunk) per position
        for b in range(n_u + n_l):
            part = "l" if b in slots else "u"
            self.layout.append((part, seen[part]))
            seen[part] += 1

    def __len__(self) -> int:
        return len(self.layout)

    def total(self, b: int) -> int:
        part, chunk = self.layout[b]
        start = (chunk % self.per_pass[part]) * self.batch_size  # its place within its pass
        return min(self.batch_size, len(self.parts[part]) - start)

    def epoch(self, epoch: int, start: int = 0, labels: bool = False):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        device = self.data.images.device
        chunks = {}
        for k, v in sorted(self.parts.items()):  # a fresh order for each pass over the labelled
            passes = [v[torch.randperm(len(v), generator=g)] for _ in range(self.repeat if k == "l" else 1)]
            chunks[k] = [c.to(device) for p in passes for c in p.split(self.batch_size)]
        for part, chunk in self.layout[start:]:
            index = chunks[part][chunk]
            yield (self.data.observe(index), self.data.labels[index]) if labels else self.data.observe(index)
