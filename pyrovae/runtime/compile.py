"""Running a Pyro loss without Pyro's per-call Python: capture once, replay a tensor graph.

A Pyro model and guide do their bookkeeping (messengers, traces, plates) in Python on
every call, about a millisecond for a small VAE, while for a fixed input shape the
tensor operations they issue are the same each time. :class:`Compiled` records those
operations once per input shape with ``torch.fx.experimental.proxy_tensor.make_fx``
into an ATen graph whose inputs are the modules' parameters and buffers and the call's
tensors, then runs it by one of the ``modes``:

- ``none``: the eager Pyro call, every time;
- ``capture``: the recorded graph, run as it is (no compiler needed);
- ``inductor``: the graph compiled by ``torch.compile`` (fused kernels; a cold compile
  of seconds per shape, and a C++ compiler on CPU);
- ``cudagraphs``: ``torch.compile(mode="reduce-overhead")``, inductor with CUDA graphs.
- ``auto`` is ``capture``, the fastest correct mode measured on CPU (``benchmarks/speed.py``);
  an evaluation captures its chunks only when it has enough of them to pay for the capture
  (:data:`pyrovae.inference.chunks.AUTO_CAPTURE_CHUNKS`), ``pyrovae evaluate`` and
  ``pyrovae.estimators`` alike.

Pyro's argument checks read values back to the host, so they are not recorded: check
the data once beforehand, as ``fit`` and ``evaluate`` do. Every new capture is checked
once against the eager call on the same random stream
(value and, for training, gradients) and refused, falling back to eager with a warning
naming the reason, when it cannot be recorded (Python control flow on tensor values)
or differs. Sampling ops are recorded as ops, so each replay draws fresh noise; the
checks run on forked random streams, so the stream training continues with is the
one the eager loss would have seen.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import pyro
import torch
from torch import nn

from pyrovae.errors import ConfigError, unknown_name

MODES = ("auto", "none", "capture", "inductor", "cudagraphs")  #: how a loss or an evaluation chunk runs
_MAX_SHAPES = 8  #: captures kept per loss; further input shapes run eagerly


class _Call(nn.Module):
    """``fn`` as the forward of a module that owns ``modules``, so that ``functional_call`` can
    swap their parameters and buffers for graph inputs."""

    def __init__(self, fn: Callable, modules: Sequence[nn.Module]):
        super().__init__()
        self.fn = fn
        self.parts = nn.ModuleList(modules)

    def forward(self, *tensors):
        return self.fn(*tensors)


def warn_eager(mode: str, reason: str, stacklevel: int = 3) -> None:
    """Warn that a compile mode asked for by name does not apply (``reason``): the loss runs eagerly."""
    if mode not in ("auto", "none"):
        warnings.warn(
            f"compile = {mode!r}: {reason}; the loss runs eagerly", RuntimeWarning, stacklevel=stacklevel + 1
        )


def resolve_mode(mode: str) -> str:
    if mode not in MODES:
        raise unknown_name("compile mode", mode, MODES)
    return "capture" if mode == "auto" else mode


class Compiled:
    """``fn(*tensors) -> Tensor``, a pure function of ``modules``' parameters and buffers and of
    its tensor arguments, run through one captured graph per argument shape.

    ``params`` lists every tensor ``fn`` trains; one that is not a parameter of ``modules``
    (a ``pyro.param`` of a plain callable) cannot be a graph input, so such a loss stays eager.
    With ``grad=False`` the graph is built for evaluation (no gradients checked).
    """

    def __init__(
        self,
        fn: Callable,
        modules: Sequence[nn.Module],
        mode: str = "auto",
        *,
        params: Sequence[torch.Tensor] = (),
        grad: bool = True,
        rtol: float = 1e-4,
        atol: float = 1e-5,
    ):
        self.fn, self.mode, self.grad, self.rtol, self.atol = fn, resolve_mode(mode), grad, rtol, atol
        self.explicit = mode != "auto"  # a mode asked for by name warns when it cannot be used
        self.call = _Call(fn, modules)
        named = [*self.call.named_parameters(), *self.call.named_buffers()]
        self.names, self.state = tuple(n for n, _ in named), tuple(t for _, t in named)
        own = {id(t) for t in self.state}
        foreign = [p for p in params if id(p) not in own]
        self.graphs: dict[tuple, Callable | None] = {}
        self.reasons: dict[tuple, str] = {}
        if foreign and self.mode != "none":
            self._refuse_all = (
                f"{len(foreign)} trained tensor(s) are pyro.param sites outside the "
                "modules and cannot be graph inputs"
            )
        else:
            self._refuse_all = None

    @staticmethod
    def key(tensors) -> tuple:
        return tuple(
            (tuple(t.shape), t.dtype, t.device) if isinstance(t, torch.Tensor) else ("py", t) for t in tensors
        )

    def __call__(self, *tensors):
        if self.mode == "none":
            return self.fn(*tensors)
        key = self.key(tensors)
        if key not in self.graphs:
            self.graphs[key] = self._build(key, tensors) if len(self.graphs) < _MAX_SHAPES else None
        graph = self.graphs[key]
        if graph is None:
            return self.fn(*tensors)
        return graph(self.state, *tensors)

    @property
    def captured(self) -> bool:
        """True when some input shape runs through a graph."""
        return any(g is not None for g in self.graphs.values())

    def summary(self) -> str:
        """How the calls ran: the mode when every shape seen ran through a graph, else
        ``none`` or ``partly MODE``, with the reasons."""
        if self.mode == "none" or not self.graphs:
            return "none"
        if not self.reasons:
            return self.mode
        why = "; ".join(sorted(set(self.reasons.values())))
        return f"{'partly ' + self.mode if self.captured else 'none'} ({why})"

    def _pure(self, state, *tensors):
        return torch.func.functional_call(self.call, dict(zip(self.names, state)), tensors, strict=True)

    def _refuse(self, key, reason: str) -> None:
        self.reasons[key] = reason
        if self.explicit:
            warnings.warn(
                f"compile mode {self.mode!r}: running the loss eagerly for inputs "
                f"{[k[0] for k in key]}: {reason}",
                RuntimeWarning,
                stacklevel=3,
            )

    def _build(self, key, tensors) -> Callable | None:
        from torch.fx.experimental.proxy_tensor import make_fx

        if self._refuse_all:
            self._refuse(key, self._refuse_all)
            return None
        devices = sorted({t.device.index or 0 for t in self.state if t.device.type == "cuda"})
        trainable = [t for t in self.state if t.requires_grad] if self.grad else []

        def run(f):
            with (
                torch.random.fork_rng(devices=devices),
                torch.enable_grad() if self.grad else torch.no_grad(),
            ):
                out = f()
                grads = (
                    torch.autograd.grad(out.sum(), trainable, allow_unused=True)
                    if trainable and out.requires_grad
                    else []
                )
            return out.detach(), [None if g is None else g.detach() for g in grads]

        try:
            # traced above autograd with gradients on, so that gradient stops (detach) stay ops
            # and without Pyro's argument checks, which read values back (check the data beforehand)
            with (
                torch.random.fork_rng(devices=devices),
                pyro.validation_enabled(False),
                torch.enable_grad() if self.grad else torch.no_grad(),
            ):
                graph = make_fx(self._pure, pre_dispatch=True)(
                    [t.detach().requires_grad_(t.requires_grad) for t in self.state], *tensors
                )
        except Exception as e:  # noqa: BLE001 - any failure to record means: stay eager
            self._refuse(
                key, f"the program could not be recorded ({type(e).__name__}: {str(e).splitlines()[0]})"
            )
            return None
        eager, eager_grads = run(lambda: self.fn(*tensors))
        replay, replay_grads = run(lambda: graph(self.state, *tensors))
        same = eager.shape == replay.shape and torch.allclose(
            eager, replay, self.rtol, self.atol, equal_nan=True
        )
        for a, b in zip(eager_grads, replay_grads):
            same = (
                same
                and ((a is None) == (b is None))
                and (a is None or torch.allclose(a, b, self.rtol, self.atol, equal_nan=True))
            )
        if not same or len(eager_grads) != len(replay_grads):
            self._refuse(
                key,
                "the recorded graph does not reproduce the eager loss or its gradients "
                "(the program depends on something besides its parameters and inputs)",
            )
            return None
        if self.mode == "capture":
            return graph
        if self.mode not in ("inductor", "cudagraphs"):
            raise ConfigError(f"unhandled compile mode {self.mode!r}")
        compiled = torch.compile(
            graph, dynamic=False, mode="reduce-overhead" if self.mode == "cudagraphs" else None
        )
        try:  # compile now (a missing C++ compiler, an unsupported op) rather than inside the step
            run(lambda: compiled(self.state, *tensors))
        except Exception as e:  # noqa: BLE001
            self._refuse(
                key, f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            )
            return None
        return compiled
