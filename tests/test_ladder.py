"""The top-down hierarchical VAE (``ladder``): one layer is a VAE with a N(0, I) prior; a linear
ladder is a linear-Gaussian model whose exact log p(x) the estimators reach; the per-layer KLs
add up to the total; every layer is a Pyro site the guide shares the top-down path for."""

import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyrovae
from pyrovae import hooks
from pyrovae.blocks.hierarchy import gaussian_grid, on_grids
from pyrovae.diagnostics import latent_activity
from pyrovae.errors import ConfigError, ModelError
from pyrovae.inference import estimators
from pyrovae.registry import build_guide, build_model
from pyrovae.run.config import apply_overrides, config_from_dict, load_config
from pyrovae.run.recipes import build
from pyrovae.training.settings import TrainConfig

SHAPE = (1, 8, 8)
ROOT = Path(__file__).resolve().parents[1]


def ladder(layers=3, posterior="residual", channels=(4, 4), **options):
    torch.manual_seed(0)
    common = dict(x_shape=SHAPE, latent_dim=1, layers=layers, width=4, channels=list(channels), blocks=1)
    model = build_model("ladder", **common, **options)
    guide = build_guide("ladder", **common, posterior=posterior, activation=options.get("activation", "relu"),
                        norm=options.get("norm", "none"), spectral=options.get("spectral", 0.0))  # fmt: skip
    hooks.attach(model, guide)
    return model, guide


def data(n=6, seed=0):
    return torch.bernoulli(torch.full((n, *SHAPE), 0.3), generator=torch.Generator().manual_seed(seed))


def test_the_sites_run_top_down_and_the_guide_shares_the_models_top_down_path():
    model, guide = ladder(layers=3)
    x = data()
    tr = pyro.poutine.trace(guide).get_trace(x)
    assert [n for n, s in tr.nodes.items() if s["type"] == "sample" and n != "data"] == ["z3", "z2", "z1"]
    assert tr.nodes["z1"]["value"].shape == (6, 1, 2, 2) and tr.nodes["z1"]["fn"].event_dim == 3
    own = {id(p) for p in guide.parameters()}
    assert not own & {id(p) for p in model.parameters()}  # the top-down layers are the model's alone
    assert hooks.latent_sites(model) == hooks.latent_sites(guide) == ("z1", "z2", "z3")
    with pytest.raises(ModelError, match="same layers"):
        build_guide("ladder", x_shape=SHAPE, latent_dim=1, layers=2, width=4, channels=[4, 4]).attach_model(
            model
        )


@pytest.mark.parametrize("layers", [1, 2, 8])
def test_the_shipped_config_builds_a_guide_of_the_models_depth(layers):
    """The guide takes its depth from the model's latent_dim, one layer's an integer included."""
    cfg = load_config(ROOT / "configs" / "mnist_ladder.toml").to_dict()
    model, guide = build(config_from_dict(apply_overrides(cfg, [f"model.layers={layers}"])), (1, 28, 28))
    assert guide.layers == model.layers == layers and guide.model is model


def test_one_layer_is_a_vae_with_a_standard_normal_prior():
    """L = 1: the ladder's ELBO equals that of the plain VAE z ~ N(0, I), x ~ p(x | f(z)), with f
    the ladder's one cell and decoder and q its guide's Gaussian, on the same draws."""
    model, guide = ladder(layers=1)
    layer = model.down[0]
    with torch.no_grad():
        for p in guide.heads.parameters():
            p.normal_(0, 0.3)  # a guide away from the prior

    def vae(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z1", dist.Normal(0.0, 1.0).expand([1, 2, 2]).to_event(3))
            pyro.sample("x", model.likelihood(model.params(layer(model.start(x.shape[0]), z))), obs=x)

    def vae_guide(x):
        d = guide.features(x)[0]
        with pyro.plate("data", x.shape[0]):
            delta = gaussian_grid(on_grids(guide.heads[0], torch.cat([model.start(x.shape[0]), d], -3)), 0.0)
            pyro.sample("z1", dist.Normal(delta[0], delta[1] + guide.min_scale).to_event(3))

    x = data()
    torch.manual_seed(1)
    ours = estimators.elbo(model, guide, x, num_samples=4)
    torch.manual_seed(1)
    theirs = estimators.elbo(vae, vae_guide, x, num_samples=4)
    torch.testing.assert_close(ours, theirs)


class LinearGaussianLikelihood(torch.nn.Module):
    """x ~ N(params, sigma^2 I): the registry's Gaussian squashes its mean by a sigmoid."""

    sigma = 0.3

    def forward(self, params):
        return dist.Normal(params, self.sigma).to_event(3)

    def mean(self, params):
        return params

    def check_data(self, x):
        """Any real values."""


def linear_ladder(layers=3):
    """A ladder whose every map is linear, whose prior scales are constant (the scale half of
    each prior head zeroed) and whose likelihood is N(decoder(h_0), sigma^2 I): a linear-Gaussian
    model. Each layer is one number (a 1x1 grid), so the guide's residual Gaussians, linear in
    (h, x) with constant scales, hold the exact posterior's top-down factors."""
    model, guide = ladder(layers, channels=(4, 4, 4), activation="identity", likelihood="gaussian")
    model.likelihood = LinearGaussianLikelihood()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
        for layer in model.down:
            layer.prior.weight[1:].zero_()  # latent_dim 1: channel 0 is the loc, channel 1 the scale
    return model, guide


def exact_log_likelihood(model, x: torch.Tensor) -> torch.Tensor:
    """log p(x) of a linear ladder: x = m + J eps + sigma eta with eps, eta standard normal, J the
    Jacobian of the mean of x in the layers' standardized noises."""
    sizes = [model.grid] * model.layers

    def mean(eps):
        h = model.start(1)
        for (_, layer), e in zip(model.order(), eps.split([math.prod(s) for s in sizes])):
            loc, scale = model.prior_params(layer, h)
            h = layer(h, loc + scale * e.reshape(1, *model.grid))
        return model.params(h).reshape(-1)

    zero = torch.zeros(sum(math.prod(s) for s in sizes))
    jac = torch.autograd.functional.jacobian(mean, zero)
    cov = jac @ jac.T + model.likelihood.sigma**2 * torch.eye(jac.shape[0])
    return dist.MultivariateNormal(mean(zero).detach(), cov).log_prob(x.reshape(x.shape[0], -1))


def test_a_linear_gaussian_ladder_has_an_exact_log_likelihood_the_estimators_reach():
    model, guide = linear_ladder()
    x = (model.sample(4) + 0.3 * torch.randn(4, *SHAPE)).detach()
    exact = exact_log_likelihood(model, x)
    cfg = TrainConfig(max_steps=500, batch_size=4, lr=1e-2, train_only=["guide"], compile="none")
    pyrovae.fit(model, guide, x, config=cfg, device="cpu", progress=False)  # the guide only: p is fixed
    torch.manual_seed(0)
    elbo = estimators.elbo(model, guide, x, num_samples=2000)
    log_px = estimators.log_likelihood(model, guide, x, num_samples=5000)
    assert (elbo <= exact + 0.02).all() and (elbo > exact - 0.1).all()  # a near-exact guide
    torch.testing.assert_close(log_px.double(), exact.double(), atol=0.02, rtol=0)


def test_the_per_layer_kls_add_up_to_the_total():
    """E_q[KL(q(z_l | x, z_>l) || p(z_l | z_>l))] in closed form per layer, summed, against the
    Monte Carlo KL of the whole hierarchy, E_q[log q(z | x) - log p(z)]."""
    model, guide = ladder(layers=4, posterior="precision")
    with torch.no_grad():
        for p in [*guide.heads.parameters(), *(layer.prior.weight for layer in model.down)]:
            p.normal_(0, 0.2)
    x = data(4)
    torch.manual_seed(0)
    per_layer = latent_activity(model, guide, x, num_samples=4000, warn_below=0)
    total = estimators.evaluate_terms(model, guide, x, num_samples=4000)["kl"]
    summed = sum(a.kl_per_dim.sum() for a in per_layer.values())
    assert set(per_layer) == {"z1", "z2", "z3", "z4"}
    assert float(summed) == pytest.approx(float(total.mean()), abs=0.05)


def test_the_ladder_refuses_bad_options():
    with pytest.raises(ConfigError, match="layers"):
        build_model("ladder", x_shape=SHAPE, latent_dim=1, layers=0, channels=[4, 4])
    with pytest.raises(ConfigError, match="posterior"):
        build_guide("ladder", x_shape=SHAPE, latent_dim=1, channels=[4, 4], posterior="product")
    with pytest.raises(ConfigError, match="normalisation"):
        build_model("ladder", x_shape=SHAPE, latent_dim=1, channels=[4, 4], norm="batch")


def convs(module):
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def test_weight_normalisation_starts_as_the_plain_ladder_trains_and_resumes(tmp_path):
    """norm = "weight" (Salimans & Kingma 2016, eq. 2): each convolution's weight is g v / ||v||
    per output channel, at the start the plain ladder's weight (a zero-started one exactly zero,
    with g = 0 and a random v); a run moves every g and resumes bitwise."""
    plain, _ = ladder(layers=2)
    normed, _ = ladder(layers=2, norm="weight")
    for a, b in zip(convs(plain), convs(normed), strict=True):
        g, v = b.parametrizations.weight.original0, b.parametrizations.weight.original1
        out = 1 if isinstance(b, nn.ConvTranspose2d) else 0
        norm = v.pow(2).sum([d for d in range(v.dim()) if d != out], keepdim=True).sqrt()
        torch.testing.assert_close(b.weight, g * v / norm)
        torch.testing.assert_close(b.weight, a.weight)
        assert a.weight.any() or (not b.weight.any() and not g.any() and v.any())
    model, guide = resumes_bitwise(tmp_path, norm="weight")
    assert all(c.parametrizations.weight.original0.any() for c in (*convs(model), *convs(guide)))


def resumes_bitwise(tmp_path, **options):
    """Train a two-layer ladder with ``options`` 8 steps, and 4 then 4 more resumed: the two end
    in the same state (every parameter and buffer) bit for bit; the resumed pair is returned."""
    out = {}
    for name, steps, resume in (("a", 8, False), ("b", 4, False), ("b", 8, True)):
        if not resume:
            model, guide = ladder(layers=2, **options)
        cfg = TrainConfig(max_steps=steps, batch_size=3, compile="none", checkpoint_every=4)
        pyrovae.fit(model, guide, data(), config=cfg, device="cpu", progress=False, seed=3,
                    run_dir=tmp_path / name, resume=resume)  # fmt: skip
        out[name] = [t.clone() for t in (*model.state_dict().values(), *guide.state_dict().values())]
    assert all(torch.equal(a, b) for a, b in zip(out["a"], out["b"], strict=True))
    return model, guide


def largest_singular_values(module) -> torch.Tensor:
    """The sum of each convolution's largest singular value, by torch's SVD (the weight as a matrix,
    first dim by the rest)."""
    return sum(torch.linalg.matrix_norm(c.weight.detach().flatten(1), ord=2) for c in convs(module))


def test_spectral_regularisation_is_lambda_times_the_largest_singular_values_and_resumes(tmp_path):
    """spectral = lambda (NVAE, Vahdat & Kautz 2020, sec. 3.2): once power iteration has
    converged the penalty is lambda times the sum of the largest singular values of the owner's
    convolutions (torch's SVD), per datapoint of the batch; training with it lowers that sum
    against the same run without it; u and v are buffers that training moves and a resumed run
    carries, bit for bit."""
    model, guide = ladder(layers=2, spectral=0.1)
    x = data()
    for owner in (model, guide):
        owner.spectral.iterate(1000)
        torch.testing.assert_close(owner.auxiliary_loss(x), 0.1 * len(x) * largest_singular_values(owner))
    plain, plain_guide = ladder(layers=2)
    assert plain.spectral is None and hooks.auxiliary_loss(plain, plain_guide, x) is None
    with pytest.raises(ConfigError, match="spectral regularisation weight"):
        ladder(layers=2, spectral=-1.0)
    sums = {}
    for weight in (0.0, 50.0):
        m, g = ladder(layers=2, spectral=weight)
        start = [t.clone() for t in m.spectral.buffers()] if weight else []
        cfg = TrainConfig(max_steps=30, batch_size=6, compile="none", lr=1e-2)
        pyrovae.fit(m, g, data(), config=cfg, device="cpu", progress=False, seed=1)
        sums[weight] = float(largest_singular_values(m) + largest_singular_values(g))
    assert sums[50.0] < sums[0.0]
    assert not all(torch.equal(a, b) for a, b in zip(start, m.spectral.buffers(), strict=True))
    resumes_bitwise(tmp_path, spectral=0.1, norm="weight")
    ends = {}
    for mode in ("none", "capture"):  # the loss only reads u and v: capture records it
        m, g = ladder(layers=2, spectral=0.1)
        cfg = TrainConfig(max_steps=4, batch_size=3, compile=mode)
        r = pyrovae.fit(m, g, data(), config=cfg, device="cpu", progress=False, seed=1)
        ends[r.compile] = m.spectral.u0.clone()
    torch.testing.assert_close(ends["capture"], ends["none"])


def test_updates_with_an_outlying_gradient_norm_are_skipped_and_counted(tmp_path):
    """train.skip_above (VDVAE): a finite step whose gradient norm exceeds it changes nothing and
    is counted in the rows; the run goes on, and a resumed run keeps the count."""
    model, guide = ladder(layers=2)
    before = [p.detach().clone() for p in (*model.parameters(), *guide.parameters())]
    cfg = TrainConfig(max_steps=4, batch_size=3, log_every=1, skip_above=1e-6, compile="none")
    r = pyrovae.fit(model, guide, data(), config=cfg, device="cpu", progress=False, run_dir=tmp_path)
    assert [row["outliers"] for row in r.metrics if row["kind"] == "step"] == [1, 2, 3, 4]
    assert all(torch.equal(a, b) for a, b in zip(before, (*model.parameters(), *guide.parameters())))
    cfg = TrainConfig(max_steps=6, batch_size=3, log_every=1, skip_above=1e9, compile="none")
    r = pyrovae.fit(
        model, guide, data(), config=cfg, device="cpu", progress=False, run_dir=tmp_path, resume=True
    )
    assert [row["outliers"] for row in r.metrics if row["kind"] == "step"] == [4, 4]
    assert not all(torch.equal(a, b) for a, b in zip(before, (*model.parameters(), *guide.parameters())))


def test_a_streak_of_large_norms_is_not_skipped_past_the_patience():
    """Norms above skip_above in every step are the model's state, not spikes: after
    skip_patience of them in a row the (clipped) updates go through, with one warning."""
    model, guide = ladder(layers=2)
    before = [p.detach().clone() for p in (*model.parameters(), *guide.parameters())]
    cfg = TrainConfig(max_steps=6, batch_size=3, log_every=1, skip_above=1e-6, skip_patience=3, grad_clip=1.0,
                      compile="none")  # fmt: skip
    with pytest.warns(RuntimeWarning, match="3 steps in a row had a gradient norm above train.skip_above"):
        r = pyrovae.fit(model, guide, data(), config=cfg, device="cpu", progress=False)
    assert [row["outliers"] for row in r.metrics if row["kind"] == "step"] == [1, 2, 3, 3, 3, 3]
    assert not all(torch.equal(a, b) for a, b in zip(before, (*model.parameters(), *guide.parameters())))
