"""The regularised objectives against independent computations on small tensors: free bits,
beta-TCVAE's decomposition and aggregate-posterior estimators, the MMD of InfoVAE and WAE."""

import itertools
import math

import pytest
import torch
from torch.distributions import Normal

import pyrovae
from pyrovae.errors import ConfigError
from pyrovae.guides import MLPGuide
from pyrovae.inference import weights
from pyrovae.models import VAE
from pyrovae.run.config import config_from_dict
from pyrovae.training.catalog import make_objective
from pyrovae.training.regularized import log_aggregate, mmd
from pyrovae.training.settings import TrainConfig


def pair(latent=3):
    torch.manual_seed(0)
    model, guide = VAE((1, 4, 4), latent, hidden=[16]), MLPGuide((1, 4, 4), latent, hidden=[16])
    x = torch.bernoulli(torch.full((12, 1, 4, 4), 0.4), generator=torch.Generator().manual_seed(1))
    return model, guide, x


def seeded(fn, seed=3):
    torch.manual_seed(seed)
    return fn()


def test_free_bits_at_zero_is_the_elbo_and_its_groups_are_the_kls():
    model, guide, x = pair()
    elbo = seeded(lambda: make_objective("elbo")(model, guide, x))
    free = seeded(lambda: make_objective("free_bits", free_bits=0.0)(model, guide, x))
    torch.testing.assert_close(free, elbo)
    # analytic KL per dimension: 1/2 (mu^2 + s^2 - 1 - log s^2) of N(mu, s^2) against N(0, 1)
    loc, scale = guide.params(x)
    by_hand = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log())  # (N, D)
    objective = make_objective("free_bits", free_bits=0.0, free_bits_per="dim", free_bits_kl="analytic")
    objective.prepare(model, guide, x)
    guide_tr, model_tr, pdim = weights.traces(model, guide, (x,), {}, 1, objective._nesting)
    torch.testing.assert_close(objective.group_kls(guide_tr, model_tr, pdim), by_hand.T)


@pytest.mark.parametrize("per, kl", [("site", "mc"), ("site", "analytic"), ("dim", "analytic")])
def test_free_bits_zero_the_gradient_of_a_kl_below_lambda_and_keep_it_above(per, kl):
    """Kingma et al. (2016), eq. 15: a group whose batch-mean KL exceeds lambda keeps the plain
    KL's gradient; one below lambda contributes none."""
    model, guide, x = pair(latent=2)
    params = list(guide.parameters())

    def grads(free_bits):
        objective = make_objective("free_bits", free_bits=free_bits, free_bits_per=per, free_bits_kl=kl)
        return torch.autograd.grad(seeded(lambda: objective(model, guide, x)), params)

    base = make_objective("free_bits", free_bits=0.0, free_bits_per=per, free_bits_kl=kl)
    base.prepare(model, guide, x)
    torch.manual_seed(3)
    kls = base.group_kls(*weights.traces(model, guide, (x,), {}, 1, base._nesting)).mean(1).detach()
    low, high = kls.min().item() / 2, kls.max().item() * 2
    for a, b in zip(grads(low), grads(0.0)):  # every group above lambda: the plain objective's gradient
        torch.testing.assert_close(a, b)
    recon_only = make_objective("free_bits", free_bits=1e6, free_bits_per=per, free_bits_kl=kl)
    for a, b in zip(grads(high), torch.autograd.grad(seeded(lambda: recon_only(model, guide, x)), params)):
        torch.testing.assert_close(a, b)  # every group below lambda: the reconstruction's gradient alone


def test_tcvae_terms_against_a_hand_computation_and_their_sum_is_the_kl():
    model, guide, x = pair()
    n_data = 1000
    for sampling in ("mws", "mss"):
        objective = make_objective("tcvae", dataset_size=n_data, tc_sampling=sampling)
        t = seeded(lambda: objective.terms(model, guide, x))
        objective.prepare(model, guide, x)
        torch.manual_seed(3)
        guide_tr, model_tr, _ = weights.traces(model, guide, (x,), {}, 1, objective._nesting)
        z = guide_tr.nodes["z"]["value"].reshape(12, 3)
        loc, scale = guide.params(x)
        unit = Normal(loc.unsqueeze(0), scale.unsqueeze(0)).log_prob(z.unsqueeze(1))  # [i, j, d]
        m = 12
        if sampling == "mws":
            agg = lambda p: torch.logsumexp(p, 1) - math.log(n_data * m)  # noqa: E731
        else:
            w = torch.full((m, m), (n_data - 1) / (n_data * (m - 1)))
            w.fill_diagonal_(1 / n_data)
            agg = lambda p: torch.logsumexp(p + w.log(), 1)  # noqa: E731
        log_qz, log_prod = agg(unit.sum(-1)), sum(agg(unit[..., d]) for d in range(3))
        log_qzx = unit.sum(-1).diagonal()
        log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
        torch.testing.assert_close(t["mi"][0], log_qzx - log_qz)
        torch.testing.assert_close(t["tc"][0], log_qz - log_prod)
        torch.testing.assert_close(t["dwkl"][0], log_prod - log_p)
        torch.testing.assert_close((t["mi"] + t["tc"] + t["dwkl"])[0], log_qzx - log_p)  # the KL term


def test_stratified_sampling_is_unbiased_for_the_aggregate_posterior():
    """Averaged over every batch that holds datapoint i and M - 1 of the others, the stratified
    estimate of q(z) equals (1/N) sum_n q(z | x_n) exactly; the weighted one does not."""
    torch.manual_seed(0)
    n, m = 6, 3
    loc, scale = torch.randn(n, dtype=torch.float64), 0.5 + torch.rand(n, dtype=torch.float64)
    z = torch.tensor(0.3, dtype=torch.float64)
    exact = Normal(loc, scale).log_prob(z).exp().mean()
    for i in range(n):
        others = [j for j in range(n) if j != i]
        estimates = {"mss": [], "mws": []}
        for rest in itertools.combinations(others, m - 1):
            batch = [i, *rest]
            pairs = Normal(loc[batch], scale[batch]).log_prob(z).unsqueeze(0).expand(m, m)
            for sampling in estimates:
                estimates[sampling].append(log_aggregate(pairs, n, sampling)[0].exp())
        torch.testing.assert_close(torch.stack(estimates["mss"]).mean(), exact)
        assert not torch.isclose(torch.stack(estimates["mws"]).mean(), exact)


def test_mmd_is_the_u_statistic_unbiased_and_zero_for_equal_distributions():
    torch.manual_seed(0)
    x, y = torch.randn(7, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64) + 1
    for kernel in ("imq", "rbf"):
        k = lambda a, b: (
            4 / (4 + ((a - b) ** 2).sum()) if kernel == "imq" else torch.exp(-((a - b) ** 2).sum() / 4)
        )  # noqa: E731
        xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
        yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
        xy = sum(k(a, b) for a in x for b in y) / 35
        torch.testing.assert_close(mmd(x, y, kernel), xx + yy - 2 * xy)
    same = torch.stack([mmd(torch.randn(20, 3), torch.randn(20, 3)) for _ in range(2000)])
    assert abs(same.mean()) < 3 * same.std() / 2000**0.5  # unbiased: zero in expectation
    apart = torch.stack([mmd(torch.randn(20, 3), torch.randn(20, 3) + 0.5) for _ in range(200)])
    assert apart.mean() > 10 * apart.std() / 200**0.5


def test_infovae_and_wae_reduce_to_the_elbo_and_the_reconstruction():
    model, guide, x = pair()
    elbo = seeded(lambda: make_objective("elbo")(model, guide, x))
    plain = seeded(lambda: make_objective("infovae", mmd_alpha=0.0, mmd_lambda=1.0)(model, guide, x))
    torch.testing.assert_close(plain, elbo)  # (alpha + lambda - 1) = 0: no MMD, the whole KL
    objective = make_objective("wae", wae_lambda=0.0)
    objective.prepare(model, guide, x)
    torch.manual_seed(3)
    _, model_tr, pdim = weights.traces(model, guide, (x,), {}, 1, objective._nesting)
    log_lik, _ = weights.sum_sites(model_tr, pdim, 1)
    torch.testing.assert_close(seeded(lambda: objective(model, guide, x)), -log_lik.sum())


@pytest.mark.parametrize("objective", ["free_bits", "tcvae", "infovae", "wae", "factorvae", "wae-point"])
def test_each_objective_trains_captured_as_eager_and_resumes(objective, tmp_path):
    """Through fit: the captured step replays the eager one (factorvae runs eagerly, and says
    so), and a run stopped after 5 steps and resumed ends at the uninterrupted run's parameters,
    bitwise (factorvae's discriminator and its optimizer included); ``wae-point`` is WAE with a
    deterministic encoder."""
    objective, point = objective.removesuffix("-point"), objective.endswith("-point")
    x = torch.bernoulli(torch.full((48, 1, 4, 4), 0.4), generator=torch.Generator().manual_seed(0))
    out = {}
    for name, mode, steps, resume in (("eager", "none", 9, False), ("a", "capture", 9, False),
                                      ("b", "capture", 5, False), ("b", "capture", 9, True)):  # fmt: skip
        if not resume:
            torch.manual_seed(0)
            model = VAE((1, 4, 4), 3, hidden=[16])
            guide = MLPGuide((1, 4, 4), 3, hidden=[16], deterministic=point)
        cfg = TrainConfig(max_steps=steps, batch_size=16, log_every=1, compile=mode, objective=objective,
                          checkpoint_every=5, factor_hidden=[16, 16])  # fmt: skip
        r = pyrovae.fit(model, guide, x, config=cfg, device="cpu", progress=False, seed=5,
                        run_dir=tmp_path / name, resume=resume)  # fmt: skip
        assert r.compile == ("none" if objective == "factorvae" else mode)
        out[name] = [p.detach().clone() for p in (*model.parameters(), *guide.parameters())]
        if objective == "factorvae":
            state = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["objective"]
            out[name] += list(state["discriminator"].values())
    for a, b in zip(out["a"], out["eager"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(out["b"], out["a"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("permute", ["independent", "same"])
def test_factorvae_penalizes_the_discriminators_total_correlation_and_trains_it_apart(permute):
    """gamma = 0 is the ELBO; the penalty is gamma sum_n (D_0(z_n) - D_1(z_n)) on the same draws;
    the VAE's parameters get the penalized ELBO's gradient, D's parameters the gradient of its
    own cross-entropy on q(z) draws against dimension-wise permuted draws of a second,
    independent half of the batch (Kim & Mnih 2018, Algorithm 2), or of the same draws."""
    from torch.nn import functional as F

    model, guide, x = pair()
    elbo = seeded(lambda: make_objective("elbo")(model, guide, x))
    zero = make_objective("factorvae", factor_gamma=0.0, factor_hidden=[8], factor_permute=permute)
    torch.testing.assert_close(seeded(lambda: zero(model, guide, x)), elbo)
    objective = make_objective("factorvae", factor_gamma=2.0, factor_hidden=[8], factor_permute=permute)
    objective.prepare(model, guide, x)
    loss = seeded(lambda: objective(model, guide, x))
    torch.manual_seed(3)
    guide_tr, _, _ = weights.traces(model, guide, (x,), {}, 1, objective._nesting)
    z = guide_tr.nodes["z"]["value"].reshape(12, 3).detach()
    real, other = (z[:6], z[6:]) if permute == "independent" else (z, z)
    order = torch.argsort(torch.rand(other.shape), dim=0)  # the permutation's draws follow z's
    d = objective.discriminator
    tc = (d(z)[:, 0] - d(z)[:, 1]).sum()
    torch.testing.assert_close(loss, elbo + 2.0 * tc.detach())
    labels = torch.cat([torch.zeros(len(real), dtype=torch.long), torch.ones(len(other), dtype=torch.long)])
    both = torch.cat([d(real), d(torch.gather(other, 0, order))])
    by_hand = 12 * F.cross_entropy(both, labels, reduction="sum") / len(labels)
    for a, b in zip(
        torch.autograd.grad(loss, list(d.parameters())), torch.autograd.grad(by_hand, list(d.parameters()))
    ):
        torch.testing.assert_close(a, b)


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="unknown aggregate-posterior estimator"):
        config_from_dict({"train": {"objective": "tcvae", "tc_sampling": "mss2"}})
    with pytest.raises(ConfigError, match="unknown MMD kernel"):
        config_from_dict({"train": {"objective": "wae", "mmd_kernel": "gauss"}})
    with pytest.raises(ConfigError, match="factor_hidden must be a list of integers >= 1"):
        config_from_dict({"train": {"objective": "factorvae", "factor_hidden": []}})
    with pytest.raises(ConfigError, match="free_bits must be a finite number >= 0"):
        config_from_dict({"train": {"objective": "free_bits", "free_bits": -1}})
    model, guide, x = pair()
    with pytest.raises(ConfigError, match="needs the dataset size"):
        make_objective("tcvae")(model, guide, x)


def test_an_objective_takes_only_its_own_options_by_name():
    """A typo, another objective's setting, and the dataset size tcvae's q(z) needs: each
    refused in one line, from Python as from a config."""
    with pytest.raises(
        ConfigError, match=r"'tcvae' takes no option 'tc_wieght' \(did you mean 'tc_weight'\?\)"
    ):
        make_objective("tcvae", tc_wieght=2.0, dataset_size=10)
    with pytest.raises(ConfigError, match=r"'elbo' takes no option 'mmd_alpha' \(an option of infovae\)"):
        make_objective("elbo", mmd_alpha=0.5)
    model, guide, x = pair()
    with pytest.raises(ConfigError, match="needs the dataset size"):
        make_objective("tcvae").terms(model, guide, x)
    cfg = TrainConfig(objective="tcvae", tc_alpha=0.5)
    assert cfg.objective_options() == {
        "tc_alpha": 0.5,
        "tc_weight": 6.0,
        "tc_gamma": 1.0,
        "tc_sampling": "mws",
    }


def test_tcvae_weighs_mi_tc_and_the_dimension_wise_kl_as_chen_et_al_eq_4():
    """-E[log p(x|z) - beta (alpha MI + tc_weight TC + gamma DWKL)], on the same draws."""
    model, guide, x = pair()
    objective = make_objective("tcvae", dataset_size=100, tc_alpha=0.3, tc_weight=5.0, tc_gamma=2.0)
    t = seeded(lambda: objective.terms(model, guide, x))
    loss = seeded(lambda: objective(model, guide, x, beta=0.7))
    expected = -(t["log_lik"] - 0.7 * (0.3 * t["mi"] + 5.0 * t["tc"] + 2.0 * t["dwkl"])).mean(0).sum()
    torch.testing.assert_close(loss, expected)
    kl = seeded(lambda: make_objective("elbo")(model, guide, x, beta=1.0))
    at_one = make_objective("tcvae", dataset_size=100, tc_weight=1.0)  # alpha = beta = gamma = 1: the ELBO
    torch.testing.assert_close(seeded(lambda: at_one(model, guide, x)), kl)
