"""The VRNN's guide: q(z_t | x_t, h_{t-1}) over the model's own recurrence."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.blocks.nn import gaussian_head
from pyrovae.errors import ModelError
from pyrovae.hooks import Takes
from pyrovae.registry import register_guide
from pyrovae.sites import DATA_PLATE, step_site


@register_guide("vrnn")
class VRNNGuide(nn.Module):
    """q(z_{1:T} | x) = prod_t N(z_t; enc([phi_x(x_t), h_{t-1}])) with h_{t-1} the model's GRU state
    over x_{<t} and the guide's own draws z_{<t} (Chung et al. 2015, eq. 9). The recurrence and
    feature networks are the model's (``model``, a :class:`pyrovae.models.vrnn.VRNN`), held
    by reference: their parameters are trained once, as the model's. Built from configs without
    ``model``, it makes its encoder when the model is attached (:meth:`attach_model`)."""

    takes = Takes.SEQUENCE
    needs_model = ("start", "advance")  #: it runs the model's recurrence

    def __init__(self, model=None):
        super().__init__()
        object.__setattr__(self, "_model", None)
        if model is not None:
            self.attach_model(model)

    def attach_model(self, model) -> None:
        """Share ``model``'s recurrence (not as a submodule: its parameters stay the model's)."""
        if not all(hasattr(model, n) for n in ("advance", "start", "phi_x", "phi_z")):
            raise ModelError(
                f"the vrnn guide runs a VRNN's own recurrence; {type(model).__name__} has none: "
                "use it with model vrnn (or a model with start, advance, phi_x and phi_z)"
            )
        object.__setattr__(self, "_model", model)
        hidden = model.hidden
        self.encoder = nn.Sequential(
            nn.Linear(hidden + model.rnn_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * model.z_dim)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        model = self._model
        if model is None:
            raise ModelError("the vrnn guide has no model: call guide.attach_model(model) first")
        fx = model.phi_x(x)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            h = model.start(x.shape[0])
            for t in pyro.markov(range(x.shape[1])):
                feats = torch.cat([fx[:, t].expand(*h.shape[:-1], -1), h], -1)
                loc, scale = gaussian_head(self.encoder(feats), model.z_dim)
                z = pyro.sample(step_site("z", t + 1), dist.Normal(loc, scale).to_event(1).mask(mask[:, t]))
                h = model.advance(fx[:, t], model.phi_z(z), h, mask[:, t])
