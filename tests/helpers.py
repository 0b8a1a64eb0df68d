"""What several test files share: the command line run in this process."""

import contextlib
import io
import os
import warnings
from types import SimpleNamespace


def run_cli(argv: list[str], cwd, check: bool = True) -> SimpleNamespace:
    """``pyrovae ARGV`` through :func:`pyrovae.run.cli.main` in this process, from the folder
    ``cwd``: its exit code, stdout, stderr, and the warnings it gave (``warned``, one a line)."""
    from pyrovae.run import cli

    out, err, old = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(record=True) as said,
        ):
            warnings.simplefilter("always")
            code = cli.main(argv)
    finally:
        os.chdir(old)
    warned = "".join(f"{w.message}\n" for w in said)
    result = SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue(), warned=warned)
    if check and code != 0:
        raise AssertionError(f"pyrovae {' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}\n{warned}")
    return result


PYRO_PAIR = '''
"""A VAE written as Pyro's examples write one: z ~ N(0, I_3), x ~ Bernoulli(f(z))."""
import pyro
import pyro.distributions as dist
from torch import nn


class Decoder(nn.Module):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 784))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 3), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.net(z)).to_event(1), obs=x.reshape(x.shape[0], -1))


class Encoder(nn.Module):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.Tanh(), nn.Linear(hidden, 6))

    def forward(self, x):
        loc, log_scale = self.net(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
'''
"""A model and guide module for a config to name by import path (``NAME:Decoder``), written to a
file of a name no other test uses (modules are imported once per process)."""
