"""The two decisions about a pair, read by every path: the guide matches the model
(pyrovae.inference.pairs.check_pair) and per-datapoint state keeps the data whole
(pyrovae.inference.pairs.whole_data). Pairs written here as Pyro users write them."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyrovae
from pyrovae.diagnostics.refine import refined_log_likelihood
from pyrovae.errors import ModelError
from pyrovae.inference import ais, bidirectional, estimators, pairs
from pyrovae.inference.scoring import evaluate_data
from pyrovae.training.catalog import make_objective
from pyrovae.training.settings import TrainConfig


def model(x):
    decoder = pyro.module("decoder", nn.Linear(2, x.shape[-1]))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z_content", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)


def guide_of(name="z_content", family=dist.Normal, shape=None, outside=False):
    def guide(x):
        loc = x[..., :2] if shape is None else x[..., :2].reshape(shape(x))
        with pyro.plate("data", x.shape[0], dim=-2 if outside else -1):
            pyro.sample(name, family(loc, torch.ones_like(loc)).to_event(1))

    return guide


def scoring_paths(m, g, x):
    """Every entry point that scores a pair, each as a thunk."""
    return {
        "elbo": lambda: estimators.elbo(m, g, x),
        "iwae_bound": lambda: estimators.iwae_bound(m, g, x, num_samples=3),
        "log_likelihood": lambda: estimators.log_likelihood(m, g, x, num_samples=3),
        "importance_ess": lambda: estimators.importance_ess(m, g, x, num_samples=3),
        "log_weights": lambda: estimators.log_weights(m, g, x, num_samples=3, data_chunk=2),
        "ais": lambda: ais.ais_log_likelihood(m, g, x, num_steps=3, num_chains=2, adapt_chains=0),
        "bdmc": lambda: bidirectional.bdmc(m, g, x, num_steps=3, num_chains=2, adapt_chains=0),
        "refinement": lambda: refined_log_likelihood(m, g, x, steps=1, num_samples=3),
        "objective": lambda: make_objective("iwae", k=2)(m, g, x),
        "fit": lambda: pyrovae.fit(m, g, x, config=TrainConfig(max_steps=1), device="cpu", progress=False),
        "evaluate": lambda: evaluate_data(m, g, x, num_samples=3),
    }


@pytest.mark.parametrize(
    "guide, says",
    [
        (guide_of("w"), r"the guide does not sample \['z_content'\]; the model has no site \['w'\]"),
        (guide_of(family=dist.LogNormal), "LogNormal on GreaterThan.*outside the model's Normal on Real"),
        (guide_of(shape=lambda x: (x.shape[0], 1, 2)), r"value has shape \(6, 6, 2\).*scores shape \(6, 2\)"),
    ],
    ids=["names", "support", "shape"],
)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_every_path_refuses_a_mismatched_pair_naming_both_sides(guide, says):
    x = torch.randn(6, 3)
    if "LogNormal" in says:  # a real-valued prior has the positive reals inside: turn it round
        m = lambda x: _positive_model(x)  # noqa: E731
        g = guide_of(family=dist.Normal)
        says = "Normal on Real.*outside the model's LogNormal on GreaterThan"
    else:
        m, g = model, guide
    for name, run in scoring_paths(m, g, x).items():
        with pytest.raises(ModelError, match=says):
            run()


def _positive_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z_content", dist.LogNormal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z.log().sum(-1, keepdim=True).expand(x.shape), 1.0).to_event(1), obs=x)


def test_a_guide_inside_the_models_support_passes():
    x = torch.randn(6, 3)
    assert pairs.support_inside(dist.LogNormal(0.0, 1.0).support, dist.Gamma(1.0, 1.0).support)
    assert pairs.support_inside(dist.Beta(1.0, 1.0).support, dist.Normal(0.0, 1.0).support)
    assert not pairs.support_inside(dist.Normal(0.0, 1.0).support, dist.Beta(1.0, 1.0).support)
    assert not pairs.support_inside(dist.Normal(0.0, 1.0).support, dist.Bernoulli(0.5).support)
    assert not pairs.support_inside(
        dist.Normal(torch.zeros(3), 1.0).support, dist.Dirichlet(torch.ones(3)).support
    )
    pairs.check_pair(_positive_model, guide_of(family=dist.LogNormal), (x,))
    assert torch.isfinite(estimators.elbo(_positive_model, guide_of(family=dist.LogNormal), x)).all()


def test_the_data_plate_on_another_axis_is_refused():
    x = torch.randn(6, 3)

    def global_guide(x):  # one draw shared by every datapoint, where the model has one per datapoint
        pyro.sample("z_content", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    with pytest.raises(ModelError, match="plate is outside it in the guide and on axis 0"):
        pairs.check_pair(model, global_guide, (x,))


def _exact(n=200, seed=3):
    from pyrovae.models import LinearGaussian

    torch.manual_seed(seed)
    m = LinearGaussian((1, 1, 4), latent_dim=2, sigma=0.6, init_scale=0.9).double()
    for p in m.parameters():
        p.requires_grad_(False)
    x = m.decode(torch.randn(n, 2, dtype=torch.float64)) + 0.6 * torch.randn(n, 1, 1, 4, dtype=torch.float64)
    return m, x


class ByPosition(nn.Module):
    """A per-datapoint Gaussian table read by position, ``loc[:x.shape[0]]``, as users write it."""

    def __init__(self, loc, tril):
        super().__init__()
        self.loc, self.tril = nn.Parameter(loc.clone()), nn.Parameter(tril.clone())

    def forward(self, x):
        n = x.shape[0]
        with pyro.plate("data", n):
            pyro.sample("z", dist.MultivariateNormal(self.loc[:n], scale_tril=self.tril[:n].tril()))


def test_tables_read_by_position_are_scored_on_whole_data_by_every_path():
    """The first two datapoints equal, so the first two rows of the table too (the old probe
    compared only those), N above every chunk size: with the exact posterior in the table every
    estimate is exact when each datapoint reads its own row, chunked or not."""
    m, x = _exact()
    x[1] = x[0]
    post = m.posterior(x)
    g = ByPosition(post.loc, post.scale_tril)
    exact = m.log_marginal(x)
    assert "'loc' has one row per datapoint (200)" in pairs.per_datapoint_state(m, g, (x,))
    for options in (dict(data_chunk=7, particle_chunk=16), dict(max_rows=64), {}):
        got = estimators.log_likelihood(m, g, x, num_samples=64, **options)
        torch.testing.assert_close(got, exact, atol=1e-9, rtol=0)
    refined = refined_log_likelihood(m, g, x, steps=1, num_samples=20, data_chunk=50)
    torch.testing.assert_close(refined.log_likelihood, exact, atol=1e-9, rtol=0)

    class Unlisted(nn.Module):  # the table behind a plain attribute, read by position: found by value
        def forward(self, x):
            return ByPosition.forward(g, x)

    assert "elsewhere in a batch" in pairs.per_datapoint_state(m, Unlisted(), (x,))


def test_a_pyro_param_table_is_found_in_the_trace():
    m, x = _exact(n=30)

    def guide(x):
        loc = pyro.param("table_loc", lambda: torch.zeros(30, 2, dtype=x.dtype))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc[: x.shape[0]], 1.0).to_event(1))

    pyro.clear_param_store()
    assert "'table_loc' has one row per datapoint (30)" in pairs.per_datapoint_state(m, guide, (x,))


def test_fit_trains_a_zero_initialised_table_on_whole_data_and_says_so():
    m, x = _exact(n=60)
    g = ByPosition(torch.zeros(60, 2, dtype=x.dtype), torch.eye(2, dtype=x.dtype).expand(60, 2, 2))
    cfg = TrainConfig(max_steps=400, lr=0.05, batch_size=16)
    with pytest.warns(RuntimeWarning, match="trains on all 60 datapoints at once"):
        result = pyrovae.fit(m, g, x, config=cfg, device="cpu", progress=False)
    assert result.layout == "whole data"
    gap = (m.log_marginal(x) - estimators.elbo(m, g, x, num_samples=500)).mean()
    assert 0 <= gap < 0.5  # every row learnt: minibatches of 16 would leave 44 rows at zero


def test_a_table_indexed_by_an_argument_is_declared_and_sliced():
    """A table read by an index argument scores the same on any slice: ``per_datapoint = False``
    says so, and the estimators chunk it; the numbers equal a whole-data run."""
    m, x = _exact(n=50)
    post = m.posterior(x)
    scale = post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()

    class Indexed(nn.Module):
        per_datapoint = False

        def __init__(self):
            super().__init__()
            self.loc, self.scale = nn.Parameter(post.loc.clone()), nn.Parameter(scale.clone())

        def forward(self, x, idx):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(self.loc[idx], self.scale[idx]).to_event(1))

    def indexed_model(x, idx):
        m(x)

    g, idx = Indexed(), torch.arange(50)
    assert not pairs.whole_data(indexed_model, g, (x, idx))
    torch.manual_seed(1)
    whole = estimators.log_weights(indexed_model, g, x, idx, num_samples=4, data_chunk=50)
    torch.manual_seed(1)
    sliced = estimators.log_weights(indexed_model, g, x, idx, num_samples=4, data_chunk=50)
    torch.testing.assert_close(sliced, whole)
    del Indexed.per_datapoint  # undeclared, the table is found by its structure
    assert pairs.whole_data(indexed_model, g, (x, idx))


def test_a_guide_with_noise_of_its_own_is_not_mistaken_for_a_table():
    """Noise injected into the encoder's input moves the scores between any two runs, in any
    order: the value probe cannot tell, so it does not claim a table (nor does the structure)."""
    m, x = _exact(n=40)

    class Noisy(nn.Module):
        def forward(self, x):
            post = m.posterior(x + 0.05 * torch.randn_like(x))
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.MultivariateNormal(post.loc, scale_tril=post.scale_tril))

    assert pairs.per_datapoint_state(m, Noisy(), (x,)) is None
