"""Posterior diagnostics against the closed forms of probabilistic PCA."""

import arviz as az
import matplotlib
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pyrovae import diagnostics
from pyrovae.errors import ConfigError, ModelError
from pyrovae.models import LinearGaussian
from pyrovae.registry import build_guide, build_model
from pyrovae.sites import DATA_PLATE, LATENT


def scaled_exact_guide(model, factor):
    """q(z|x) = the exact posterior with its covariance scaled by factor^2."""

    def guide(x):
        post = model.posterior(x)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(LATENT, dist.MultivariateNormal(post.loc, scale_tril=factor * post.scale_tril))

    return guide


def test_exact_posterior_weights_are_constant_khat_low_ess_full(ppca):
    model, x = ppca
    table = diagnostics.posterior_quality(model, model.exact_guide(), x, num_samples=1000)
    assert (table["k_hat"] <= diagnostics.KHAT_GOOD).all()
    assert table["ess"].to_numpy() == pytest.approx(1000, rel=1e-9)
    assert table["gap"].abs().max() < 1e-9
    assert table["log_px"].to_numpy() == pytest.approx(model.log_marginal(x).detach().numpy(), abs=1e-9)
    summary = diagnostics.quality_summary(table)
    assert summary["k_hat_good"] == 1.0 and summary["k_hat_bad"] == 0.0


def test_float32_exact_posterior_is_still_flat():
    torch.manual_seed(3)
    model = LinearGaussian((1, 1, 6), latent_dim=3, sigma=0.5, init_scale=1.0)
    x = model.decode(torch.randn(30, 3)).detach() + 0.5 * torch.randn(30, 1, 1, 6)
    table = diagnostics.posterior_quality(model, model.exact_guide(), x, num_samples=500)
    assert (table["k_hat"] <= diagnostics.KHAT_GOOD).all()
    assert table["ess"].to_numpy() == pytest.approx(500, rel=1e-6)


def test_narrow_guide_has_large_khat(ppca):
    model, x = ppca
    narrow = diagnostics.posterior_quality(model, scaled_exact_guide(model, 0.3), x, num_samples=1000)
    assert (narrow["k_hat"] > diagnostics.KHAT_BAD).mean() > 0.9
    assert (narrow["ess_fraction"] < 0.2).all()
    wide = diagnostics.posterior_quality(model, scaled_exact_guide(model, 1.3), x, num_samples=1000)
    assert (wide["k_hat"] < diagnostics.KHAT_GOOD).mean() > 0.9  # a wider proposal has bounded weights
    fig = diagnostics.plot_quality(narrow)
    assert fig.axes[0].get_ylabel() == "Pareto k-hat"
    plt.close(fig)
    worst = diagnostics.worst(narrow, 5)
    assert list(worst["k_hat"]) == sorted(narrow["k_hat"], reverse=True)[:5]


def test_khat_needs_a_tail():
    with pytest.raises(ConfigError, match="at least 20"):
        diagnostics.psis_khat(torch.randn(10, 3))


def test_inference_data_groups_dims_and_values(ppca):
    model, x = ppca
    guide = scaled_exact_guide(model, 1.1)
    labels = torch.arange(40) % 3
    index = torch.arange(100, 140)
    idata = diagnostics.to_inference_data(
        model, guide, x, num_samples=800, chains=4, predictive_draws=40, labels=labels, index=index.numpy()
    )
    assert set(idata.groups()) == {
        "posterior",
        "posterior_predictive",
        "observed_data",
        "log_likelihood",
        "sample_stats",
        "constant_data",
        "datapoint_stats",
    }
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "datapoint", "latent") and z.shape == (4, 200, 40, 2)
    assert list(idata.posterior["datapoint"].values) == list(range(100, 140))
    assert idata.posterior_predictive["x"].dims == ("chain", "draw", "datapoint", "pixel")
    assert idata.posterior_predictive["x"].shape == (4, 10, 40, 5)
    assert idata.observed_data["x"].dims == ("datapoint", "pixel")
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "datapoint")
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw", "datapoint")
    assert idata.constant_data["label"].dims == ("datapoint",)
    assert set(idata.datapoint_stats.data_vars) == {"log_px", "elbo", "gap", "k_hat", "ess", "ess_fraction"}

    # the values line up: draws per datapoint, log p(x|z) and the weights at those draws
    draws = torch.as_tensor(z.values).reshape(800, 40, 2)
    post = model.posterior(x)
    torch.testing.assert_close(draws.mean(0), post.loc.detach(), atol=0.15, rtol=0)
    torch.testing.assert_close(torch.as_tensor(idata.observed_data["x"].values), x.reshape(40, 5))
    with torch.no_grad():
        log_lik = model._likelihood(draws).log_prob(x)
        q = dist.MultivariateNormal(post.loc, scale_tril=1.1 * post.scale_tril)
        log_w = log_lik + dist.Normal(0.0, 1.0).log_prob(draws).sum(-1) - q.log_prob(draws)
    torch.testing.assert_close(torch.as_tensor(idata.log_likelihood["x"].values).reshape(800, 40), log_lik)
    torch.testing.assert_close(
        torch.as_tensor(idata.sample_stats["log_weight"].values).reshape(800, 40), log_w
    )

    summary = az.summary(idata, var_names=["z"])
    assert len(summary) == 40 * 2 and summary["r_hat"].between(0.95, 1.05).all()
    assert summary.loc["z[100, 0]", "mean"] == pytest.approx(post.loc[0, 0].item(), abs=0.15)
    for plot in (
        lambda: az.plot_posterior(idata, var_names=["z"], coords={"datapoint": [100, 101]}),
        lambda: az.plot_pair(idata, var_names=["z"], coords={"datapoint": [100]}),
        lambda: az.plot_ppc(idata, num_pp_samples=10),
    ):
        plot()
        plt.close("all")


def test_inference_data_names_dims_per_site_for_two_latent_layers():
    torch.manual_seed(0)
    model = build_model("vae2", x_shape=(1, 4, 4), latent_dim=(3, 2), hidden=(8,), hidden_top=(8,))
    guide = build_guide("mlp2", x_shape=(1, 4, 4), latent_dim=(3, 2), hidden=(8,), hidden_top=(8,))
    x = (torch.rand(6, 1, 4, 4) < 0.5).float()
    idata = diagnostics.to_inference_data(model, guide, x, num_samples=40, chains=2, predictive_draws=4)
    assert idata.posterior["z1"].dims == ("chain", "draw", "datapoint", "z1_latent")
    assert idata.posterior["z2"].sizes["z2_latent"] == 2
    assert idata.posterior_predictive["x"].shape == (2, 2, 6, 16)


def test_inference_data_rejects_bad_arguments(ppca):
    model, x = ppca
    with pytest.raises(ConfigError, match="chains"):
        diagnostics.to_inference_data(model, model.exact_guide(), x, num_samples=10, chains=3)
    with pytest.raises(ConfigError, match="index"):
        diagnostics.to_inference_data(model, model.exact_guide(), x, num_samples=20, chains=2, index=[1, 2])
    baseline = build_model("quadrant_baseline", x_shape=(1, 4, 4), hidden=(8,))
    none = build_guide("none", x_shape=(1, 4, 4))
    images = (torch.rand(4, 1, 4, 4) < 0.5).float()
    with pytest.raises(ModelError, match="no latent site"):
        diagnostics.to_inference_data(baseline, none, *baseline.inputs(images), images=images, num_samples=20)


def orthogonal_ppca(active_scales, sigma=0.5, n=400):
    """PPCA whose weight columns are orthogonal with norms ``active_scales`` (0: an unused unit),
    so the posterior is diagonal, and data drawn from it."""
    torch.manual_seed(2)
    d = len(active_scales)
    model = LinearGaussian((1, 1, 6), latent_dim=d, sigma=sigma).double()
    basis, _ = torch.linalg.qr(torch.randn(6, d, dtype=torch.float64))
    with torch.no_grad():
        model.weight.copy_(basis * torch.tensor(active_scales, dtype=torch.float64))
        x = model.decode(torch.randn(n, d, dtype=torch.float64)) + sigma * torch.randn(
            n, 1, 1, 6, dtype=torch.float64
        )
    return model, x


def diagonal_exact_guide(model):
    def guide(x):
        post = model.posterior(x)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(
                LATENT,
                dist.Normal(post.loc, post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()).to_event(1),
            )

    return guide


def test_active_units_and_kl_per_dim_match_known_inactive_dims():
    model, x = orthogonal_ppca([2.0, 0.0, 1.0, 0.0])
    act = diagnostics.latent_activity(model, diagonal_exact_guide(model), x)["z"]
    assert act.active.tolist() == [True, False, True, False] and act.num_active == 2
    assert act.variance[[1, 3]].abs().max() < 1e-20
    post = model.posterior(x)
    mean, var = post.loc.detach(), post.covariance_matrix.diagonal(dim1=-2, dim2=-1).detach()
    exact_kl = (0.5 * (var + mean**2 - 1 - var.log())).mean(0)
    torch.testing.assert_close(act.kl_per_dim, exact_kl)
    assert act.kl_per_dim[[1, 3]].abs().max() < 1e-12
    torch.testing.assert_close(act.variance, mean.var(0))
    assert "2 of 4 units active" in str(act)
    assert act.table()["active"].tolist() == [True, False, True, False]


def test_collapse_warns():
    model, x = orthogonal_ppca([0.0, 0.0, 0.0, 1.5])
    with pytest.warns(diagnostics.PosteriorCollapseWarning, match="1 of 4 units"):
        diagnostics.latent_activity(model, diagonal_exact_guide(model), x, warn_below=0.5)


def test_no_kl_per_unit_under_a_mixture_prior():
    torch.manual_seed(0)
    model = build_model(
        "vae", x_shape=(1, 4, 4), latent_dim=3, hidden=(8,), prior="mog", prior_options={"components": 4}
    )
    guide = build_guide("mlp", x_shape=(1, 4, 4), latent_dim=3, hidden=(8,))
    x = (torch.rand(50, 1, 4, 4) < 0.5).float()
    act = diagnostics.latent_activity(model, guide, x, warn_below=0.0)["z"]
    assert act.kl_per_dim is None and "not a product over units" in str(act)
    assert act.variance.shape == (3,)


class LinearGuide(nn.Module):
    """q(z|x) = N(A x + c, diag s^2) with fixed, deliberately wrong parameters."""

    def __init__(self, a, c, s):
        super().__init__()
        self.a, self.c, self.s = nn.Parameter(a), nn.Parameter(c), nn.Parameter(s)

    def forward(self, x):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(
                LATENT, dist.Normal(x.reshape(x.shape[0], -1) @ self.a.T + self.c, self.s).to_event(1)
            )


def test_amortization_gap_matches_closed_form():
    torch.manual_seed(4)
    model = LinearGaussian((1, 1, 5), latent_dim=2, sigma=0.5).double()
    with torch.no_grad():  # correlated columns: posterior correlation -0.37, weights of q* of finite variance
        base = torch.randn(5, dtype=torch.float64)
        model.weight.copy_(torch.stack([base, base + 1.2 * torch.randn(5, dtype=torch.float64)], 1))
        x = model.decode(torch.randn(8, 2, dtype=torch.float64)) + 0.5 * torch.randn(
            8, 1, 1, 5, dtype=torch.float64
        )
    post = model.posterior(x)
    torch.manual_seed(5)
    with torch.no_grad():  # the exact posterior mean map, perturbed, and scales off by 0.7x and 1.3x
        s2 = model.log_sigma.exp() ** 2
        exact_map = torch.linalg.solve(
            model.weight.T @ model.weight + s2 * torch.eye(2, dtype=torch.float64), model.weight.T
        )
        a = exact_map + 0.1 * torch.randn(2, 5, dtype=torch.float64)
        sd = post.covariance_matrix[0].diagonal().sqrt()
    guide = LinearGuide(a, -a @ model.bias.detach(), sd * torch.tensor([0.7, 1.3], dtype=torch.float64))
    table = diagnostics.amortization_gap(
        model, guide, x, steps=1500, lr=0.05, num_particles=64, num_samples=20000
    )
    with torch.no_grad():
        mu, sigma = (
            post.loc,
            post.covariance_matrix[0],
        )  # exact posterior N(mu, Sigma), the same Sigma for all
        prec = torch.linalg.inv(sigma)
        # best diagonal Gaussian under KL(q || p): mean mu, variances 1 / diag(Lambda)
        approx = 0.5 * (prec.diagonal().log().sum() + torch.logdet(sigma))
        m = x.reshape(8, -1) @ guide.a.T + guide.c
        s2 = guide.s**2
        diff = mu - m
        total = 0.5 * (
            (prec.diagonal() * s2).sum()
            + ((diff @ prec) * diff).sum(-1)
            - 2
            + torch.logdet(sigma)
            - s2.log().sum()
        )
    assert approx > 0.07 and (total - approx).min() > 0.1  # gaps worth measuring
    exact = model.log_marginal(x).detach().numpy()
    assert (table["log_px_k_hat"] < diagnostics.KHAT_BAD).all()
    assert table["elbo_local"].to_numpy() == pytest.approx(exact - approx.item(), abs=0.02)  # q*_n found
    assert table["approximation_gap"].to_numpy() == pytest.approx(approx.item(), abs=0.02)
    assert table["total_gap"].to_numpy() == pytest.approx(total.numpy(), abs=0.03)
    assert table["amortization_gap"].to_numpy() == pytest.approx((total - approx).numpy(), abs=0.03)
    assert table["log_px"].to_numpy() == pytest.approx(exact, abs=0.02)
    assert guide.a.requires_grad and model.weight.requires_grad  # handed back trainable
    assert model.weight.grad is None and guide.a.grad is None  # and untouched


def test_latent_plots(ppca):
    model, x = ppca
    guide = model.exact_guide()
    fig = diagnostics.plot_latent_means(model, guide, x, labels=torch.arange(40) % 4)
    plt.close(fig)
    fig = diagnostics.plot_manifold(model, n=5)
    plt.close(fig)
    t = diagnostics.traversals(model, guide, x, dims=[1], span=2.0, steps=5)
    z0 = model.posterior(x[:1]).loc.detach()
    expected = torch.cat([z0.repeat(5, 1)[:, :1], torch.linspace(-2, 2, 5, dtype=torch.float64)[:, None]], -1)
    torch.testing.assert_close(t, model.decode(expected).detach())
    path = diagnostics.interpolate(model, guide, x[:1], x[1:2], steps=4)
    torch.testing.assert_close(path[0], model.decode(z0)[0].detach())
    torch.testing.assert_close(path[-1], model.decode(model.posterior(x[1:2]).loc)[0].detach())
    fig = diagnostics.plot_images(path, nrow=4, title="interpolation")
    plt.close(fig)
    big = LinearGaussian((1, 1, 5), latent_dim=3).double()
    with pytest.raises(ModelError, match="2-D code"):
        diagnostics.plot_manifold(big)
