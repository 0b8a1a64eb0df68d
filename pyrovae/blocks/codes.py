"""Priors over a grid of discrete codes (a VQ-VAE's latent): uniform, as the VQ-VAE trains with
(van den Oord et al. 2017, sec. 3.1), or learned autoregressively after the autoencoder (ibid.,
sec. 3.2), so that its exact log-probability enters the bound and ancestral sampling draws new
images.

The learned prior here is a causal transformer over the grid read in raster order (Vaswani et
al. 2017; the ordering and factorisation p(c) = prod_i p(c_i | c_<i) are PixelCNN's, van den Oord
et al. 2016, eq. 1). A masked-convolution PixelCNN sees a receptive field that grows with depth
and, without separate vertical and horizontal stacks, misses the pixels above and to the right
(the "blind spot", van den Oord et al. 2016b, sec. 2.2); on the small grids of a VQ-VAE (7x7 on
MNIST, 8x8 on CIFAR-10) attention conditions every code on all earlier ones at once at little
cost, and its causal mask is one triangular matrix, simple to check.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from torch import nn
from torch.nn import functional as F

from pyrovae.errors import ConfigError, unknown_name


class CodeTransformer(nn.Module):
    """logits(c)[:, i] = the logits of p(c_i | c_<i) for flattened grids ``c`` (B, L): a start
    token and the codes shifted by one, learned position embeddings, ``layers`` pre-norm causal
    self-attention blocks of ``width`` with ``heads`` heads, a linear map to K logits."""

    def __init__(self, num_codes: int, length: int, width: int = 128, layers: int = 4, heads: int = 4):
        super().__init__()
        if width % heads:
            raise ConfigError(f"the transformer prior's width ({width}) must divide by its heads ({heads})")
        self.num_codes, self.length = num_codes, length
        self.embed = nn.Embedding(num_codes + 1, width)  # the last index is the start token
        self.position = nn.Parameter(0.02 * torch.randn(length, width))
        block = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.body = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, num_codes)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length), persistent=False)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        start = torch.full_like(codes[:, :1], self.num_codes)
        h = self.embed(torch.cat([start, codes[:, :-1]], 1)) + self.position
        h = self.body(h, mask=self.mask.to(h.dtype), is_causal=True)
        return self.out(self.norm(h))


class AutoregressiveCodes(TorchDistribution):
    """p(c) = prod_i p(c_i | c_<i) over grids of shape ``grid`` with the conditionals of
    ``net`` (a :class:`CodeTransformer`): batch shape ``batch_shape``, event shape ``grid``;
    ``log_prob`` is exact, ``sample`` ancestral (one pass of the network per position)."""

    arg_constraints: dict = {}
    has_enumerate_support = False

    def __init__(self, net: CodeTransformer, grid: Sequence[int], batch_shape=(), validate_args=None):
        self.net, self.grid = net, tuple(grid)
        super().__init__(torch.Size(batch_shape), torch.Size(self.grid), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=2)
    def support(self):
        return constraints.independent(constraints.integer_interval(0, self.net.num_codes - 1), 2)

    def expand(self, batch_shape, _instance=None):
        return AutoregressiveCodes(self.net, self.grid, batch_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        lead = value.shape[: value.dim() - 2]
        flat = value.reshape(-1, self.net.length)
        logp = F.log_softmax(self.net(flat), -1).gather(-1, flat.unsqueeze(-1)).squeeze(-1)
        return logp.sum(-1).reshape(lead).expand(torch.broadcast_shapes(lead, self.batch_shape))

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        device = self.net.position.device
        codes = torch.zeros(math.prod(shape), self.net.length, dtype=torch.long, device=device)
        for i in range(self.net.length):
            codes[:, i] = dist.Categorical(logits=self.net(codes)[:, i]).sample()
        return codes.reshape(*shape, *self.grid)


class CodePrior(nn.Module):
    """A prior over grids of ``num_codes`` codes: ``prior(n)`` is a distribution with batch
    shape (n,) and event shape ``grid``."""

    def __init__(self, num_codes: int, grid: Sequence[int]):
        super().__init__()
        self.num_codes, self.grid = num_codes, tuple(grid)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # the device and dtype

    def forward(self, n: int) -> dist.Distribution:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` grids of codes drawn from the prior."""
        return self(n).sample()


class UniformCodePrior(CodePrior):
    """p(c) = K^-L, each of the L = H x W codes uniform (van den Oord et al. 2017, sec. 3.1)."""

    def forward(self, n: int) -> dist.Distribution:
        logits = self._anchor.expand(self.num_codes)
        return dist.Categorical(logits=logits).expand((n, *self.grid)).to_event(len(self.grid))


class TransformerCodePrior(CodePrior):
    """p(c) = prod_i p(c_i | c_<i) in raster order, the conditionals from a
    :class:`CodeTransformer` (options ``width``, ``layers``, ``heads``)."""

    def __init__(self, num_codes: int, grid: Sequence[int], width: int = 128, layers: int = 4,
                 heads: int = 4):  # fmt: skip
        super().__init__(num_codes, grid)
        self.net = CodeTransformer(num_codes, math.prod(self.grid), width, layers, heads)

    def forward(self, n: int) -> dist.Distribution:
        return AutoregressiveCodes(self.net, self.grid, (n,))


CODE_PRIORS = {"uniform": UniformCodePrior, "transformer": TransformerCodePrior}  #: by name (model.prior)


def make_code_prior(
    name: str, num_codes: int, grid: Sequence[int], options: Mapping[str, Any] | None = None
) -> CodePrior:
    """The code prior named ``name`` with ``options`` (``prior_options`` in a config)."""
    if name not in CODE_PRIORS:
        raise unknown_name("code prior", name, CODE_PRIORS)
    options = dict(options or {})
    if name == "uniform" and options:
        raise ConfigError(f"the uniform code prior takes no prior_options, got {sorted(options)}")
    try:
        return CODE_PRIORS[name](num_codes, grid, **options)
    except TypeError as e:
        raise ConfigError(f"prior_options for the {name!r} code prior: {e}") from None
