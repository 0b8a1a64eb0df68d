"""Data-parallel training and evaluation on two Gloo processes on this machine."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from pyro.poutine.messenger import Messenger

from pyrovae.inference import scoring
from pyrovae.models import LinearGaussian
from pyrovae.registry import build_guide, build_model
from pyrovae.runtime import distributed
from pyrovae.training.catalog import make_objective
from pyrovae.training.loop import fit, make_loss
from pyrovae.training.optim import collect_params
from pyrovae.training.settings import TrainConfig

WORLD = 2


def _init(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD)


def _pair(latent=4, **guide_options):
    torch.manual_seed(0)
    model = build_model("vae", x_shape=(1, 6, 6), latent_dim=latent, hidden=(16,))
    guide = build_guide("mlp", x_shape=(1, 6, 6), latent_dim=latent, hidden=(16,), **guide_options)
    return model, guide


def _data(n=48):
    g = torch.Generator().manual_seed(7)
    return (torch.rand(n, 1, 6, 6, generator=g) < 0.4).float()


def spawn(fn, tmp_path, *args):
    mp.spawn(fn, args=(str(tmp_path), *args), nprocs=WORLD, join=True)


# --------------------------------------------------------------------------- training keeps the ranks equal


def _family(name):
    """A small VQ-VAE (EMA codebook, restarts) or 3-layer ladder (weight-normalised, spectrally
    regularised: its power-iteration vectors must stay equal too) on 8x8 images."""
    torch.manual_seed(0)
    common = {"x_shape": (1, 8, 8), "channels": [8], "blocks": 1}
    if name == "vqvae":
        model = build_model("vqvae", latent_dim=3, num_codes=5, ema=True, restart_every=2, **common)
        guide = build_guide("vq", latent_dim=3, **common)
    else:
        common |= {"width": 4, "norm": "weight", "spectral": 0.1}
        model = build_model("ladder", latent_dim=1, layers=3, **common)
        guide = build_guide("ladder", latent_dim=model.latent_dim, **common)  # as a config builds it
    guide.attach_model(model)
    return model, guide


def _family_worker(rank, tmp, name):
    _init(rank, tmp)
    model, guide = _family(name)
    objective = "vqvae" if name == "vqvae" else "elbo"
    data = lambda n, s: torch.bernoulli(
        torch.full((n, 1, 8, 8), 0.4), generator=torch.Generator().manual_seed(s)
    )
    cfg = TrainConfig(epochs=2, batch_size=6, log_every=2, objective=objective, compile="none")
    r = fit(model, guide, data(48, 0), data(12, 1), config=cfg, seed=3, device="cpu", run_dir=f"{tmp}/run",
            progress=False)  # fmt: skip
    torch.save(
        {"model": model.state_dict(), "guide": guide.state_dict(), "rows": r.metrics}, f"{tmp}/rank{rank}.pt"
    )
    torch_dist.destroy_process_group()


@pytest.mark.parametrize("name", ["vqvae", "ladder"])
def test_a_vqvae_and_a_ladder_stay_equal_on_every_rank(tmp_path, name):
    """The VQ-VAE's codebook and moving averages (counts and sums added over the ranks, restarts
    broadcast from rank 0), the ladder's top-down layers (used by model and guide, reduced once)."""
    spawn(_family_worker, tmp_path, name)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    for key in ("model", "guide"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs between ranks"
    init, _ = _family(name)
    assert any(not torch.equal(v, init.state_dict()[k]) for k, v in a["model"].items())
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert drop(a["rows"]) == drop(b["rows"])
    assert (name == "vqvae") == any("perplexity" in r for r in a["rows"])


def _fit_worker(rank, tmp, flow="none", objective="elbo"):
    _init(rank, tmp)
    objective, point = objective.removesuffix("-point"), objective.endswith("-point")
    model, guide = _pair(flow=flow, flow_hidden=[8], flow_context=3, deterministic=point)
    cfg = TrainConfig(epochs=3, batch_size=6, log_every=2, checkpoint_every=3, objective=objective)
    small = {"factor_hidden": [8]} if objective == "factorvae" else {}  # its discriminator, to compare
    loss = make_objective(objective, **small)
    result = fit(
        model,
        guide,
        _data(),
        _data(12),
        config=cfg,
        seed=3,
        device="cpu",
        run_dir=f"{tmp}/run",
        progress=False,
        objective=loss,
    )
    torch.save(
        {
            "model": model.state_dict(),
            "guide": guide.state_dict(),
            "objective": (loss.state_dict() or {}).get("discriminator", {}),
            "step": result.step,
            "best": result.best_val_elbo if math.isfinite(result.best_val_elbo) else result.best_val_loss,
            "rows": result.metrics,
        },
        f"{tmp}/rank{rank}.pt",
    )
    torch_dist.destroy_process_group()


@pytest.mark.parametrize(
    "flow, objective", [("none", "elbo"), ("iaf", "elbo"), ("none", "factorvae"), ("none", "wae-point")]
)
def test_parameters_are_bitwise_equal_on_every_rank(tmp_path, flow, objective):
    """Also a flow guide, FactorVAE's discriminator (stepped by its own optimizer on the
    gradient summed over the ranks), and WAE with a deterministic encoder (validated by its
    loss, shared over the ranks)."""
    spawn(_fit_worker, tmp_path, flow, objective)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    init_model, _ = _pair()
    assert (objective == "factorvae") == bool(a["objective"])
    for key in ("model", "guide", "objective"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs between ranks"
    assert not torch.equal(a["model"]["net.0.0.weight"], init_model.state_dict()["net.0.0.weight"])
    # 48 datapoints in global batches of 2 x 6: 4 steps per epoch
    assert a["step"] == b["step"] == 12 and a["best"] == b["best"]  # validation is shared
    assert math.isfinite(a["best"])
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert drop(a["rows"]) == drop(b["rows"])  # logged losses are averaged over the ranks
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(a["rows"])  # written once, by rank 0
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == WORLD and len(state["rng_ranks"]) == WORLD
    assert not torch.equal(
        state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"]
    )  # own noise per rank


# --------------------------------------------------------------------------- one step's gradient


class FixedNoise(Messenger):
    """Draw the guide's z as loc + scale * eps with given eps: the latent noise fixed, the
    reparameterized value still a function of the guide's parameters."""

    def __init__(self, eps):
        super().__init__()
        self.eps = eps

    def _pyro_sample(self, msg):
        if msg["name"] == "z" and not msg["is_observed"]:
            base = msg["fn"].base_dist
            n = base.loc.shape[-2]  # inspection runs see the first rows only
            msg["value"] = base.loc + base.scale * self.eps[:n]
            msg["done"] = True


def _gradients(model, guide, x, eps, ddp: bool, total: int):
    def noisy_guide(x):
        with FixedNoise(eps):
            return guide(x)

    objective = make_objective("elbo")
    params = collect_params(model, guide, x[:2])
    loss_fn = make_loss(objective, model, noisy_guide, params, "none", (x[:2],))
    for p in params:
        p.grad = None
    if ddp:
        wrapped = distributed.wrap(loss_fn, [model, guide], torch.device("cpu"))  # alive through backward
        loss = wrapped(x, 1.0) * distributed.loss_scale(x.shape[0], total)
    else:
        loss = loss_fn(x, 1.0)
    loss.backward()
    return [p.grad.clone() for p in params]


def _grad_worker(rank, tmp, total):
    _init(rank, tmp)
    model, guide = _pair()
    x, eps = _data(total), torch.randn(total, 4, generator=torch.Generator().manual_seed(1))
    part = torch.arange(total).tensor_split(WORLD)[rank]
    grads = _gradients(model, guide, x[part], eps[part], ddp=True, total=total)
    torch.save(grads, f"{tmp}/grads{rank}.pt")
    torch_dist.destroy_process_group()


@pytest.mark.parametrize("total", [16, 11])  # 8 + 8, and uneven 6 + 5
def test_two_ranks_compute_the_gradient_of_the_whole_batch(tmp_path, total):
    spawn(_grad_worker, tmp_path, total)
    model, guide = _pair()
    x, eps = _data(total), torch.randn(total, 4, generator=torch.Generator().manual_seed(1))
    single = _gradients(model, guide, x, eps, ddp=False, total=total)
    for r in range(WORLD):
        ranked = torch.load(tmp_path / f"grads{r}.pt", weights_only=True)
        assert len(ranked) == len(single)
        for g_rank, g_single in zip(ranked, single):
            torch.testing.assert_close(g_rank, g_single, rtol=1e-5, atol=1e-6)
    # the fixed noise matters: another draw gives another gradient
    other = _gradients(model, guide, x, torch.randn(total, 4), ddp=False, total=total)
    assert not all(torch.allclose(a, b) for a, b in zip(other, single))


# --------------------------------------------------------------------------- sharded evaluation


def _ppca():
    torch.manual_seed(1)
    model = LinearGaussian((1, 1, 5), latent_dim=2, sigma=0.7, init_scale=0.8).double()
    x = model.decode(torch.randn(41, 2, dtype=torch.float64)).detach() + 0.7 * torch.randn(
        41, 1, 1, 5, dtype=torch.float64
    )
    return model, x


def _eval_worker(rank, tmp):
    _init(rank, tmp)
    model, x = _ppca()
    exact = scoring.evaluate_data(model, model.exact_guide(), x, num_samples=9, compile="none")
    vae, guide = _pair()
    data = _data(60)
    sampled = scoring.evaluate_data(vae, guide, data, num_samples=200, compile="none")
    sizes = [len(p) for p in torch.arange(7).tensor_split(WORLD)]
    order = distributed.gather_rows(torch.arange(7).tensor_split(WORLD)[rank], sizes)
    json.dump(
        {"exact": exact, "sampled": sampled, "order": order.tolist()}, open(f"{tmp}/eval{rank}.json", "w")
    )
    torch_dist.destroy_process_group()


def test_sharded_evaluation_equals_single_process(tmp_path):
    spawn(_eval_worker, tmp_path)
    outs = [json.loads((tmp_path / f"eval{r}.json").read_text()) for r in range(WORLD)]
    assert outs[0]["exact"] == outs[1]["exact"] | {"seconds": outs[0]["exact"]["seconds"]}  # all ranks agree
    assert outs[0]["order"] == list(range(7))
    model, x = _ppca()
    single = scoring.evaluate_data(model, model.exact_guide(), x, num_samples=9, compile="none")
    sharded = outs[0]["exact"]
    assert sharded["num_datapoints"] == 41
    for key in ("elbo", "log_likelihood", "reconstruction", "kl"):
        assert sharded[key]["mean"] == pytest.approx(
            single[key]["mean"], rel=1e-9 if key in ("elbo", "log_likelihood") else 0.05
        ), key
        if key in ("elbo", "log_likelihood"):  # exact posterior: the same numbers whatever the draws
            assert sharded[key]["stderr"] == pytest.approx(single[key]["stderr"], rel=1e-9)
    exact = model.log_marginal(x).mean().item()
    assert sharded["log_likelihood"]["mean"] == pytest.approx(exact, rel=1e-9)
    # a VAE: other draws, the same estimate within its Monte Carlo error
    vae, guide = _pair()
    single = scoring.evaluate_data(vae, guide, _data(60), num_samples=200, compile="none")
    sampled = outs[0]["sampled"]
    for key in ("elbo", "log_likelihood"):
        assert abs(sampled[key]["mean"] - single[key]["mean"]) < 0.5
        assert sampled[key]["stderr"] == pytest.approx(single[key]["stderr"], rel=0.05)


# ------------------------------------------------------------------ failure and restart under torchrun

CONFIG = """
seed = 0
device = "cpu"
run_dir = "{run}"
eval_samples = 5

[data]
name = "mnist"
pixels = "dynamic"
train_size = 5000
val_limit = 200
test_limit = 100

[model]
name = "vae"
latent_dim = 4
hidden = [32]

[guide]
name = "mlp"
hidden = [32]

[train]
epochs = 12
batch_size = 50
log_every = 25
checkpoint_every = 100
"""


def _torchrun(*args, restarts=0):
    env = {**os.environ, "PYROVAE_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1"}
    torchrun = f"-m torch.distributed.run --standalone --nproc-per-node {WORLD} --max-restarts {restarts}"
    cmd = [sys.executable, *torchrun.split(), "--monitor-interval", "0.5", "-m", "pyrovae", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _worker_pids(marker: str, rank: int) -> list[int]:
    """Processes started by torchrun for ``rank`` whose command line names ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmd and "torch.distributed.run" not in cmd and f"RANK={rank}".encode() in env:
            pids.append(int(proc.name))
    return pids


def _kill_rank_after_a_checkpoint(run: Path, config: Path, job) -> int:
    deadline = time.monotonic() + 120
    while not any((run / "checkpoints").glob("step-*.pt")):
        assert job.poll() is None, job.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint within two minutes"
        time.sleep(0.2)
    pids = _worker_pids(str(config), 1)
    assert pids, "rank 1 not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return int(json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"])


def _steps(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["kind"] == "step"]


@pytest.fixture
def torchrun_config(tmp_path):
    run = tmp_path / "run"
    config = tmp_path / "dist.toml"
    config.write_text(CONFIG.format(run=run))
    return run, config


def test_a_killed_rank_fails_the_job_fast_and_a_restart_resumes(torchrun_config):
    run, config = torchrun_config
    job = _torchrun("fit", str(config), "--no-progress")
    _kill_rank_after_a_checkpoint(run, config, job)
    killed = time.monotonic()
    out, _ = job.communicate(timeout=120)
    assert job.returncode != 0
    assert time.monotonic() - killed < 60, "the job hung after losing a rank"
    assert "lost the other ranks" in out or "Connection closed" in out or "failed" in out.lower()
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < saved < 600  # 5000 images in global batches of 100: 50 steps per epoch, 12 epochs

    job = _torchrun("fit", "--resume", str(run), "--no-progress")
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 0, out
    assert f"resuming {run}" in out and "trained 600 steps" in out
    steps = _steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == 600  # continued from the checkpoint, no step twice
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 600


def test_torchrun_restarts_resume_from_the_checkpoint(torchrun_config):
    run, config = torchrun_config
    job = _torchrun("fit", str(config), "--no-progress", restarts=1)
    _kill_rank_after_a_checkpoint(run, config, job)
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 0, out
    assert "(restart 1)" in out and "trained 600 steps" in out
    steps = _steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == 600


def test_two_nodes_through_a_rendezvous_train_like_one_node(tmp_path):
    """Two torchrun agents (--nnodes 2, c10d rendezvous, one process each): the several-machines
    path, on one host. Same ranks, same shards, same seeds: the same run as one agent with two
    processes."""

    def config(name):
        run = tmp_path / name
        path = tmp_path / f"{name}.toml"
        path.write_text(CONFIG.format(run=run).replace("epochs = 12", "epochs = 1"))
        return run, path

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one_run, one_cfg = config("one")
    job = _torchrun("fit", str(one_cfg), "--no-progress")
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 0, out
    two_run, two_cfg = config("two")
    port = 29400 + os.getpid() % 500
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"localhost:{port}",
                "--rdzv-id",
                "pyrovae-test",
                "-m",
                "pyrovae",
                "fit",
                str(two_cfg),
                "--no-progress",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [a.communicate(timeout=300)[0] for a in agents]
    assert all(a.returncode == 0 for a in agents), outs
    assert any("on 2 ranks" in o for o in outs)
    rows = lambda run: [
        {k: v for k, v in json.loads(line).items() if k != "seconds"}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows(two_run) == rows(one_run)


def _own_pair_worker(rank, tmp):
    from test_own_model import PIXELS, TwoSiteGuide, TwoSiteVAE

    _init(rank, tmp)
    torch.manual_seed(0)
    model, guide = TwoSiteVAE(), TwoSiteGuide()  # Pyro-style: scored on repeated data for k > 1
    data = torch.bernoulli(torch.full((48, PIXELS), 0.3), generator=torch.Generator().manual_seed(2))
    cfg = TrainConfig(epochs=2, batch_size=6, log_every=2, objective="iwae", k=3)
    with pytest.warns(RuntimeWarning, match="do not broadcast"):
        fit(model, guide, data, config=cfg, seed=3, device="cpu", run_dir=f"{tmp}/run", progress=False)
    torch.save({"model": model.state_dict(), "guide": guide.state_dict()}, f"{tmp}/rank{rank}.pt")
    torch_dist.destroy_process_group()


def test_a_pyro_style_pair_trains_on_two_ranks_with_iwae(tmp_path):
    """A guide that does not broadcast over particles, trained with k = 3 importance samples on
    repeated data under DDP: the ranks stay bitwise equal."""
    spawn(_own_pair_worker, tmp_path)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    for key in ("model", "guide"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs between ranks"
