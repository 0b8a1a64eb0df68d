"""The VQ-VAE as a Pyro model and guide (van den Oord et al. 2017): its bound against the closed
form, its training loss against a hand-written PyTorch one, the code priors' probabilities
against enumeration, the learned prior trained after the autoencoder, resume and torchrun."""

import itertools
import json
import math

import pyro
import pytest
import torch

import pyrovae
from pyrovae import hooks
from pyrovae.blocks.codes import TransformerCodePrior, UniformCodePrior, make_code_prior
from pyrovae.errors import CheckpointError, ConfigError, ModelError
from pyrovae.inference import estimators
from pyrovae.registry import build_guide, build_model
from pyrovae.run.experiment import start_from
from pyrovae.training.catalog import make_objective
from pyrovae.training.settings import TrainConfig

SHAPE = (1, 8, 8)


def vq_pair(prior="uniform", **options):
    torch.manual_seed(0)
    net = {"width": 8, "layers": 1, "heads": 2} if prior != "uniform" else None
    model = build_model("vqvae", x_shape=SHAPE, latent_dim=3, num_codes=5, channels=[8], blocks=1,
                        prior=prior, prior_options=net, **options)  # fmt: skip
    guide = build_guide("vq", x_shape=SHAPE, latent_dim=3, channels=[8], blocks=1)
    hooks.attach(model, guide)
    return model, guide


def data(n=12, seed=0):
    return torch.bernoulli(torch.full((n, *SHAPE), 0.4), generator=torch.Generator().manual_seed(seed))


def by_hand(model, guide, x):
    """-log p(x | e_c) + eq. 3's two losses, and the codes, in plain PyTorch."""
    z_e = guide.encoder(x)  # (N, 4, 4, 3)
    e = model.quantizer.codebook
    codes = torch.cdist(z_e.reshape(-1, 3), e.detach()).argmin(-1).reshape(z_e.shape[:-1])
    z_q = e[codes]
    st = z_e + (z_q - z_e).detach()
    logits = model.decoder(st)
    log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(
        (1, 2, 3)
    )
    vq = ((z_e.detach() - z_q) ** 2).sum(-1) + 0.25 * ((z_e - z_q.detach()) ** 2).sum(-1)
    return -log_lik.sum() + vq.sum(), log_lik, codes


def test_the_guide_picks_the_nearest_codes_of_the_models_codebook():
    model, guide = vq_pair()
    x = data()
    codes = pyro.poutine.trace(guide).get_trace(x).nodes["codes"]["value"]
    assert codes.dtype == torch.long and codes.shape == (12, 4, 4)
    assert torch.equal(codes, by_hand(model, guide, x)[2])
    assert list(guide.parameters()) and all(p is not model.quantizer.codebook for p in guide.parameters())


def test_the_bound_with_the_uniform_prior_is_the_reconstruction_less_L_log_K():
    """q is a point mass at integer codes, log q = 0, so ELBO = log p(x | e_c) - L log K for
    every number of samples (the paper's bound, sec. 3.1)."""
    model, guide = vq_pair()
    x = data()
    _, log_lik, _ = by_hand(model, guide, x)
    expected = log_lik.detach() - 16 * math.log(5)
    torch.testing.assert_close(estimators.elbo(model, guide, x), expected)
    torch.testing.assert_close(estimators.log_likelihood(model, guide, x, num_samples=7), expected)


def test_the_training_loss_and_its_gradients_equal_a_hand_written_vqvae():
    """Pyro traces with the straight-through lookup give the loss of eq. 3 plus L log K and
    the same gradient for the encoder, decoder and codebook as plain PyTorch."""
    model, guide = vq_pair()
    x = data()
    objective = make_objective("vqvae")
    objective.prepare(model, guide, x)
    loss = objective(model, guide, x)
    expected, _, _ = by_hand(model, guide, x)
    torch.testing.assert_close(loss, expected + 12 * 16 * math.log(5))
    params = [*model.parameters(), *guide.parameters()]
    got = torch.autograd.grad(loss, params)
    want = torch.autograd.grad(expected, params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_an_objective_for_a_codebook_refuses_a_model_without_one():
    model = build_model("vae", x_shape=SHAPE, latent_dim=2, hidden=[8])
    guide = build_guide("mlp", x_shape=SHAPE, latent_dim=2, hidden=[8])
    with pytest.raises(ModelError, match="codebook"):
        make_objective("vqvae").prepare(model, guide, data())


@pytest.mark.parametrize("prior", [UniformCodePrior(3, (2, 2)), TransformerCodePrior(3, (2, 2), 8, 2, 2)])
def test_a_code_prior_sums_to_one_over_every_grid(prior):
    """All 3^4 grids of a 2x2 grid of 3 codes: the probabilities sum to one."""
    torch.manual_seed(1)
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).reshape(-1, 2, 2)
    with torch.no_grad():
        total = prior(len(grids)).log_prob(grids).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0), rtol=1e-5, atol=1e-5)


def test_ancestral_samples_of_the_learned_prior_follow_its_log_probabilities():
    torch.manual_seed(2)
    prior = TransformerCodePrior(2, (1, 2), 8, 1, 2)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(torch.randn_like(p))  # far from uniform
        draws = prior.sample(20000).reshape(-1, 2)
        grids = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]]).reshape(4, 1, 2)
        probs = prior(4).log_prob(grids).exp()
    freq = torch.stack([(draws == g.reshape(2)).all(-1).float().mean() for g in grids])
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


def test_code_priors_refuse_bad_options():
    with pytest.raises(ConfigError, match="uniform code prior takes no"):
        make_code_prior("uniform", 4, (2, 2), {"width": 8})
    with pytest.raises(ConfigError, match="divide"):
        make_code_prior("transformer", 4, (2, 2), {"width": 9, "heads": 2})
    with pytest.raises(ConfigError, match="code prior"):
        make_code_prior("pixelsnail", 4, (2, 2))


def test_restarts_move_unused_codes_and_metrics_count_the_codes_used():
    model, guide = vq_pair(restart_every=2)
    x = data()
    objective = make_objective("vqvae")
    objective.prepare(model, guide, x)
    group = pyrovae.runtime.distributed.Group()
    used = set()
    for _ in range(2):
        objective(model, guide, x).backward()
        used |= set(objective._last[1].unique().tolist())
        before = model.quantizer.codebook.detach().clone()
        objective.after_step(group)
    moved = (model.quantizer.codebook.detach() != before).any(-1).nonzero().flatten().tolist()
    assert sorted(moved) == sorted(set(range(5)) - used) and objective.restarted == len(moved)
    row = objective.metrics()
    assert row["codes_used"] == len(used) and row["codes_restarted"] == len(moved)
    assert 1.0 <= row["perplexity"] <= len(used) and objective.metrics() == {}  # counted since the last row


def test_a_vqvae_with_ema_and_restarts_resumes_bitwise(tmp_path):
    x = data(48)
    out = {}
    for name, steps, resume in (("a", 9, False), ("b", 5, False), ("b", 9, True)):
        if not resume:
            model, guide = vq_pair(ema=True, restart_every=3)
        cfg = TrainConfig(max_steps=steps, batch_size=16, log_every=1, compile="none", objective="vqvae",
                          checkpoint_every=5)  # fmt: skip
        r = pyrovae.fit(model, guide, x, config=cfg, device="cpu", progress=False, seed=5,
                        run_dir=tmp_path / name, resume=resume)  # fmt: skip
        out[name] = (
            [t.clone() for t in (*model.state_dict().values(), *guide.state_dict().values())],
            r.metrics,
        )
    for a, b in zip(out["a"][0], out["b"][0]):
        assert torch.equal(a, b)
    rows = {
        n: [json.loads(line) for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
        for n in "ab"
    }
    steps = lambda rows: [r for r in rows if r["kind"] == "step"]  # a stopped run ends an epoch row early
    assert steps(rows["a"]) == steps(rows["b"])
    assert any("perplexity" in r and r["codes_restarted"] > 0 for r in rows["a"])


def test_the_learned_prior_trains_alone_after_the_autoencoder(tmp_path):
    """train_only + init_from: the autoencoder of the first run is loaded and held fixed, the
    transformer prior is fitted by the ELBO (its likelihood of the codes), and the bound improves
    on the uniform prior's by the prior's gain alone."""
    x, val = data(48), data(16, seed=1)
    model, guide = vq_pair()
    cfg = TrainConfig(max_steps=6, batch_size=16, objective="vqvae", compile="none")
    pyrovae.fit(model, guide, x, config=cfg, device="cpu", progress=False, run_dir=tmp_path / "ae")
    uniform = estimators.elbo(model, guide, val)
    model2, guide2 = vq_pair(prior="transformer")
    with pytest.raises(CheckpointError, match="lacks"):
        start_from(model2, guide2, tmp_path / "ae", [])
    start_from(model2, guide2, tmp_path / "ae", ["model.prior"])
    fixed = {k: v.clone() for k, v in [*model2.state_dict().items()] if not k.startswith("prior")}
    cfg = TrainConfig(max_steps=30, batch_size=16, lr=1e-2, train_only=["model.prior"])
    pyrovae.fit(model2, guide2, x, config=cfg, device="cpu", progress=False)
    for k, v in fixed.items():
        assert torch.equal(model2.state_dict()[k], v), k
    for a, b in zip(guide.state_dict().values(), guide2.state_dict().values()):
        assert torch.equal(a, b)
    learned = estimators.elbo(model2, guide2, val)
    rec = uniform + 16 * math.log(5)  # the same reconstruction under both priors
    assert learned.mean() > uniform.mean() + 5.0
    torch.testing.assert_close(
        learned - rec, model2.prior(16).log_prob(guide2.quantizer.nearest(guide2.encode(val)))
    )
    assert model2.sample(3).shape == (3, *SHAPE)


def test_train_only_names_must_hold_parameters():
    model, guide = vq_pair()
    with pytest.raises(ConfigError, match="hold no parameter"):
        pyrovae.fit(model, guide, data(), config=TrainConfig(max_steps=1, train_only=["model.priors"]),
                    device="cpu", progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="train_only"):
        TrainConfig(train_only=["prior"])
