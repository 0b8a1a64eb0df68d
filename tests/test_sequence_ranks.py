"""Sequence models on two ranks (torch.distributed, gloo): each rank cuts its part of a batch to
its own longest sequence, yet the ranks stay equal and sharded evaluation gives the one-process
figures per sequence and per time step."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from pyrovae import hooks
from pyrovae.data.sequences import as_split
from pyrovae.guides.dmm import CombinerGuide
from pyrovae.inference import scoring
from pyrovae.models.dmm import DMM
from pyrovae.models.state_space import LinearGaussianSSM
from pyrovae.training.loop import fit
from pyrovae.training.settings import TrainConfig

WORLD = 2


def rolls(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 13, (n,), generator=g)
    x = torch.bernoulli(torch.full((n, 12, 6), 0.3), generator=g) * hooks.prefix_mask(lengths, 12)[..., None]
    return as_split(x.to(torch.uint8), lengths)


def ssm_data():
    torch.manual_seed(4)
    model = LinearGaussianSSM(2, 3)
    lengths = torch.randint(2, 7, (21,))
    return model, torch.randn(21, 6, 3) * hooks.prefix_mask(lengths, 6)[..., None], lengths


def _worker(rank: int, tmp: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model, guide = DMM(6, 3, 8, 8), CombinerGuide(6, 3, 8)
    cfg = TrainConfig(
        epochs=2, batch_size=5, log_every=1, kl_schedule="linear", beta_start=0.2, warmup_steps=3
    )
    r = fit(model, guide, rolls(40, 0), rolls(10, 1), config=cfg, seed=3, device="cpu", progress=False)
    ssm, x, lengths = ssm_data()
    exact = scoring.evaluate_data(ssm, ssm.exact_guide(), *hooks.inputs(ssm, x, lengths), num_samples=5)
    torch.save(
        {"model": model.state_dict(), "guide": guide.state_dict(), "step": r.step}, f"{tmp}/rank{rank}.pt"
    )
    json.dump(exact, open(f"{tmp}/eval{rank}.json", "w"))
    torch_dist.destroy_process_group()


def test_a_dmm_stays_equal_on_every_rank_and_sharded_evaluation_is_the_single_one(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert a["step"] == b["step"] == 8  # 40 sequences in global batches of 10, two epochs
    for key in ("model", "guide"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs between ranks"
    outs = [json.loads((tmp_path / f"eval{r}.json").read_text()) for r in range(WORLD)]
    ssm, x, lengths = ssm_data()
    single = scoring.evaluate_data(ssm, ssm.exact_guide(), *hooks.inputs(ssm, x, lengths), num_samples=5)
    exact = ssm.log_marginal(x, hooks.prefix_mask(lengths, 6)).detach()
    for out in outs:  # the exact posterior: every weight is log p(x), whatever the draws
        assert out["per_step"]["steps"] == int(lengths.sum())
        for key in ("log_likelihood", "elbo"):
            assert out[key]["mean"] == pytest.approx(single[key]["mean"], rel=1e-6)
            assert out["per_step"][key]["mean"] == pytest.approx(single["per_step"][key]["mean"], rel=1e-6)
        assert out["per_step"]["log_likelihood"]["mean"] == pytest.approx(
            float(exact.sum() / lengths.sum()), rel=1e-5
        )
