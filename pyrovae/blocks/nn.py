"""Network blocks shared by models and guides: MLPs and 28x28-style conv stacks."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pyrovae.errors import ConfigError, unknown_name

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "identity": nn.Identity,  # a linear network (a linear-Gaussian model, for exact checks)
}


def activation(name: str) -> nn.Module:
    """The activation module named ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise unknown_name("activation", name, [*ACTIVATIONS, "gated"])
    return ACTIVATIONS[name]()


class GatedLinear(nn.Module):
    """h = (W x + b) * sigmoid(V x + c), the gated linear unit of Dauphin et al. (2017), eq. 1,
    as the hidden layers of the VampPrior paper's networks (Tomczak & Welling 2018, sec. 4)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.linear(x).chunk(2, -1)
        return h * torch.sigmoid(gate)


def mlp(sizes: Sequence[int], act: str = "relu") -> nn.Sequential:
    """Linear layers of the given sizes with ``act`` between them (none after the last);
    ``act = "gated"`` makes every hidden layer a :class:`GatedLinear`."""
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ConfigError(
            f"an MLP needs at least an input and an output size, all positive; got {list(sizes)}"
        )
    if act != "gated":
        activation(act)  # an unknown name fails here, before any layer is built
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        hidden = i < len(sizes) - 2
        if hidden and act == "gated":
            layers.append(GatedLinear(int(a), int(b)))
            continue
        layers.append(nn.Linear(int(a), int(b)))
        if hidden:
            layers.append(activation(act))
    return nn.Sequential(*layers)


def _check_conv_shape(shape: Sequence[int], channels: Sequence[int]) -> None:
    if len(shape) != 3:
        raise ConfigError(f"conv networks take images of shape (C, H, W); got {tuple(shape)}")
    f = 2 ** len(channels)
    if shape[1] % f or shape[2] % f:
        raise ConfigError(
            f"conv networks with {len(channels)} stride-2 layers need H and W divisible "
            f"by {f}; got {tuple(shape)}. Use fewer `channels` or an MLP."
        )


class ConvEncoder(nn.Module):
    """Stride-2 4x4 convolutions (each halves H and W), then an MLP to ``out_dim``."""

    def __init__(
        self,
        x_shape: Sequence[int],
        out_dim: int,
        channels: Sequence[int] = (32, 64),
        hidden: Sequence[int] = (256,),
        act: str = "relu",
    ):
        super().__init__()
        _check_conv_shape(x_shape, channels)
        layers: list[nn.Module] = []
        c_in = x_shape[0]
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), activation(act)]
            c_in = c
        self.conv = nn.Sequential(*layers, nn.Flatten())
        f = 2 ** len(channels)
        flat = c_in * (x_shape[1] // f) * (x_shape[2] // f)
        self.head = mlp([flat, *hidden, out_dim], act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


class ConvDecoder(nn.Module):
    """An MLP from ``in_dim`` to a feature map, then stride-2 transposed convolutions to ``x_shape``."""

    def __init__(
        self,
        in_dim: int,
        x_shape: Sequence[int],
        channels: Sequence[int] = (64, 32),
        hidden: Sequence[int] = (256,),
        act: str = "relu",
        out_channels: int | None = None,
    ):
        super().__init__()
        _check_conv_shape(x_shape, channels)
        f = 2 ** len(channels)
        self.map_shape = (channels[0], x_shape[1] // f, x_shape[2] // f)
        self.head = nn.Sequential(mlp([in_dim, *hidden, math.prod(self.map_shape)], act), activation(act))
        layers: list[nn.Module] = []
        outs = [*channels[1:], out_channels or x_shape[0]]
        for i, (a, b) in enumerate(zip(channels, outs)):
            layers.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
            if i < len(outs) - 1:
                layers.append(activation(act))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = self.head(z).reshape(-1, *self.map_shape)
        out = self.deconv(h)
        return out.reshape(*batch, *out.shape[1:])


def off_meta(make: Callable[[], nn.Module]) -> nn.Module:
    """``make()``, built on the CPU when the default device is ``meta`` (a dry check of a config)
    and moved to it after: Pyro's autoregressive networks read a tensor back while they are
    built, which a meta tensor cannot do."""
    if torch.get_default_device().type != "meta":
        return make()
    with torch.device("cpu"):
        module = make()
    return module.to("meta")


def gaussian_head(h: torch.Tensor, dim: int, min_scale: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``2 * dim`` network outputs into (loc, scale) with scale = softplus(.) + ``min_scale``."""
    loc, raw = h.split(dim, dim=-1)
    return loc, F.softplus(raw) + min_scale


class ResBlock(nn.Module):
    """x + conv3x3(act(conv3x3(act(x)))), pre-activation (He et al. 2016, "Identity mappings in
    deep residual networks", fig. 4e), the last convolution zero-initialized so that each block
    starts as the identity (Goyal et al. 2017, sec. 5.1)."""

    def __init__(self, channels: int, act: str = "relu"):
        super().__init__()
        last = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.body = nn.Sequential(
            activation(act), nn.Conv2d(channels, channels, 3, padding=1), activation(act), last
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _check_resnet(shape: Sequence[int], channels: Sequence[int], blocks: int) -> None:
    _check_conv_shape(shape, channels)
    if not channels or not isinstance(blocks, int) or blocks < 0:
        raise ConfigError(
            f"resnet networks need channels per scale and blocks >= 0; got {channels}, {blocks}"
        )


class ResNetEncoder(nn.Module):
    """A convolutional stem, then per scale ``blocks`` residual blocks and a stride-2 4x4
    convolution to the next width (``channels`` from the finest scale), then a linear map of
    the feature map to ``out_dim``. Pixels in [0, 1] are centred to [-1, 1] first."""

    def __init__(self, x_shape: Sequence[int], out_dim: int, channels: Sequence[int] = (64, 128),
                 blocks: int = 2, act: str = "relu"):  # fmt: skip
        super().__init__()
        _check_resnet(x_shape, channels, blocks)
        layers: list[nn.Module] = [nn.Conv2d(x_shape[0], channels[0], 3, padding=1)]
        for i, c in enumerate(channels):
            layers += [ResBlock(c, act) for _ in range(blocks)]
            nxt = channels[min(i + 1, len(channels) - 1)]
            layers += [activation(act), nn.Conv2d(c, nxt, 4, stride=2, padding=1)]
        f = 2 ** len(channels)
        layers += [activation(act), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1] * (x_shape[1] // f) * (x_shape[2] // f), out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(2 * x - 1))


class ResNetDecoder(nn.Module):
    """A linear map of z to a feature map at 1 / 2^len(channels) of the image size, then per
    scale a stride-2 4x4 transposed convolution to the width ``channels[i]`` (coarsest first)
    and ``blocks`` residual blocks, then a 3x3 convolution to ``out_channels`` outputs."""

    def __init__(self, in_dim: int, x_shape: Sequence[int], channels: Sequence[int] = (128, 64),
                 blocks: int = 2, act: str = "relu", out_channels: int | None = None):  # fmt: skip
        super().__init__()
        _check_resnet(x_shape, channels, blocks)
        f = 2 ** len(channels)
        self.map_shape = (channels[0], x_shape[1] // f, x_shape[2] // f)
        self.head = nn.Linear(in_dim, math.prod(self.map_shape))
        layers: list[nn.Module] = []
        for prev, c in zip([channels[0], *channels[:-1]], channels):
            layers += [activation(act), nn.ConvTranspose2d(prev, c, 4, stride=2, padding=1)]
            layers += [ResBlock(c, act) for _ in range(blocks)]
        layers += [activation(act), nn.Conv2d(channels[-1], out_channels or x_shape[0], 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        out = self.net(self.head(z).reshape(-1, *self.map_shape))
        return out.reshape(*batch, *out.shape[1:])


def cat_broadcast(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dim after broadcasting the leading dims (an enumerated
    discrete code of shape (C, 1, 1, K) beside features of shape (N, H))."""
    lead = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*lead, t.shape[-1]) for t in tensors], -1)


class CodeConditioned(nn.Module):
    """An MLP on [h, one-hot c] whose first layer is split, W_h h + W_c c + b: equal to the MLP
    on the concatenation, with the h part computed once however many values c takes."""

    def __init__(self, in_features: int, classes: int, sizes: Sequence[int], act: str = "relu"):
        super().__init__()
        self.h_in = nn.Linear(in_features, sizes[0])
        self.c_in = nn.Linear(classes, sizes[0], bias=False)
        self.act = activation(act)
        self.rest = mlp(sizes, act) if len(sizes) > 1 else nn.Identity()

    def forward(self, h: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.rest(self.act(self.h_in(h) + self.c_in(code)))


class GridEncoder(nn.Module):
    """Images to a grid of ``dim``-vectors, the VQ-VAE's encoder (van den Oord et al. 2017,
    sec. 4.1): per width in ``channels`` a stride-2 4x4 convolution, then ``blocks`` residual
    blocks and a 1x1 convolution to ``dim``; output (N, H / 2^s, W / 2^s, dim), channels last.
    Pixels in [0, 1] are centred to [-1, 1] first."""

    def __init__(self, x_shape: Sequence[int], dim: int, channels: Sequence[int] = (64, 128),
                 blocks: int = 2, act: str = "relu"):  # fmt: skip
        super().__init__()
        _check_resnet(x_shape, channels, blocks)
        layers: list[nn.Module] = []
        for prev, c in zip([x_shape[0], *channels[:-1]], channels):
            layers += [nn.Conv2d(prev, c, 4, stride=2, padding=1), activation(act)]
        layers += [ResBlock(channels[-1], act) for _ in range(blocks)]
        self.net = nn.Sequential(*layers, activation(act), nn.Conv2d(channels[-1], dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(2 * x - 1).movedim(1, -1)


class GridDecoder(nn.Module):
    """A grid of ``dim``-vectors (..., h, w, dim) to image parameters (..., out, H, W), the
    VQ-VAE's decoder: a 3x3 convolution to ``channels[0]``, ``blocks`` residual blocks, then per
    width in ``channels`` a stride-2 4x4 transposed convolution (the last to ``out_channels``)."""

    def __init__(self, dim: int, x_shape: Sequence[int], channels: Sequence[int] = (128, 64),
                 blocks: int = 2, act: str = "relu", out_channels: int | None = None):  # fmt: skip
        super().__init__()
        _check_resnet(x_shape, channels, blocks)
        layers: list[nn.Module] = [nn.Conv2d(dim, channels[0], 3, padding=1)]
        layers += [ResBlock(channels[0], act) for _ in range(blocks)]
        outs = [*channels[1:], out_channels or x_shape[0]]
        for a, b in zip(channels, outs):
            layers += [activation(act), nn.ConvTranspose2d(a, b, 4, stride=2, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-3]
        out = self.net(z.reshape(-1, *z.shape[-3:]).movedim(-1, 1))
        return out.reshape(*batch, *out.shape[1:])
