"""Property-based: small random model/guide pairs, written as Pyro users write them (site names
and counts, event sizes, amortized encoders or per-datapoint tables read by position, chunk
sizes), scored by every estimator: each equals the whole-data reference, here the closed form,
or refuses by name.

Each latent site s has z_s ~ N(0, I) and its own block of x, x_s ~ N(W_s z_s, sigma^2 I), so
the exact posterior factorizes over sites and q = p(z | x) makes every log-weight equal log p(x)
(Tipping & Bishop 1999, eq. 6): any row read from the wrong place, any draw scored against the
wrong datapoint, moves a number.
"""

import pyro
import pyro.distributions as dist
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pyrovae.errors import ModelError
from pyrovae.inference import estimators

SIGMA = 0.7
NAMES = ("z", "style", "content", "w")


def _posterior(w: torch.Tensor, x: torch.Tensor):
    """Mean (N, D) and scale_tril (D, D) of z | x for x = W z + noise, z ~ N(0, I)."""
    precision = torch.eye(w.shape[1], dtype=w.dtype) + w.T @ w / SIGMA**2
    cov = torch.linalg.inv(precision)
    return x @ w @ cov / SIGMA**2, torch.linalg.cholesky(cov)


def _log_marginal(ws, blocks):
    total = 0.0
    for w, x in zip(ws, blocks):
        cov = w @ w.T + SIGMA**2 * torch.eye(w.shape[0], dtype=w.dtype)
        total = total + dist.MultivariateNormal(torch.zeros(w.shape[0], dtype=w.dtype), cov).log_prob(x)
    return total


def _pair(names, dims, pixels, kind, n):
    """A model of ``len(names)`` latent sites and an exact guide: amortized, or a table of the
    N datapoints' posteriors read by position (``loc[:x.shape[0]]``), as an nn.Module or as
    ``pyro.param``."""
    g = torch.Generator().manual_seed(sum(dims) * 31 + len(names))
    ws = [torch.randn(p, d, generator=g, dtype=torch.float64) for d, p in zip(dims, pixels)]
    edges = torch.tensor([0, *pixels]).cumsum(0).tolist()

    def split(x):
        return [x[..., a:b] for a, b in zip(edges[:-1], edges[1:])]

    def model(x):
        with pyro.plate("data", x.shape[0]):
            for name, w, block in zip(names, ws, split(x)):
                z = pyro.sample(name, dist.Normal(x.new_zeros(x.shape[0], w.shape[1]), 1.0).to_event(1))
                pyro.sample(f"x_{name}", dist.Normal(z @ w.T, SIGMA).to_event(1), obs=block)

    def amortized(x):
        with pyro.plate("data", x.shape[0]):
            for name, w, block in zip(names, ws, split(x)):
                loc, tril = _posterior(w, block)
                pyro.sample(name, dist.MultivariateNormal(loc, scale_tril=tril))

    return model, amortized, ws, split


class Table(nn.Module):
    """Every datapoint's exact posterior, one row each, read by position."""

    def __init__(self, names, locs, trils):
        super().__init__()
        self.names = names
        self.locs = nn.ParameterList([nn.Parameter(loc.clone()) for loc in locs])
        self.trils = trils

    def forward(self, x):
        n = x.shape[0]
        with pyro.plate("data", n):
            for name, loc, tril in zip(self.names, self.locs, self.trils):
                pyro.sample(name, dist.MultivariateNormal(loc[:n], scale_tril=tril))


@st.composite
def pairs(draw):
    count = draw(st.integers(1, 2))
    names = draw(st.permutations(NAMES))[:count]
    dims = [draw(st.integers(1, 3)) for _ in names]
    pixels = [d + draw(st.integers(0, 2)) for d in dims]
    n = draw(st.integers(3, 12))
    kind = draw(st.sampled_from(["amortized", "table", "pyro_param", "missing_site", "renamed_site"]))
    k = draw(st.integers(1, 4))
    chunks = dict(particle_chunk=draw(st.integers(1, k)), data_chunk=draw(st.integers(1, n)))
    return names, dims, pixels, n, kind, k, chunks, draw(st.integers(0, 2**16))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs())
def test_every_estimator_equals_the_closed_form_or_refuses_by_name(case):
    names, dims, pixels, n, kind, k, chunks, seed = case
    model, guide, ws, split = _pair(names, dims, pixels, kind, n)
    torch.manual_seed(seed)
    x = torch.randn(n, sum(pixels), dtype=torch.float64) * 1.5
    exact = _log_marginal(ws, split(x))
    posts = [_posterior(w, b) for w, b in zip(ws, split(x))]
    if kind == "table":
        guide = Table(names, [p[0] for p in posts], [p[1] for p in posts])
    elif kind == "pyro_param":
        pyro.clear_param_store()

        def guide(x_):  # noqa: F811 - the Pyro idiom: a table in the param store, read by position
            m = x_.shape[0]
            with pyro.plate("data", m):
                for i, (name, (loc, tril)) in enumerate(zip(names, posts)):
                    table = pyro.param(f"loc_{i}", loc.clone())
                    pyro.sample(name, dist.MultivariateNormal(table[:m], scale_tril=tril))

    elif kind in ("missing_site", "renamed_site"):
        amortized = guide
        other = [nm for nm in NAMES if nm not in names][0]

        def guide(x_):  # noqa: F811
            with pyro.plate("data", x_.shape[0]):
                for j, (name, w, block) in enumerate(zip(names, ws, split(x_))):
                    if kind == "missing_site" and j == len(names) - 1 and len(names) > 1:
                        continue
                    loc, tril = _posterior(w, block)
                    site = other if kind == "renamed_site" and j == 0 else name
                    pyro.sample(site, dist.MultivariateNormal(loc, scale_tril=tril))

        if kind == "missing_site" and len(names) == 1:
            guide = amortized  # nothing to leave out: the pair matches
    calls = {
        "log_weights": lambda: estimators.log_weights(model, guide, x, num_samples=k, **chunks),
        "elbo": lambda: estimators.elbo(model, guide, x, num_samples=k, **chunks),
        "iwae_bound": lambda: estimators.iwae_bound(model, guide, x, num_samples=k, **chunks),
        "log_likelihood": lambda: estimators.log_likelihood(model, guide, x, num_samples=k, max_rows=5),
        "evaluate_terms": lambda: estimators.evaluate_terms(model, guide, x, num_samples=k, **chunks)["elbo"],
    }
    mismatched = kind == "renamed_site" or (kind == "missing_site" and len(names) > 1)
    for name, call in calls.items():
        if mismatched:
            try:
                call()
            except ModelError as e:
                assert "model and guide do not match" in str(e), (name, str(e))
            else:
                raise AssertionError(f"{name} scored a mismatched pair")
            continue
        got = call()
        want = exact.expand_as(got) if got.dim() == 2 else exact
        torch.testing.assert_close(got, want, rtol=0, atol=1e-8, msg=lambda m: f"{name}, {kind}: {m}")
    if not mismatched:
        ess = estimators.importance_ess(model, guide, x, num_samples=k, **chunks)
        torch.testing.assert_close(ess, torch.full_like(ess, float(k)), rtol=1e-6, atol=1e-6)
