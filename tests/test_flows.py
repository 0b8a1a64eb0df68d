"""Flow guides: log q(z | x) against the change of variables, probabilistic PCA's full-covariance
posterior reached by a flow and missed by a diagonal Gaussian, and every estimator with them."""

import math

import pyro
import pytest
import torch

from pyrovae.diagnostics.importance import psis_khat
from pyrovae.errors import ConfigError, ModelError
from pyrovae.guides import MLPGuide
from pyrovae.guides.discrete import MixtureGuide
from pyrovae.inference import ais, bidirectional, estimators, weights
from pyrovae.models import VAE, LinearGaussian
from pyrovae.models.mixture import MixtureOfFactorAnalysers
from pyrovae.registry import build_guide

FLOWS = ["iaf", "householder"]


VARIANTS = [
    ("iaf", {}),  # affine, conditioned on 5 encoder outputs, random order
    ("iaf", {"flow_gated": True}),
    ("iaf", {"flow_context": 0}),
    ("iaf", {"flow_context": 0, "flow_gated": True, "flow_order": "sequential"}),
    ("householder", {}),
]


@pytest.mark.parametrize("flow, options", VARIANTS)
def test_log_q_is_the_change_of_variables(flow, options):
    """log q(z_T | x) = log N(z_0) - log |det dz_T/dz_0|, the determinant of the Jacobian taken by
    autograd; at the guide's own draws (cached) and at values it did not draw (inverted); for
    every form of the IAF (affine or gated, with or without context, in either order)."""
    torch.manual_seed(0)
    options = {"flow_context": 5, **options}
    guide = MLPGuide((1, 2, 3), 4, hidden=[16], flow=flow, flow_depth=3, flow_hidden=[24], **options)
    guide = guide.double()
    x = torch.rand(5, 1, 2, 3, dtype=torch.float64)
    q = guide.posterior(x)
    z0 = q.base_dist.sample()

    def move(z):
        for t in q.transforms:
            z = t(z)
        return z

    zt = move(z0)
    jac = torch.autograd.functional.jacobian(move, z0)  # (N, D, N, D): rows do not mix
    log_det = torch.stack([torch.linalg.slogdet(jac[i, :, i, :])[1] for i in range(5)])
    expected = q.base_dist.log_prob(z0) - log_det
    torch.testing.assert_close(q.log_prob(zt), expected)
    fresh = guide.posterior(x)  # no cache: log q at given values inverts the flow
    torch.testing.assert_close(fresh.log_prob(zt.clone()), expected)
    assert not torch.allclose(zt, z0) and q.batch_shape == (5,) and q.event_shape == (4,)


def correlated_ppca():
    """A 2-latent PCA whose posterior is strongly correlated (nearly parallel columns of W), and
    256 datapoints drawn from it; the best diagonal Gaussian misses it by a known KL."""
    torch.manual_seed(2)
    model = LinearGaussian((1, 1, 5), latent_dim=2, sigma=0.5)
    with torch.no_grad():
        col = torch.randn(5)
        model.weight.copy_(torch.stack([col, col + 0.3 * torch.randn(5)], 1))
        model.bias.copy_(torch.randn(5))
        x = model.decode(torch.randn(256, 2)) + 0.5 * torch.randn(256, 1, 1, 5)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, x


def fit_guide(model, guide, x, steps=1000, enumerated=False):
    optim = torch.optim.Adam(guide.parameters(), lr=3e-3)
    decay = torch.optim.lr_scheduler.ExponentialLR(optim, 0.05 ** (1 / steps))
    nesting = weights.plate_nesting(model, guide, (x,), {})
    with pyro.validation_enabled(False):
        for _ in range(steps):
            optim.zero_grad()
            terms = weights.log_prob_terms(
                model, guide, x, num_samples=8, max_plate_nesting=nesting, enumerated=enumerated
            )
            (-terms.elbo.mean()).backward()
            optim.step()
            decay.step()
    return guide


def test_a_flow_guide_reaches_the_exact_log_likelihood_where_a_diagonal_one_cannot():
    """PPCA's posterior is a full-covariance Gaussian, the same for every x up to its mean
    (Tipping & Bishop 1999, eq. 7): an affine autoregressive or Householder flow represents it,
    a diagonal Gaussian misses it by KL = 1/2 (sum_i log (S^-1)_ii + log det S) at best (S the
    posterior covariance). Trained side by side (1000 steps), the flows' ELBO comes within 0.15 nats of the
    exact log p(x); the diagonal guide's gap stays at (above) that KL; IWAE >= ELBO for each."""
    model, x = correlated_ppca()
    exact = model.log_marginal(x).mean().item()
    cov = model.posterior(x[:1]).covariance_matrix[0]
    best_diagonal_kl = 0.5 * (torch.linalg.inv(cov).diagonal().log().sum() + torch.logdet(cov)).item()
    assert best_diagonal_kl > 1  # a posterior a diagonal Gaussian cannot represent
    gaps = {}
    for flow in ("none", *FLOWS):
        torch.manual_seed(0)
        guide = MLPGuide((1, 1, 5), 2, hidden=[32], flow=flow, flow_depth=2, flow_hidden=[32], flow_context=8)
        fit_guide(model, guide, x)
        with torch.no_grad():
            elbo = estimators.elbo(model, guide, x, num_samples=500).mean().item()
            iwae = estimators.iwae_bound(model, guide, x, num_samples=500).mean().item()
        gaps[flow] = exact - elbo
        assert iwae >= elbo - 1e-6 and iwae <= exact + 0.01
    assert best_diagonal_kl - 0.02 < gaps["none"] < best_diagonal_kl + 0.2  # the diagonal guide's floor
    for flow in FLOWS:
        assert gaps[flow] < 0.15 < best_diagonal_kl - 0.5, gaps


@pytest.fixture(scope="module")
def trained_iaf():
    model, x = correlated_ppca()
    torch.manual_seed(0)
    guide = MLPGuide((1, 1, 5), 2, hidden=[32], flow="iaf", flow_hidden=[32], flow_context=8)
    return model, fit_guide(model, guide, x), x[:40]


def test_every_estimator_reads_a_flow_guide(trained_iaf):
    """IS, PSIS k-hat, AIS from the guide (log q at the chains' values: the flow inverted) and
    BDMC, on the exact log p(x)."""
    model, guide, x = trained_iaf
    exact = model.log_marginal(x)
    torch.manual_seed(1)
    lw = estimators.log_weights(model, guide, x, num_samples=1000)
    error = estimators.iwae_from_log_weights(lw) - exact
    assert error.mean().abs() < 0.01 and error.abs().max() < 0.05 and psis_khat(lw.double()).mean() < 0.5
    r = ais.ais_log_likelihood(model, guide, x, num_steps=20, num_chains=8, progress=False)
    assert (r.log_likelihood - exact).abs().mean() < 0.03  # 8 chains: about 0.02 of noise per datapoint
    data = bidirectional.simulate(model, x)
    s = bidirectional.sandwich(model, guide, data, num_steps=20, num_chains=8, leapfrog_steps=5)
    truth = model.log_marginal(data.x)
    assert (s.lower - truth).mean() < 0.01 and (s.upper - truth).mean() > -0.01 and s.gap.mean() < 0.05


@pytest.mark.parametrize("flow", FLOWS)
def test_enumeration_with_a_flow_on_the_continuous_part(flow):
    """A mixture guide q(c | x) q(z | x, c) with a flow on z, fitted with c summed out: enumerating
    c and sampling it both estimate the exact log p(x) of a mixture of factor analysers (a wrong
    log q at the enumerated shapes would bias them)."""
    torch.manual_seed(3)
    model = MixtureOfFactorAnalysers((1, 1, 4), (3, 2), sigma=2.0)  # broad posteriors: IS converges
    with torch.no_grad():
        c, z = torch.randint(3, (30,)), torch.randn(30, 2, 1)
        x = ((model.weight[c] @ z).squeeze(-1) + model.bias[c] + 0.5 * torch.randn(30, 4)).reshape(
            30, 1, 1, 4
        )
    exact = model.log_marginal(x)
    for p in model.parameters():
        p.requires_grad_(False)
    guide = MixtureGuide((1, 1, 4), (3, 2), hidden=[16], flow=flow, flow_hidden=[16])
    fit_guide(model, guide, x, steps=300, enumerated=True)
    for enumerated in (True, False):
        guide.infer = {"enumerate": "parallel"} if enumerated else {}
        with torch.no_grad():
            est = estimators.log_likelihood(model, guide, x, num_samples=4000)
        assert (est - exact).mean().abs() < 0.02, (enumerated, (est - exact).mean())


@pytest.mark.parametrize(
    "name, latent", [("mlp", 3), ("conv", 3), ("resnet", 3), ("mlp2", [3, 2]), ("cond_mlp", 3)]
)
def test_every_gaussian_guide_takes_a_flow(name, latent):
    x_shape = (1, 8, 8) if name != "resnet" else (3, 8, 8)
    options = dict(channels=[4, 8]) if name in ("conv", "resnet") else {}
    for flow in FLOWS:
        guide = build_guide(name, x_shape=x_shape, latent_dim=latent, flow=flow, flow_hidden=[8], **options)
        assert sum("head" in n for n, _ in guide.named_parameters()) > 0


def test_bad_flow_options_and_the_vamp_prior_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown guide flow 'planar'"):
        MLPGuide((1, 2, 2), 2, flow="planar")
    with pytest.raises(ConfigError, match="guide.flow_depth must be an integer >= 1"):
        MLPGuide((1, 2, 2), 2, flow="iaf", flow_depth=0)
    with pytest.raises(ConfigError, match="guide.flow_hidden must be a list of positive integers"):
        MLPGuide((1, 2, 2), 2, flow="iaf", flow_hidden=[])
    model = VAE((1, 2, 2), 2, prior="vamp", prior_options=dict(components=3))
    with pytest.raises(ModelError, match="the VampPrior mixes the guide's Gaussians"):
        model.attach_guide(MLPGuide((1, 2, 2), 2, flow="iaf"))
    assert math.isfinite(MLPGuide((1, 2, 2), 2).params(torch.zeros(1, 1, 2, 2))[1].sum().item())
    with pytest.raises(ConfigError, match="unknown guide flow_order 'reversed'"):
        MLPGuide((1, 2, 2), 2, flow="iaf", flow_order="reversed")
    with pytest.raises(ConfigError, match="guide.flow_gated must be true or false"):
        MLPGuide((1, 2, 2), 2, flow="iaf", flow_gated="yes")
    with pytest.raises(ConfigError, match="guide.flow_context must be an integer >= 1"):
        MLPGuide((1, 2, 2), 2, flow="householder", flow_context=0)


def test_a_checkpoint_keeps_the_form_of_its_iaf():
    """An IAF's checkpoint says whether it is gated: loaded into the other form, it is refused
    with the setting to use; one written before the form was recorded is the gated one."""
    gated = MLPGuide((1, 2, 2), 2, flow="iaf", flow_gated=True).state_dict()
    with pytest.raises(
        ConfigError,
        match="this checkpoint's IAF is gated and this guide's affine: set guide.flow_gated = true",
    ):
        MLPGuide((1, 2, 2), 2, flow="iaf").load_state_dict(gated)
    older = {k: v for k, v in gated.items() if not k.endswith("gate")}
    MLPGuide((1, 2, 2), 2, flow="iaf", flow_gated=True).load_state_dict(older)
    with pytest.raises(ConfigError, match="set guide.flow_gated = true"):
        MLPGuide((1, 2, 2), 2, flow="iaf").load_state_dict(older)
    affine = MLPGuide((1, 2, 2), 2, flow="iaf").state_dict()
    with pytest.raises(
        ConfigError, match="IAF is affine and this guide's gated: set guide.flow_gated = false"
    ):
        MLPGuide((1, 2, 2), 2, flow="iaf", flow_gated=True).load_state_dict(affine)


@pytest.mark.parametrize("flow", FLOWS)
def test_captured_training_of_a_flow_guide_replays_the_eager_one(flow):
    """train.compile = "capture" with a flow guide: the same losses and parameters as eager."""
    import pyrovae
    from pyrovae.training.settings import TrainConfig

    x = torch.bernoulli(torch.full((40, 1, 4, 4), 0.4), generator=torch.Generator().manual_seed(0))
    out = {}
    for mode in ("none", "capture"):
        torch.manual_seed(0)
        model = VAE((1, 4, 4), 3, hidden=[16])
        guide = MLPGuide((1, 4, 4), 3, hidden=[16], flow=flow, flow_hidden=[8], flow_context=4)
        cfg = TrainConfig(max_steps=8, batch_size=16, log_every=1, compile=mode)
        r = pyrovae.fit(model, guide, x, config=cfg, device="cpu", progress=False, seed=5)
        assert r.compile == mode
        losses = torch.tensor([row["loss"] for row in r.metrics if row["kind"] == "step"])
        out[mode] = losses, [p.detach().clone() for p in guide.parameters()]
    torch.testing.assert_close(out["capture"][0], out["none"][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(out["capture"][1], out["none"][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_diagnostics_read_a_flow_guide():
    """k-hat table, active units (E_q[z] from draws: a flow has no closed-form mean), ArviZ
    InferenceData, the amortization gap with the guide's own family refined, latent means."""
    import warnings

    from pyrovae import diagnostics

    torch.manual_seed(0)
    model = VAE((1, 4, 4), 3, hidden=[16])
    guide = MLPGuide((1, 4, 4), 3, hidden=[16], flow="iaf", flow_hidden=[8], flow_context=4)
    x = torch.bernoulli(torch.full((30, 1, 4, 4), 0.4))
    assert diagnostics.posterior_quality(model, guide, x, num_samples=100).shape[0] == 30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        act = diagnostics.latent_activity(model, guide, x)["z"]
    assert act.variance.shape == (3,) and "q at 'z', TransformedDistribution," in act.note
    assert diagnostics.to_inference_data(model, guide, x, num_samples=40).posterior["z"].shape[-1] == 3
    gaps = diagnostics.amortization_gap(model, guide, x[:3], steps=20, num_samples=200)
    assert (gaps["amortization_gap"] > -0.5).all()  # the local flow starts at the guide's output
    means = diagnostics.batched_posterior_means(guide, x)
    assert means.shape == (30, 3) and torch.isfinite(means).all()


def test_flow_guides_and_the_flow_prior_pass_the_dry_config_check():
    """``validate`` builds the pair on the meta device; Pyro's autoregressive networks read a
    tensor back while they are built, so they are built on the CPU and moved there."""
    from pyrovae.run.config import config_from_dict
    from pyrovae.run.configcheck import validate

    for flow in FLOWS:
        raw = {
            "model": {"name": "vae", "latent_dim": 4, "prior": "flow"},
            "guide": {"name": "mlp", "flow": flow},
        }
        model, guide = validate(config_from_dict(raw))
        assert next(guide.head.parameters()).device.type == "meta"
        assert next(model.prior.parameters()).device.type == "meta"
