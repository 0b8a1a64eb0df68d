"""The validation figures of each epoch: the ELBO, or, for a guide with point-mass sites (a
deterministic encoder, which has no ELBO), the training objective's own loss; and the
classification error of a model with a label site."""

from __future__ import annotations

import pyro
import torch

from pyrovae.data.splits import VAL_BINARIZATION_SEED, Split
from pyrovae.hooks import evaluation_inputs, label_site, owner_modules
from pyrovae.inference import clusters, estimators, weights
from pyrovae.runtime import distributed
from pyrovae.runtime.threads import Tuner

CHUNK = 2000  #: validation datapoints scored at once


class Validator:
    """The validation ELBO, on one fixed binarization and with the same draws every epoch, on a
    forked random stream (validating never changes the stream training continues with, so a
    resumed run matches one that never stopped); for a model with a label site, also the
    classification error of argmax q(y | x) on the labelled validation images. A guide with
    point-mass sites has no ELBO: then ``objective``'s loss per datapoint, in chunks of
    :data:`CHUNK`, is reported as ``val_loss``. Ranks score their parts and share the sums."""

    def __init__(self, model, guide, val: Split, samples: int, seed: int, group, device: torch.device,
                 objective):  # fmt: skip
        self.model, self.guide, self.samples, self.seed, self.group = model, guide, samples, seed, group
        self.device, self.objective = device, objective
        self.x = evaluation_inputs(model, val.observe_fixed(seed + VAL_BINARIZATION_SEED), val.labels)
        self.labels = val.labels if label_site(model) is not None and (val.labels >= 0).any() else None
        self.key = "val_loss" if weights.guide_point_masses(model, guide, self.x) else "val_elbo"

    def __call__(self) -> dict:
        cuda = [self.device] if self.device.type == "cuda" else []
        modules = owner_modules(self.model, self.guide)
        with torch.random.fork_rng(devices=cuda), pyro.validation_enabled(False):
            torch.manual_seed(self.group.seed(self.seed + VAL_BINARIZATION_SEED))
            for m in modules:
                m.eval()
            part = tuple(distributed.shard(a, self.group.rank, self.group.size) for a in self.x)
            sums = self._scores(part)
            if self.labels is not None:
                sums += self._wrong(part)
            total = distributed.all_sum(torch.stack([s.to(self.device, torch.float64) for s in sums]))
            for m in modules:
                m.train()
        row = {self.key: (total[0] / total[1]).item()}
        return row if self.labels is None else {**row, "val_error": (total[2] / total[3]).item()}

    def _scores(self, part: tuple) -> list[torch.Tensor]:
        """(sum, count) of this rank's validation ELBOs, or of its objective losses."""
        n = part[0].shape[0]
        if self.key == "val_elbo":
            fixed = Tuner(enabled=False)  # at the threads training chose: no timing of its own
            elbos = estimators.elbo(
                self.model, self.guide, *part, num_samples=self.samples, data_chunk=CHUNK, tuner=fixed
            )
            return [elbos.double().sum(), torch.tensor(float(n))]
        with torch.no_grad():
            loss = sum(
                (
                    self.objective(self.model, self.guide, *(a[i : i + CHUNK] for a in part)).double()
                    for i in range(0, n, CHUNK)
                ),
                torch.zeros((), dtype=torch.float64, device=self.device),
            )
        return [loss, torch.tensor(float(n))]

    def _wrong(self, part: tuple) -> list[torch.Tensor]:
        """(misclassified, labelled) counts of this rank's part."""
        labels = distributed.shard(self.labels, self.group.rank, self.group.size)
        probs = clusters.discrete_probs(self.guide, *part)[label_site(self.model)]
        known = labels >= 0
        wrong = (probs.argmax(-1) != labels.to(probs.device)) & known.to(probs.device)
        return [wrong.double().sum(), known.double().sum()]
