"""The VQ-VAE's training loss (van den Oord et al. 2017, eq. 3), read off Pyro traces of a model
whose codes a guide chose by the model's codebook (:class:`pyrovae.blocks.quantize.VectorQuantizer`)::

    L = -log p(x | z_q) - log p(c) + sum_i ||sg[z_e,i] - e_c_i||^2 + beta ||z_e,i - sg[e_c_i]||^2,

z_q = e_c in value with the gradient passed straight through to the encoder's z_e (sec. 3.1),
c the nearest codes. With a uniform prior -log p(c) is the constant L log K; with a learned prior
it trains that prior on the codes (stopped gradients: the codes are indices). After each step
the codebook's moving averages move (``ema``, appendix A.1, counts and sums added over ranks
under torchrun) and every ``restart_every`` steps the codes unused since the last restart move to
encoder outputs (rank 0's choice, broadcast). Metrics rows carry the codebook's perplexity and
the number of codes used since the last row.
"""

from __future__ import annotations

import torch

from pyrovae.blocks.quantize import VectorQuantizer
from pyrovae.errors import ConfigError, ModelError
from pyrovae.inference import weights
from pyrovae.runtime import distributed
from pyrovae.training.regularized import _Traced


class VQObjective(_Traced):
    """-sum_n [log p(x_n | z_q) + beta log p(c_n)] + codebook and commitment losses (eq. 3) over
    a batch; ``beta``, the loop's KL weight, weighs the prior term."""

    name = "vqvae"
    capturable = False
    eager_reason = "the codebook's moving averages, restarts and usage counts update between steps"

    def __init__(self):
        super().__init__(1)
        self.quantizer: VectorQuantizer | None = None
        self._last = None  # (z_e, codes) of the last training step, for after_step
        self.usage = self.window = None  # code counts since the last metrics row / restart
        self.steps = self.restarted = 0  # steps since the last restart, codes restarted in all

    def prepare(self, model, guide, *args, **kwargs) -> None:
        """Inspect the pair and find the model's codebook."""
        super().prepare(model, guide, *args, **kwargs)
        q = getattr(model, "quantizer", None)
        if not isinstance(q, VectorQuantizer):
            raise ModelError(
                'objective "vqvae" trains a model with a codebook (model.quantizer, a '
                f"pyrovae.blocks.VectorQuantizer, as model 'vqvae' has); {type(model).__name__} has none"
            )
        if self.quantizer is None:
            self.usage = torch.zeros(q.num_codes, dtype=torch.long, device=q.codebook.device)
            self.window = self.usage.clone()
        self.quantizer = q

    def __call__(self, model, guide, *args, beta=1.0, **kwargs) -> torch.Tensor:
        if self.quantizer is None:
            self.prepare(model, guide, *args, **kwargs)
        q = self.quantizer
        with q.straight_through_context() as met:
            guide_tr, model_tr, pdim = self._traces(model, guide, args, kwargs)
        if len(met) != 1:
            raise ModelError(
                f'objective "vqvae": the guide must choose the codes by model.quantizer.nearest once '
                f"per step; it did {len(met)} times"
            )
        z_e, codes = met[0]
        log_lik, log_prior = weights.sum_sites(model_tr, pdim, 1)
        log_prior = torch.zeros_like(log_lik) if log_prior is None else log_prior
        vq = q.losses(z_e, q.codebook[codes]).reshape(codes.shape[0], -1).sum(-1)
        if torch.is_grad_enabled():
            self._last = (z_e.detach(), codes)
        return -(log_lik + beta * log_prior).mean(0).sum() + vq.sum()

    def after_step(self, group) -> None:
        """Count the step's codes, move the moving averages, restart dead codes when due; a step
        with a non-finite encoding changes nothing."""
        if self._last is None:
            return
        (z_e, codes), self._last, q = self._last, None, self.quantizer
        if bool(group.agree(~torch.isfinite(z_e).all())):
            return
        reduce = distributed.all_sum if group.size > 1 else None
        if q.ema:
            q.ema_update(z_e, codes, reduce)
        counts = q.usage(codes)
        counts = counts if reduce is None else reduce(counts)
        self.usage += counts
        self.window += counts
        self.steps += 1
        if q.restart_every and self.steps >= q.restart_every:
            dead = q.restart(z_e, self.window)
            for t in (q.codebook.data, *((q.cluster_size, q.embed_sum) if q.ema else ())):
                distributed.broadcast(t)
            self.restarted += int(dead.numel())
            self.window.zero_()
            self.steps = 0

    def metrics(self) -> dict:
        """The codebook's perplexity and the codes used since the last row, and the codes
        restarted so far."""
        if self.usage is None or not int(self.usage.sum()):
            return {}
        used, counts = int((self.usage > 0).sum()), self.usage.clone()
        self.usage.zero_()
        return {"perplexity": VectorQuantizer.perplexity(counts).item(), "codes_used": used,
                "codes_restarted": self.restarted}  # fmt: skip

    def state_dict(self) -> dict:
        return {"usage": self.usage.cpu(), "window": self.window.cpu(), "steps": self.steps,
                "restarted": self.restarted}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if state["usage"].shape != self.usage.shape:
            raise ConfigError("the checkpoint's codebook counts do not match this model's num_codes")
        self.usage.copy_(state["usage"])
        self.window.copy_(state["window"])
        self.steps, self.restarted = state["steps"], state["restarted"]
