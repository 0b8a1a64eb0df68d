"""Priors p(z) a model takes as a component, with parameters trained jointly with it.

Each prior is an ``nn.Module`` called with a number of datapoints ``n`` that returns a Pyro
distribution of batch shape (n,) and event shape (latent_dim,), with an exact log-density,
so that every ELBO, IWAE bound and importance-sampled log-likelihood stays valid:

- ``standard``: N(0, I);
- ``mog``: a mixture of K diagonal Gaussians with learned weights, means and scales;
- ``vamp``: the VampPrior of Tomczak & Welling (2018), eq. 9: p(z) = 1/K sum_k q(z | u_k)
  with K learned pseudo-inputs u_k passed through the model's own guide;
- ``flow``: N(0, I) transformed by a stack of Pyro's affine autoregressive transforms
  (Papamakarios et al. 2017, eq. 4, masked autoregressive density), identity at the start.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn

from pyrovae.blocks.nn import off_meta
from pyrovae.errors import ConfigError, ModelError, unknown_name
from pyrovae.registry import import_object, is_import_path, offered, plugins

PRIORS = ("standard", "mog", "vamp", "flow")  #: the priors a model takes by name (``[model] prior``)


class DiagNormalMixture(TorchDistribution):
    """sum_k pi_k N(z; mu_k, diag s_k^2) over the last dim, pi = softmax(logits).

    The log-density uses matrix products: sum_d (z_d - mu_kd)^2 / s_kd^2 =
    z^2 . (1/s_k^2) - 2 z . (mu_k / s_k^2) + sum_d mu_kd^2 / s_kd^2, so N values against K
    components cost two (N x D) @ (D x K) products instead of an N x K x D tensor."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self, locs: torch.Tensor, scales: torch.Tensor, logits: torch.Tensor, batch_shape: Sequence[int] = ()
    ):
        self.locs, self.scales, self.logits = locs, scales, logits
        super().__init__(
            batch_shape=torch.Size(batch_shape), event_shape=locs.shape[-1:], validate_args=False
        )

    def expand(self, batch_shape, _instance=None):
        return DiagNormalMixture(self.locs, self.scales, self.logits, batch_shape)

    def component_log_probs(self, value: torch.Tensor) -> torch.Tensor:
        """log N(value; mu_k, diag s_k^2) for every component: shape value.shape[:-1] + (K,)."""
        prec = self.scales.pow(-2)
        quad = (value * value) @ prec.T - 2 * value @ (self.locs * prec).T + (self.locs.pow(2) * prec).sum(-1)
        d = self.locs.shape[-1]
        return -0.5 * quad - self.scales.log().sum(-1) - 0.5 * d * math.log(2 * math.pi)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.component_log_probs(value) + torch.log_softmax(self.logits, -1), -1)

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        k = torch.distributions.Categorical(logits=self.logits).sample(shape)
        return self.locs[k] + self.scales[k] * torch.randn(
            shape + self.event_shape, device=self.locs.device, dtype=self.locs.dtype
        )


class Prior(nn.Module):
    """p(z) over ``latent_dim`` dimensions; ``prior(n)`` is its distribution for n datapoints."""

    #: True when p(z) is N(0, I), where an analytic KL exists for a Gaussian guide
    gaussian = False

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def distribution(self) -> dist.Distribution:
        """p(z) with batch shape () and event shape (latent_dim,)."""
        raise NotImplementedError

    def forward(self, n: int) -> dist.Distribution:
        return self.distribution().expand([n])

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self(n).sample()

    def _anchor(self) -> torch.Tensor:
        """Any tensor of this prior, for device and dtype (a buffer or parameter)."""
        return next(iter([*self.parameters(), *self.buffers()]))


class StandardPrior(Prior):
    """N(0, I)."""

    gaussian = True

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.register_buffer("zero", torch.zeros(latent_dim), persistent=False)  # not in checkpoints

    def distribution(self) -> dist.Distribution:
        return dist.Normal(self.zero, torch.ones_like(self.zero)).to_event(1)


class MixturePrior(Prior):
    """sum_k pi_k N(mu_k, diag s_k^2) with K = ``components`` and learned pi, mu, s; the means start
    as N(0, s^2) draws with s = ``init_scale``, the scales at 1 and the weights uniform."""

    def __init__(self, latent_dim: int, components: int = 10, init_scale: float = 1.0):
        super().__init__(latent_dim)
        if not isinstance(components, int) or components < 1:
            raise ConfigError(f"the mixture prior needs components >= 1, got {components!r}")
        self.logits = nn.Parameter(torch.zeros(components))
        self.locs = nn.Parameter(init_scale * torch.randn(components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(components, latent_dim))

    def distribution(self) -> dist.Distribution:
        return DiagNormalMixture(self.locs, self.log_scales.exp(), self.logits)


class VampPrior(Prior):
    """p(z) = 1/K sum_k q(z | u_k) (Tomczak & Welling 2018, eq. 9) with K = ``components``
    learned pseudo-inputs u_k of the data's shape, kept in [0, 1] by hardtanh as in the paper's
    code, and q the model's own guide (``attach(guide)``; a guide with ``params(x) -> (loc,
    scale)``). Pseudo-inputs start as N(``init_mean``, ``init_std``^2) draws (the paper's 0.05,
    0.01; ``init = "random"``), or as K random training images (``init = "data"``: a config
    run calls ``init_from`` with them; in Python call it yourself)."""

    def __init__(
        self,
        latent_dim: int,
        x_shape: Sequence[int],
        components: int = 500,
        init: str = "random",
        init_mean: float = 0.05,
        init_std: float = 0.01,
    ):
        super().__init__(latent_dim)
        if not isinstance(components, int) or components < 1:
            raise ConfigError(f"the VampPrior needs components >= 1, got {components!r}")
        if init not in ("random", "data"):
            raise unknown_name("VampPrior init", init, ("random", "data"))
        self.init = init
        self.pseudo_inputs = nn.Parameter(init_mean + init_std * torch.randn(components, *x_shape))
        object.__setattr__(self, "_guide", None)  # not a submodule: the guide's parameters stay the guide's

    def attach(self, guide: Any) -> None:
        if not callable(getattr(guide, "params", None)):
            raise ModelError(
                f"the VampPrior needs a guide with params(x) -> (loc, scale); {type(guide).__name__} has none"
            )
        if getattr(guide, "flow", "none") != "none":
            raise ModelError(
                f"the VampPrior mixes the guide's Gaussians q(z | u_k); this guide adds a flow "
                f'({guide.flow!r}): use guide.flow = "none" with it, or another prior'
            )
        object.__setattr__(self, "_guide", guide)

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """Set the pseudo-inputs to the first K rows of ``x`` (e.g. shuffled training images)."""
        k = self.pseudo_inputs.shape[0]
        if x.shape[0] < k or tuple(x.shape[1:]) != tuple(self.pseudo_inputs.shape[1:]):
            raise ConfigError(
                f"init_from needs at least {k} datapoints of shape "
                f"{tuple(self.pseudo_inputs.shape[1:])}, got {tuple(x.shape)}"
            )
        self.pseudo_inputs.copy_(x[:k])

    def inputs(self) -> torch.Tensor:
        return nn.functional.hardtanh(self.pseudo_inputs, 0.0, 1.0)

    def distribution(self) -> dist.Distribution:
        if self._guide is None:
            raise ModelError("the VampPrior has no guide: call model.attach_guide(guide) (configs do this)")
        loc, scale = self._guide.params(self.inputs())
        return DiagNormalMixture(loc, scale, torch.zeros(loc.shape[0], device=loc.device, dtype=loc.dtype))


class FlowPrior(Prior):
    """N(0, I) pushed through ``depth`` affine autoregressive transforms (MADE networks with
    ``hidden`` units per layer, Germain et al. 2015), the order reversed between them. Each is
    used in its density direction (one pass to evaluate log p(z), latent_dim passes to sample)
    and starts as the identity, so the prior starts at N(0, I)."""

    def __init__(self, latent_dim: int, depth: int = 2, hidden: Sequence[int] = (64,)):
        super().__init__(latent_dim)
        if not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"the flow prior needs depth >= 1, got {depth!r}")
        if latent_dim < 2:
            raise ConfigError("the flow prior's autoregressive transforms need latent_dim >= 2")
        self.register_buffer("zero", torch.zeros(latent_dim), persistent=False)  # not in checkpoints
        self.register_buffer("order", torch.arange(latent_dim - 1, -1, -1), persistent=False)
        self.flows = nn.ModuleList()
        for _ in range(depth):
            t = off_meta(lambda: dist.transforms.affine_autoregressive(latent_dim, hidden_dims=list(hidden)))
            last = t.arn.layers[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)  # loc = 0, log scale = 0: the identity
            self.flows.append(t)

    def transforms(self) -> list:
        out = []
        for i, t in enumerate(self.flows):
            if i:
                out.append(dist.transforms.Permute(self.order))
            out.append(t.inv)  # density direction: log p(z) in one pass
        return out

    def distribution(self) -> dist.Distribution:
        base = dist.Normal(self.zero, torch.ones_like(self.zero)).to_event(1)
        return dist.TransformedDistribution(base, self.transforms())

    def forward(self, n: int) -> dist.Distribution:
        base = dist.Normal(self.zero.expand(n, -1), torch.ones_like(self.zero).expand(n, -1)).to_event(1)
        return dist.TransformedDistribution(base, self.transforms())


def make_prior(
    prior: str | Prior, latent_dim: int, x_shape: Sequence[int], options: Mapping[str, Any] | None = None
) -> Prior:
    """The prior named ``prior`` ("standard", "mog", "vamp" or "flow") with constructor ``options``,
    or ``prior`` itself when it is already a :class:`Prior`."""
    if isinstance(prior, Prior):
        return prior
    options = dict(options or {})
    makers: dict[str, Callable[..., Prior]] = {
        "standard": lambda: StandardPrior(latent_dim, **options),
        "mog": lambda: MixturePrior(latent_dim, **options),
        "vamp": lambda: VampPrior(latent_dim, x_shape, **options),
        "flow": lambda: FlowPrior(latent_dim, **options),
    }
    if prior not in makers and (is_import_path(prior) or prior in plugins("prior")):
        # a Prior subclass of the user's: built as the registered ones are, from latent_dim
        cls = import_object("prior", prior) if is_import_path(prior) else plugins("prior")[prior]
        given = offered(cls, {"latent_dim": latent_dim, "x_shape": tuple(x_shape)}, options)
        makers[prior] = lambda: cls(**given, **options)
    if prior not in makers:
        raise unknown_name("prior", prior, PRIORS)
    try:
        return makers[prior]()
    except TypeError as e:
        raise ConfigError(f"prior {prior!r}: {e}; see pyrovae.blocks.priors for its options") from e
