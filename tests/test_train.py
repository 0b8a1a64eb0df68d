"""fit(): training improves the bound, resumes exactly, and trains plain callables."""

import dataclasses
import functools
import json

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovae
from pyrovae.inference import estimators
from pyrovae.run.config import Component, Config, config_from_dict
from pyrovae.run.recipes import build
from pyrovae.sites import DATA_PLATE
from pyrovae.training.settings import TrainConfig


def test_fit_approaches_the_exact_log_likelihood(ppca, device):
    """Training an MLP guide for PPCA closes most of the gap to the exact log p(x)."""
    model, x = ppca
    model = model.float().to(device)
    x = x.float().repeat(25, 1, 1, 1).to(device)
    guide = pyrovae.build_guide("mlp", x_shape=(1, 1, 5), latent_dim=2, hidden=[32]).to(device)
    for p in model.parameters():
        p.requires_grad_(False)  # train the guide only: the target log p(x) stays fixed
    exact = model.log_marginal(x).mean().item()
    start = estimators.elbo(model, guide, x, num_samples=50).mean().item()
    result = pyrovae.fit(
        model,
        guide,
        x,
        x[:200],
        config=TrainConfig(epochs=30, batch_size=100, lr=3e-3, val_samples=50),
        device=device,
        progress=False,
    )
    end = estimators.elbo(model, guide, x, num_samples=200).mean().item()
    assert end <= exact + 0.02
    assert exact - end < 0.1 * (exact - start)
    vals = [r["val_elbo"] for r in result.metrics if r["kind"] == "epoch"]
    assert vals[-1] > vals[0]


def small_run(tmp_path, guide_options=None, **train):
    x = torch.bernoulli(torch.full((96, 1, 4, 4), 0.4), generator=torch.Generator().manual_seed(0))
    cfg = Config(
        model=Component("vae", {"latent_dim": 2, "hidden": [8]}),
        guide=Component("mlp", {"hidden": [8], **(guide_options or {})}),
    )
    model, guide = build(cfg, (1, 4, 4))
    config = TrainConfig(batch_size=16, lr=1e-2, log_every=1, **train)
    return model, guide, x, config, {"config": cfg.to_dict(), "x_shape": [1, 4, 4]}


FLOW = {"flow": "iaf", "flow_hidden": [8], "flow_context": 3}


@pytest.mark.parametrize("guide_options", [{}, FLOW], ids=["diagonal", "iaf"])
def test_resume_continues_to_the_same_parameters(tmp_path, device, guide_options):
    torch.manual_seed(0)
    model, guide, x, config, record = small_run(tmp_path, guide_options, epochs=3, checkpoint_every=4)
    init = (
        {k: v.clone() for k, v in model.state_dict().items()},
        {k: v.clone() for k, v in guide.state_dict().items()},
    )
    fit = functools.partial(pyrovae.fit, device=device, record=record, progress=False)
    fit(model, guide, x, x[:32], config=config, run_dir=tmp_path / "a")
    straight = [p.detach().clone() for p in (*model.parameters(), *guide.parameters())]

    # The same run stopped after 10 steps (mid-epoch), then resumed from its checkpoint.
    model.load_state_dict(init[0])
    guide.load_state_dict(init[1])
    first = dataclasses.replace(config, max_steps=10, checkpoint_every=10)
    fit(model, guide, x, x[:32], config=first, run_dir=tmp_path / "b")
    m2, g2 = build(config_from_dict(record["config"]), (1, 4, 4))
    result = fit(m2, g2, x, x[:32], config=config, run_dir=tmp_path / "b", resume=True)
    assert result.step == 18
    resumed = [p.detach() for p in (*m2.parameters(), *g2.parameters())]
    for a, b in zip(straight, resumed):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "step"] == list(range(1, 19))


def test_kl_schedule_and_early_stopping(ppca, tmp_path):
    model, x = ppca
    guide = model.exact_guide()  # ELBO = log p(x) exactly: the validation score cannot change at lr = 0
    config = TrainConfig(
        epochs=10, batch_size=10, lr=0.0, kl_schedule="linear", warmup_steps=8, log_every=1, early_stopping=2
    )
    result = pyrovae.fit(model, guide, x, x, config=config, progress=False)
    epochs = [r for r in result.metrics if r["kind"] == "epoch"]
    assert len(epochs) == 3  # the first epoch is best; two more without improvement stop the run
    betas = [r["beta"] for r in result.metrics if r["kind"] == "step"]
    assert betas[:9] == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.0])
    assert epochs[0]["val_elbo"] == pytest.approx(model.log_marginal(x).mean().item(), abs=1e-4)


def test_plain_callables_with_param_store_parameters():
    """z ~ N(0, 1), x ~ N(z + b, 1): the maximum-likelihood b is mean(x), and the optimal
    guide is the exact posterior N((x - b) / 2, 1/2)."""
    torch.manual_seed(0)
    x = 3.0 + torch.randn(400) * 2**0.5

    def model(x):
        b = pyro.param("b", torch.tensor(0.0))
        with pyro.plate(DATA_PLATE, x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z + b, 1.0), obs=x)

    def guide(x):
        a = pyro.param("a", torch.tensor(0.0))
        c = pyro.param("c", torch.tensor(0.0))
        s = pyro.param("s", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample("z", dist.Normal(a * x + c, s))

    pyrovae.fit(
        model,
        guide,
        x,
        config=TrainConfig(epochs=300, batch_size=400, lr=0.05, num_particles=8),
        progress=False,
    )
    store = pyro.get_param_store()
    assert store["b"].item() == pytest.approx(x.mean().item(), abs=0.1)
    assert store["a"].item() == pytest.approx(0.5, abs=0.05)
    assert store["s"].item() == pytest.approx(0.5**0.5, abs=0.05)
    lw = estimators.log_weights(model, guide, x, num_samples=4)
    assert lw.shape == (4, 400)


@pytest.mark.parametrize(
    "likelihood,pixels_binary,decoder,guide_name,objective",
    [
        ("gaussian", False, "mlp", "mlp", "meanfield"),
        ("continuous_bernoulli", False, "conv", "conv", "meanfield"),
        ("bernoulli", True, "conv", "mlp", "elbo"),
    ],
)
def test_every_likelihood_and_objective_trains(likelihood, pixels_binary, decoder, guide_name, objective):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8, generator=g)
    x = torch.bernoulli(x, generator=g) if pixels_binary else x
    sigma = {"sigma": "learned"} if likelihood == "gaussian" else {}
    cfg = Config(
        model=Component(
            "vae",
            {
                "latent_dim": 3,
                "hidden": [16],
                "decoder": decoder,
                "channels": [8, 4],
                "likelihood": likelihood,
                **sigma,
            },
        ),
        guide=Component(
            guide_name, {"hidden": [16], **({"channels": [4, 8]} if guide_name == "conv" else {})}
        ),
    )
    model, guide = build(cfg, (1, 8, 8))
    config = TrainConfig(
        epochs=6,
        batch_size=32,
        lr=1e-2,
        objective=objective,
        num_particles=3,
        grad_clip=5.0,
        lr_schedule="exponential",
        lr_gamma=0.5,
        kl_schedule="cyclical",
        cycles=2,
        log_every=2,
    )
    result = pyrovae.fit(model, guide, x, x, config=config, progress=False)
    epochs = [r for r in result.metrics if r["kind"] == "epoch"]
    steps = [r for r in result.metrics if r["kind"] == "step"]
    assert epochs[-1]["val_elbo"] > epochs[0]["val_elbo"]
    assert [r["lr"] for r in steps[::1]][:3] == pytest.approx([1e-2, 5e-3, 2.5e-3])  # 2 steps per epoch
    assert min(r["beta"] for r in steps) < 0.5 and max(r["beta"] for r in steps) == 1.0


def test_callbacks_receive_every_metrics_row(tmp_path):
    model, guide, x, config, record = small_run(tmp_path, epochs=2)
    seen = []
    result = pyrovae.fit(
        model,
        guide,
        x,
        x[:32],
        config=config,
        run_dir=tmp_path,
        record=record,
        progress=False,
        callbacks=[seen.append],
    )
    assert seen == result.metrics and len(seen) == 12 + 2
    assert seen == [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
