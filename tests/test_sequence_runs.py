"""Sequence models through every command: configs over the sequence datasets, fit with capture
and an exact resume, evaluate per sequence and per time step, and a plain Pyro pair of the user's
own over sequences of their own."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyrovae
from pyrovae import hooks
from pyrovae.data.fixtures import write_jsb
from pyrovae.data.sequences import as_split
from pyrovae.diagnostics.activity import step_activity
from pyrovae.diagnostics.rolls import sequence_reconstructions, sequence_samples
from pyrovae.errors import DataError
from pyrovae.inference.scoring import evaluate_data
from pyrovae.models.state_space import LinearGaussianSSM
from pyrovae.run import cli, evaluation, recipes
from pyrovae.run.config import config_from_dict
from pyrovae.run.diagnose import diagnose_run
from pyrovae.run.experiment import fit_config, load_run
from pyrovae.training.settings import TrainConfig


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dmm_config(root, run_dir, **train):
    return config_from_dict(
        {
            "seed": 3,
            "run_dir": str(run_dir),
            "eval_samples": 40,
            "data": {"name": "jsb", "root": str(root), "pixels": "static"},
            "model": {"name": "dmm", "z_dim": 4, "emission_dim": 8, "transition_dim": 8},
            "guide": {"name": "combiner", "rnn_dim": 8},
            "train": {
                "epochs": 2,
                "batch_size": 8,
                "checkpoint_every": 2,
                "kl_schedule": "linear",
                "beta_start": 0.2,
                "compile": "capture",
                "warmup_steps": 4,
                "log_every": 1,
                **train,
            },
        }
    )


def test_a_dmm_config_on_jsb_trains_captured_resumes_exactly_and_reports_per_step(tmp_path, capsys):
    written = write_jsb(tmp_path / "data", pieces=(24, 6, 6))
    whole = fit_config(dmm_config(tmp_path / "data", tmp_path / "whole"), progress=False)
    assert whole.step == 6 and whole.compile == "capture"  # a graph per batch length (8 or 16 steps)
    fit_config(dmm_config(tmp_path / "data", tmp_path / "cut", max_steps=3), progress=False)
    resumed = fit_config(dmm_config(tmp_path / "data", tmp_path / "cut"), resume=True, progress=False)
    assert resumed.step == 6
    a, b = load_run(tmp_path / "whole", "last"), load_run(tmp_path / "cut", "last")
    for (name, p), q in zip(
        [*a.model.state_dict().items(), *a.guide.state_dict().items()],
        [*b.model.state_dict().values(), *b.guide.state_dict().values()],
    ):
        assert torch.equal(p, q), name

    out = evaluation.evaluate(a, num_samples=40)
    lengths = torch.tensor([len(p) for p in written["test"]])
    assert out["num_datapoints"] == 6 and out["per_step"]["steps"] == int(lengths.sum())
    for key in ("elbo", "log_likelihood"):
        values = out["per_datapoint"][key]
        assert out["per_step"][key]["mean"] == pytest.approx(float(values.sum() / lengths.sum()), rel=1e-6)
    assert out["per_datapoint"]["log_likelihood"].mean() >= out["per_datapoint"]["elbo"].mean()
    # bits per observed key: the per-step figure over 88 keys, not over padded steps
    bits = -out["per_step"]["log_likelihood"]["mean"] / (88 * torch.log(torch.tensor(2.0)).item())
    assert out["log_likelihood_bits_per_dim"] == pytest.approx(bits, rel=1e-6)

    assert cli.main(["evaluate", str(tmp_path / "whole"), "--num-samples", "8"]) == 0
    assert "per time step, total over all" in capsys.readouterr().out
    for command, figure in (("sample", "samples.png"), ("reconstruct", "reconstructions.png")):
        assert cli.main([command, str(tmp_path / "whole")]) == 0 and (tmp_path / "whole" / figure).exists()
    assert cli.main(["sample", str(tmp_path / "whole"), "--out", str(tmp_path / "rolls.png")]) == 0
    assert (tmp_path / "rolls.png").exists()
    assert cli.main(["latent", str(tmp_path / "whole")]) != 0
    assert "latents per time step" in capsys.readouterr().err
    x, mask = recipes.evaluation_data(a.config, "test").inputs(a.model)
    recon = sequence_reconstructions(a.model, a.guide, x, mask)
    assert recon.shape == x.shape and (recon[~mask] == 0).all() and ((recon >= 0) & (recon <= 1)).all()
    diagnosed = diagnose_run(a, tmp_path / "whole", num_samples=30, amortization=2)
    assert (
        diagnosed["num_datapoints"] == 6 and len(diagnosed["active_units_per_step"]["active"]) == x.shape[1]
    )
    assert "sequence model" in diagnosed["unavailable"]["amortization"] and "amortization" not in diagnosed
    drawn = sequence_samples(a.model, 3, 5, 88)
    assert drawn.shape == (3, 5, 88) and ((drawn > 0) & (drawn < 1)).all()  # Bernoulli means


def test_the_state_space_model_from_its_own_file_meets_its_kalman_filter(tmp_path):
    """Own sequences of a linear-Gaussian state-space model, fitted through a config with the
    combiner guide: evaluate's importance-sampled log p(x) of every test sequence comes within
    0.05 nats of the Kalman filter's exact value for the fitted model."""
    torch.manual_seed(0)
    truth = LinearGaussianSSM(2, 3)
    n, steps = 120, 8
    lengths = torch.randint(3, steps + 1, (n,))
    mask = hooks.prefix_mask(lengths, steps)
    with torch.no_grad(), pyro.poutine.trace() as tr:
        truth(torch.zeros(n, steps, 3), torch.ones(n, steps, dtype=torch.bool))
    x = torch.stack([tr.trace.nodes[f"x_{t + 1}"]["value"] for t in range(steps)], 1)
    torch.save({"x": x * mask[..., None], "lengths": lengths}, tmp_path / "seqs.pt")
    config = config_from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "data": {"name": "sequences", "path": str(tmp_path / "seqs.pt"), "pixels": "continuous"},
            "model": {"name": "linear_gaussian_ssm", "latent_dim": 2},
            "guide": {"name": "combiner", "rnn_dim": 24},
            "train": {"epochs": 60, "batch_size": 27, "lr": 1e-2},
        }
    )
    fit_config(config, progress=False)
    run = load_run(tmp_path / "run", "last")
    out = evaluation.evaluate(run, num_samples=2000)
    assert "log_likelihood_bits_per_dim" not in out  # a density: no bits
    data = pyrovae.data.load_split("sequences", "test", pixels="continuous", path=str(tmp_path / "seqs.pt"))
    x_test, mask_test = hooks.inputs(run.model, data.observe(), data.labels)
    exact = run.model.log_marginal(x_test, mask_test).detach()
    gap = (out["per_datapoint"]["log_likelihood"] - exact).abs().max().item()
    assert gap < 0.05, gap
    assert out["per_step"]["log_likelihood"]["mean"] == pytest.approx(
        float(exact.sum() / data.labels.sum()), abs=0.02
    )


class OwnSequenceModel(nn.Module):
    """A user's model over binary sequences, written as Pyro users write one: a latent per
    sequence, every step's keys Bernoulli given it, steps past the end masked."""

    takes = "sequence"

    def __init__(self, keys=5, latent=2):
        super().__init__()
        self.decode = nn.Linear(latent, keys)
        self.latent = latent

    def forward(self, x, mask):
        pyro.module("model", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent), 1.0).to_event(1))
            for t in pyro.markov(range(x.shape[1])):
                logits = self.decode(z)
                step = dist.Bernoulli(logits=logits).to_event(1).mask(mask[:, t])
                pyro.sample(f"x_{t}", step, obs=x[:, t])


class OwnSequenceGuide(nn.Module):
    takes = "sequence"

    def __init__(self, keys=5, latent=2):
        super().__init__()
        self.encode = nn.Linear(keys, 2 * latent)

    def forward(self, x, mask):
        pyro.module("guide", self)
        mean_x = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        loc, raw = self.encode(mean_x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def test_a_plain_pyro_sequence_pair_fits_and_scores_only_the_steps_it_has():
    torch.manual_seed(1)
    n, steps = 64, 20
    lengths = torch.randint(2, steps + 1, (n,))
    x = torch.bernoulli(torch.full((n, steps, 5), 0.3)) * hooks.prefix_mask(lengths, steps)[..., None]
    model, guide = OwnSequenceModel(), OwnSequenceGuide()
    cfg = TrainConfig(epochs=3, batch_size=16)
    result = pyrovae.fit(
        model, guide, as_split(x.to(torch.uint8), lengths), config=cfg, device="cpu", progress=False
    )
    assert result.step == 12 and result.compile == "none"  # auto: a sequence model trains eagerly
    args = hooks.inputs(model, x, lengths)
    assert args[0].shape[1] == min(steps, -(-int(lengths.max()) // hooks.STEP_BUCKET) * hooks.STEP_BUCKET)
    out = evaluate_data(model, guide, *args, num_samples=400, seed=2, per_datapoint=True)
    # Pyro's own estimate of the same bound, from the same pair
    pyro.set_rng_seed(3)
    elbo = pyro.infer.Trace_ELBO(num_particles=200, vectorize_particles=True)
    with torch.no_grad():
        pyro_elbo = -elbo.loss(model, guide, *args) / n
    assert out["elbo"]["mean"] == pytest.approx(pyro_elbo, abs=4 * out["elbo"]["stderr"] + 0.05)
    # keys past each end are not data: changing them changes nothing
    noisy = x + (1 - hooks.prefix_mask(lengths, steps)[..., None].float()) * torch.bernoulli(
        torch.full_like(x, 0.5)
    )
    again = evaluate_data(
        model, guide, *hooks.inputs(model, noisy, lengths), num_samples=400, seed=2, per_datapoint=True
    )
    assert torch.equal(again["per_datapoint"]["log_likelihood"], out["per_datapoint"]["log_likelihood"])
    assert out["per_step"]["steps"] == int(lengths.sum())
    with pytest.raises(DataError, match="one length per sequence"):
        hooks.inputs(model, x, None)


def test_step_activity_of_the_exact_posterior_meets_its_closed_form():
    """With the exact posterior as guide, the per-step E_q[z_t | x] averaged over draws is the
    smoothed mean, so Cov_x of it is that of the Kalman smoother's means; and the KL of the
    steps adds up to the total KL E_q[log q(z|x) - log p(z)] that evaluate_data estimates."""
    torch.manual_seed(0)
    ssm = LinearGaussianSSM(2, 3)
    n, steps = 40, 6
    lengths = torch.randint(2, steps + 1, (n,))
    mask = hooks.prefix_mask(lengths, steps)
    x = torch.randn(n, steps, 3) * mask[..., None]
    guide = ssm.exact_guide()
    with torch.no_grad():
        a = step_activity(ssm, guide, x, mask, num_samples=400)
        smoothed = ssm.posterior(x, mask)[0].reshape(n, steps, 2)
    for t in range(steps):
        exact = smoothed[mask[:, t], t].double().var(0)
        torch.testing.assert_close(a.variance[t], exact, rtol=0.05, atol=2e-3)
    assert a.sequences.tolist() == mask.sum(0).tolist() and a.units == 2
    total = float((a.kl * a.sequences).sum() / n)
    out = evaluate_data(ssm, guide, x, mask, num_samples=400, seed=1)
    assert total == pytest.approx(out["kl"]["mean"], abs=4 * out["kl"]["stderr"] + 0.02)


SEQUENCE_PAIRS = [
    ("dmm", "combiner"),
    ("linear_gaussian_ssm", "combiner"),
    ("vrnn", "combiner"),
    ("vrnn", "vrnn"),
]


@pytest.mark.parametrize("model_name,guide_name", SEQUENCE_PAIRS)
def test_every_registered_sequence_pair_matches_sites_trains_and_reloads(model_name, guide_name, tmp_path):
    """Built as a config builds them (x_shape (T, D), the guide given the model's latent_dim): the
    guide samples each z_t the model has, masked alike; steps of fit on the IWAE bound (k
    particles through the recurrences) move the parameters, and the run reloads to the same ELBO."""
    options = {"dmm": {"z_dim": 3, "emission_dim": 8, "transition_dim": 8}, "vrnn": {"z_dim": 3, "hidden": 8}}
    config = config_from_dict(
        {
            "model": {"name": model_name, **options.get(model_name, {"latent_dim": 3})},
            "guide": {"name": guide_name, **({"rnn_dim": 8} if guide_name == "combiner" else {})},
        }
    )
    model, guide = recipes.build(config, (7, 6))
    data = rolls(12) if model.binary else as_split(torch.randn(12, 7, 6), torch.randint(2, 8, (12,)))
    args = hooks.inputs(model, data.observe(), data.labels)
    guided = pyro.poutine.trace(guide).get_trace(*args)
    traced = pyro.poutine.trace(pyro.poutine.replay(model, trace=guided)).get_trace(*args)
    latent = [
        n for n, s in traced.nodes.items() if s["type"] == "sample" and not s["is_observed"] and n != "data"
    ]
    assert latent == [f"z_{t + 1}" for t in range(args[0].shape[1])]
    assert [n for n in guided.nodes if n.startswith("z_")] == latent
    before = [p.detach().clone() for p in model.parameters()]
    record = {"config": config.to_dict(), "x_shape": [7, 6]}
    pyrovae.fit(
        model,
        guide,
        data,
        config=TrainConfig(max_steps=2, batch_size=6, objective="iwae", k=3),
        device="cpu",
        run_dir=tmp_path,
        record=record,
        progress=False,
    )
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    (tmp_path / "config.json").write_text("{}")
    run = load_run(tmp_path, which="last", device="cpu")
    pyro.set_rng_seed(3)
    here = evaluate_data(model.eval(), guide.eval(), *args, num_samples=4, seed=3)["elbo"]["mean"]
    assert evaluate_data(run.model, run.guide, *args, num_samples=4, seed=3)["elbo"]["mean"] == here
    assert sequence_samples(model, 2, 4, 6).shape == (2, 4, 6)  # the VRNN's own, the others run blank


def rolls(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 8, (n,), generator=g)
    x = torch.bernoulli(torch.full((n, 7, 6), 0.3), generator=g) * hooks.prefix_mask(lengths, 7)[..., None]
    return as_split(x.to(torch.uint8), lengths)
