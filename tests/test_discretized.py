"""The 8-bit likelihoods against closed forms: masses over the 256 bins, logistic CDFs, bits/dim."""

import functools
import math

import pytest
import torch

from pyrovae.blocks.discretized import Categorical256, DiscretizedLogistic, DiscretizedLogisticMixture
from pyrovae.blocks.likelihoods import Likelihood
from pyrovae.errors import ConfigError, DataError

LEVELS = torch.arange(256, dtype=torch.float64) / 255


def _all_bins(d_of_shape):
    """log P of each of the 256 values of one subpixel, the distribution broadcast over them."""
    return d_of_shape(LEVELS.reshape(256, 1, 1, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loc", [-3.0, -0.2, 0.0, 0.37, 1.0, 1.5, 40.0])
@pytest.mark.parametrize("log_scale", [-12.0, -7.0, -3.0, 0.0, 4.0, 12.0])
def test_logistic_masses_sum_to_one(loc, log_scale, dtype, device):
    tensor = functools.partial(torch.tensor, dtype=dtype, device=device)
    d = DiscretizedLogistic(tensor([[[loc]]]), tensor([[[log_scale]]]))
    lp = d.log_prob(LEVELS.to(device, dtype).reshape(256, 1, 1, 1))
    assert torch.isfinite(lp).all()
    assert abs(lp.double().exp().sum().item() - 1) < 1e-5


def test_logistic_equals_difference_of_cdfs():
    torch.manual_seed(0)
    loc, log_scale = (
        torch.randn(50, dtype=torch.float64) * 0.6 + 0.5,
        torch.randn(50, dtype=torch.float64) - 3,
    )
    x = torch.randint(0, 256, (50,), dtype=torch.float64) / 255
    cdf = lambda v: torch.sigmoid((v - loc) / log_scale.exp())  # noqa: E731
    upper = torch.where(x > 254.5 / 255, torch.ones_like(x), cdf(x + 0.5 / 255))
    lower = torch.where(x < 0.5 / 255, torch.zeros_like(x), cdf(x - 0.5 / 255))
    d = DiscretizedLogistic(loc[:, None, None, None], log_scale[:, None, None, None])
    got = d.log_prob(x[:, None, None, None]).exp()
    torch.testing.assert_close(got, upper - lower, rtol=1e-9, atol=1e-12)


def test_mixture_masses_sum_to_one_and_equal_the_weighted_components():
    torch.manual_seed(1)
    m, c = 4, 3
    logits = torch.randn(m, 1, 1, dtype=torch.float64) * 3
    loc = torch.randn(m, c, 1, 1, dtype=torch.float64) * 2  # means well outside [0, 1] too
    log_scale = torch.tensor([-10.0, -4.0, 0.0, 8.0], dtype=torch.float64)[:, None, None, None].expand(
        m, c, 1, 1
    )
    d = DiscretizedLogisticMixture(logits, loc, log_scale)
    # every combination of 256 levels in 3 channels is too many: sum channel 0 over its 256
    # levels with the other two fixed, for each component: the mixture's masses of the joint
    # then sum to 1 over the 256^3 grid because each component factorizes over channels
    grid = torch.stack(torch.meshgrid(LEVELS, LEVELS[:1], LEVELS[-1:], indexing="ij"), 0).reshape(c, -1).T
    per = d.log_prob(grid.reshape(-1, c, 1, 1))
    weights = torch.softmax(logits.reshape(-1), 0)
    by_hand = torch.zeros(256, dtype=torch.float64)
    for k in range(m):
        comp = DiscretizedLogistic(loc[k], log_scale[k]).log_prob(grid.reshape(-1, c, 1, 1)).exp()
        by_hand += weights[k] * comp
    torch.testing.assert_close(per.exp(), by_hand, rtol=1e-9, atol=1e-15)
    one_channel = DiscretizedLogisticMixture(logits, loc[:, :1], log_scale[:, :1])
    assert abs(one_channel.log_prob(LEVELS.reshape(256, 1, 1, 1)).exp().sum().item() - 1) < 1e-9


def test_mixture_of_one_is_the_logistic():
    torch.manual_seed(2)
    loc, log_scale = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4) - 3
    x = torch.randint(0, 256, (2, 3, 4, 4)).float() / 255
    single = DiscretizedLogistic(loc, log_scale).log_prob(x)
    mixture = DiscretizedLogisticMixture(torch.zeros(2, 1, 4, 4), loc[:, None], log_scale[:, None]).log_prob(
        x
    )
    torch.testing.assert_close(single, mixture)


def test_gradients_finite_at_the_edges_and_extremes():
    loc = torch.tensor([-5.0, 0.0, 0.5, 1.0, 6.0]).reshape(5, 1, 1, 1).requires_grad_()
    log_scale = torch.tensor([-7.0, -7.0, 9.0, -7.0, 3.0]).reshape(5, 1, 1, 1).requires_grad_()
    for value in (0.0, 1.0, 128 / 255):
        x = torch.full((5, 1, 1, 1), value)
        DiscretizedLogistic(loc, log_scale).log_prob(x).sum().backward()
        assert torch.isfinite(loc.grad).all() and torch.isfinite(log_scale.grad).all()
        logits = torch.zeros(5, 2, 1, 1, requires_grad=True)
        mix = DiscretizedLogisticMixture(
            logits, loc[:, None].expand(5, 2, 1, 1, 1), log_scale[:, None].expand(5, 2, 1, 1, 1)
        )
        mix.log_prob(x).sum().backward()
        assert torch.isfinite(logits.grad).all()


def test_uniform_is_eight_bits_per_dim():
    """A categorical with equal logits puts 1/256 on every level: -log2 p(x) / D = 8 exactly."""
    shape = (3, 5, 7)
    d = Categorical256(torch.zeros(2, 3, 256, 5, 7))
    x = torch.randint(0, 256, (2, *shape)).float() / 255
    bits = -d.log_prob(x) / (math.prod(shape) * math.log(2))
    torch.testing.assert_close(bits, torch.full((2,), 8.0))


def test_categorical_picks_the_level():
    logits = torch.randn(1, 256, 1, 1, dtype=torch.float64)
    lp = Categorical256(logits).log_prob(LEVELS.reshape(256, 1, 1, 1))
    torch.testing.assert_close(lp, torch.log_softmax(logits.reshape(-1), 0))


@pytest.mark.parametrize("name", ["discretized_logistic", "discretized_logistic_mixture", "categorical"])
def test_samples_lie_on_the_levels_and_follow_the_masses(name):
    torch.manual_seed(3)
    lik = Likelihood(name, (1, 1, 1), components=3)
    out = torch.randn(*lik.param_shape) * 0.5
    d = lik(out)
    draws = d.sample((20000,)).reshape(-1)
    assert torch.equal(draws * 255, torch.round(draws * 255))
    counts = torch.bincount(torch.round(draws * 255).long(), minlength=256).double() / draws.numel()
    masses = d.log_prob(LEVELS.float().reshape(256, 1, 1, 1)).double().exp()
    assert (counts - masses).abs().max() < 0.02


def test_pairings_are_refused_by_name():
    with pytest.raises(ConfigError, match="8bit"):
        Likelihood("discretized_logistic", (1, 4, 4)).check_pixels("dynamic")
    with pytest.raises(ConfigError, match="bernoulli likelihood models binary"):
        Likelihood("bernoulli", (1, 4, 4)).check_pixels("8bit")
    with pytest.raises(DataError, match="8-bit pixels"):
        Likelihood("discretized_logistic", (1, 2, 2)).check_data(torch.full((1, 1, 2, 2), 0.3))
    with pytest.warns(UserWarning, match="density"):
        Likelihood("gaussian", (1, 4, 4)).check_pixels("8bit")  # allowed, reported as a density


@pytest.mark.parametrize(
    "prior,objective",
    [("standard", "elbo"), ("standard", "meanfield"), ("standard", "dreg"), ("mog", "iwae"), ("vamp", "iwae"),
     ("flow", "elbo")],
)  # fmt: skip
def test_resnet_vae_trains_with_every_prior_and_objective(prior, objective):
    """The ResNet pair with the discretized mixture: a few steps lower the loss, estimates finite."""
    import pyrovae
    from pyrovae.data.splits import Split
    from pyrovae.guides import ResNetGuide
    from pyrovae.inference import estimators
    from pyrovae.models import VAE
    from pyrovae.training.settings import TrainConfig

    torch.manual_seed(0)
    images = (torch.rand(48, 3, 8, 8) * 64 + torch.linspace(0, 160, 8)).round().to(torch.uint8)
    model = VAE((3, 8, 8), 3, decoder="resnet", channels=[8, 8], blocks=1, prior=prior,
                likelihood="discretized_logistic_mixture", components=2)  # fmt: skip
    guide = ResNetGuide((3, 8, 8), 3, channels=[8, 8], blocks=1)
    model.attach_guide(guide)
    cfg = TrainConfig(objective=objective, max_steps=40, batch_size=16, lr=3e-3, log_every=10, k=3)
    result = pyrovae.fit(
        model, guide, Split(images, torch.full((48,), -1), "8bit"), config=cfg, progress=False
    )
    losses = [r["loss"] for r in result.metrics if r["kind"] == "step" and r.get("loss") is not None]
    assert losses[-1] < losses[0]
    ll = estimators.log_likelihood(model, guide, images[:4].float() / 255, num_samples=8)
    assert torch.isfinite(ll).all() and (ll < 0).all()


def test_evaluate_reports_eight_bits_per_dim_for_the_uniform_model():
    """p(x|z) uniform over the 256 levels and q(z|x) = p(z): every log w equals log p(x) =
    -D ln 256, so the reported estimate is exact: 8 bits/dim with zero standard error."""
    import pyro
    import pyro.distributions as pdist

    from pyrovae.inference.scoring import evaluate_data

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pdist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", Categorical256(torch.zeros(x.shape[0], 3, 256, 4, 5)), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pdist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    levels = torch.randint(0, 256, (6, 3, 4, 5), dtype=torch.uint8)  # 8-bit data: bits/dim by default
    x = levels.float() / 255
    assert not evaluate_data(model, guide, x, num_samples=7, compile="none")["discrete"]  # floats: a density?
    out = evaluate_data(model, guide, x, images=levels, num_samples=7, compile="none")
    assert out["discrete"]
    assert out["log_likelihood_bits_per_dim"] == pytest.approx(8.0, abs=1e-5)
    assert out["elbo_bits_per_dim"] == pytest.approx(8.0, abs=1e-5)
    assert out["log_likelihood_bits_per_dim_stderr"] == pytest.approx(0.0, abs=1e-6)


def test_fit_checks_a_declared_pixel_mode_against_the_likelihood():
    """From Python as from a config: an 8-bit likelihood on binary pixels and a Bernoulli on
    8-bit levels are refused by name; a density on binary pixels is fitted with a warning."""
    import pyrovae
    from pyrovae.data.splits import Split
    from pyrovae.guides import MLPGuide
    from pyrovae.models import VAE
    from pyrovae.training.settings import TrainConfig

    levels = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)
    binary = Split((levels > 127).to(torch.uint8), torch.full((8,), -1), "static", maximum=1)
    cfg = TrainConfig(max_steps=1, batch_size=4)
    fit = lambda lik, split: pyrovae.fit(  # noqa: E731
        VAE((1, 4, 4), 2, hidden=[8], likelihood=lik), MLPGuide((1, 4, 4), 2, hidden=[8]), split,
        config=cfg, progress=False,
    )  # fmt: skip
    with pytest.raises(ConfigError, match='pixels = "8bit"'):
        fit("discretized_logistic", binary)
    with pytest.raises(ConfigError, match="bernoulli likelihood models binary"):
        fit("bernoulli", Split(levels, torch.full((8,), -1), "8bit"))
    with pytest.warns(UserWarning, match="density.*use bernoulli"):
        fit("gaussian", binary)
