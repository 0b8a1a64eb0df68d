"""A deterministic encoder (q(z|x) the point mass at mu(x), a WAE's encoder, Tolstikhin et al.
2018): the WAE objective trains it, and every estimator or objective that needs q's density
refuses it by name, while AIS from the prior, which needs none, still measures log p(x)."""

import json
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovae
from pyrovae.errors import ConfigError, ModelError
from pyrovae.guides import MLPGuide
from pyrovae.inference import ais, estimators, weights
from pyrovae.models import VAE
from pyrovae.run import cli
from pyrovae.training.catalog import make_objective
from pyrovae.training.regularized import mmd
from pyrovae.training.settings import TrainConfig

CONFIGS = Path(__file__).parents[1] / "configs"


def pair():
    torch.manual_seed(0)
    model = VAE((1, 4, 4), 3, hidden=[16])
    guide = MLPGuide((1, 4, 4), 3, hidden=[16], deterministic=True)
    x = torch.bernoulli(torch.full((12, 1, 4, 4), 0.4), generator=torch.Generator().manual_seed(1))
    return model, guide, x


def test_wae_of_a_deterministic_encoder_is_reconstruction_at_the_mean_plus_mmd():
    """Tolstikhin et al. (2018), Algorithm 2: -sum_n log p(x_n | mu(x_n)) + N lambda MMD^2 of
    {mu(x_n)} against as many prior draws, computed here from the decoder by hand."""
    model, guide, x = pair()
    torch.manual_seed(3)
    value = make_objective("wae", wae_lambda=10.0)(model, guide, x)
    loc, _ = guide.params(x)
    torch.manual_seed(3)
    prior = torch.randn(12, 3)  # the objective's one draw from p(z) = N(0, I)
    log_lik = torch.distributions.Bernoulli(probs=model.decode(loc)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(value, -log_lik.sum() + 12 * 10.0 * mmd(loc, prior))
    assert guide.posterior(x).sample().equal(loc)  # no noise: the point mass itself


@pytest.mark.parametrize(
    "estimate",
    [
        lambda m, g, x: estimators.elbo(m, g, x, num_samples=2),
        lambda m, g, x: estimators.iwae_bound(m, g, x, num_samples=2),
        lambda m, g, x: estimators.log_likelihood(m, g, x, num_samples=2),
        lambda m, g, x: estimators.importance_ess(m, g, x, num_samples=2),
        lambda m, g, x: ais.ais_log_likelihood(m, g, x, num_steps=2, num_chains=2, progress=False),
    ],
    ids=["elbo", "iwae", "log_likelihood", "ess", "ais_from_the_guide"],
)
def test_density_estimators_refuse_a_point_mass_by_name(estimate):
    model, guide, x = pair()
    with pytest.raises(ModelError, match=r"needs the density of q\(z\|x\).*\['z'\] are point masses"):
        estimate(model, guide, x)


@pytest.mark.parametrize(
    "name", ["elbo", "enum", "meanfield", "iwae", "dreg", "free_bits", "tcvae", "infovae", "factorvae"]
)
def test_objectives_that_need_a_density_refuse_a_point_mass_by_name(name):
    model, guide, x = pair()
    objective = make_objective(
        name, dataset_size=12, **({"factor_hidden": [8]} if name == "factorvae" else {})
    )
    with pytest.raises(ModelError, match="point mass") as caught:
        objective(model, guide, x)
    assert name in str(caught.value) or "the ELBO, the IWAE bound" in str(caught.value)
    assert make_objective("infovae", mmd_alpha=1.0)(model, guide, x).isfinite()  # alpha 1: no KL


def test_ais_from_the_prior_needs_no_density_of_q(ppca):
    """From the prior the guide plays no part: a point-mass guide gives the exact guide's AIS
    bitwise, within 0.05 nats of the closed-form log p(x) of probabilistic PCA."""
    model, x = ppca
    point = MLPGuide((1, 1, 5), 2, hidden=[8], deterministic=True).double()
    runs = []
    for guide in (point, model.exact_guide()):
        torch.manual_seed(0)
        options = dict(num_steps=300, num_chains=8, initial="prior", progress=False)
        runs.append(ais.ais_log_likelihood(model, guide, x, **options).log_likelihood)
    assert torch.equal(runs[0], runs[1])
    assert abs((runs[0] - model.log_marginal(x)).mean()) < 0.05


def test_a_deterministic_encoder_has_no_flow_and_takes_a_boolean():
    with pytest.raises(ConfigError, match="guide.flow = 'none'"):
        MLPGuide((1, 4, 4), 3, flow="iaf", deterministic=True)
    with pytest.raises(ConfigError, match="guide.deterministic must be true or false"):
        MLPGuide((1, 4, 4), 3, deterministic="yes")


def test_fit_validates_a_point_mass_by_the_objectives_loss_and_keeps_the_best():
    model, guide, x = pair()
    data = torch.bernoulli(torch.full((80, 1, 4, 4), 0.4), generator=torch.Generator().manual_seed(2))
    cfg = TrainConfig(epochs=4, batch_size=16, objective="wae", wae_lambda=10.0, log_every=5)
    r = pyrovae.fit(model, guide, data[:64], data[64:], config=cfg, device="cpu", progress=False, seed=1)
    losses = [row["val_loss"] for row in r.metrics if row["kind"] == "epoch"]
    assert len(losses) == 4 and all("val_elbo" not in row for row in r.metrics)
    assert r.best_val_loss == min(losses) and r.best_val_elbo == float("-inf")
    # the loss per datapoint of 16 images: their reconstruction is some nats of 16 pixels
    assert 0 < min(losses) < 16 * 1.0


def test_evaluate_and_diagnose_say_what_a_point_mass_cannot_have(tmp_path, capsys):
    """Through the CLI on real MNIST: evaluate reports log p(x | mu(x)) and names ELBO, KL and
    importance-sampled log p(x) as unavailable, AIS and BDMC start from the prior by themselves
    (BDMC without its importance figure), diagnose
    keeps active units and lists the k-hat table as unavailable."""
    run = tmp_path / "wae"
    sets = ["data.train_size=256", "data.val_limit=32", "data.test_limit=20", "train.epochs=1"]
    sets += ['train.objective="wae"', "guide.deterministic=true", "eval_samples=3"]
    args = ["fit", str(CONFIGS / "mnist_vae.toml"), "--run-dir", str(run), "--device", "cpu", "--no-progress"]
    assert cli.main([*args, *(a for s in sets for a in ("--set", s))]) == 0
    annealed = ["--method", "ais", "--steps", "3", "--chains", "2", "--bdmc", "4"]
    assert cli.main(["evaluate", str(run), "--no-progress", *annealed]) == 0
    report = json.loads((run / "eval_test.json").read_text())
    assert report["point_masses"] == ["z"] and report["num_datapoints"] == 20
    assert set(report["unavailable"]) >= {"elbo", "kl", "log_likelihood"} and "elbo" not in report
    assert report["ais"]["initial"] == "prior" and report["ais"]["log_likelihood"]["mean"] < 0
    assert report["bdmc"]["importance"] is None and report["bdmc"]["num_datapoints"] == 4
    values = torch.load(run / "eval_test.pt", weights_only=True)["is"]["reconstruction"]
    assert values.double().mean().item() == pytest.approx(report["reconstruction"]["mean"])
    assert "not computed" in capsys.readouterr().out
    assert cli.main(["diagnose", str(run), "--limit", "20", "--no-progress"]) == 0
    summary = json.loads((run / "diagnostics.json").read_text())
    assert "k_hat" in summary["unavailable"] and summary["active_units"]["z"]["units"] == 20
    assert summary["active_units"]["z"]["kl"] is None
    assert weights.point_masses(weights.inspection_traces(*pair()[:2], (pair()[2],), {})[0]) == ["z"]


def test_a_point_mass_over_discrete_values_keeps_its_exact_elbo():
    """Probability one at an integer value: log q = 0 exactly, so the ELBO is log p(x, c) and
    every importance sample equals it; such a guide is not refused."""
    probs = torch.tensor([0.2, 0.5, 0.3])
    locs = torch.tensor([-1.0, 0.0, 2.0])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(probs))
            pyro.sample("x", dist.Normal(locs[c], 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Delta((x > 1).long()))

    x = torch.tensor([-0.5, 1.5, 3.0])
    c = (x > 1).long()
    exact = probs[c].log() + dist.Normal(locs[c], 1.0).log_prob(x)
    torch.testing.assert_close(estimators.elbo(model, guide, x, num_samples=3), exact)
    torch.testing.assert_close(estimators.log_likelihood(model, guide, x, num_samples=4), exact)
