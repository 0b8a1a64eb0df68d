"""The semi-supervised VAE (M2) and the Gaussian-mixture VAE: labels kept, the class summed
out of log p(x), the auxiliary loss, the reports, and short runs from their configs."""

import json
import math

import pytest
import torch

from pyrovae.data.labelled import LabelledBatches, keep_labels, labelled_repeat
from pyrovae.data.splits import EVAL_BINARIZATION_SEED, VAL_BINARIZATION_SEED, Split
from pyrovae.errors import ConfigError, DataError
from pyrovae.inference import clusters, estimators, scoring
from pyrovae.registry import build_guide, build_model
from pyrovae.run import cli
from pyrovae.training.loop import fit
from pyrovae.training.settings import TrainConfig


def test_kept_labels_are_balanced_seeded_and_the_rest_hidden():
    labels = torch.arange(300) % 3
    split = Split(torch.zeros(300, 1, 2, 2), labels, "continuous")
    kept = keep_labels(split, 10, seed=1).labels
    assert (kept >= 0).sum() == 10 and torch.bincount(kept[kept >= 0]).tolist() == [4, 3, 3]
    assert (kept[kept >= 0] == labels[kept >= 0]).all()
    assert torch.equal(kept, keep_labels(split, 10, seed=1).labels)
    assert not torch.equal(kept, keep_labels(split, 10, seed=2).labels)
    with pytest.raises(DataError, match="data.labelled"):
        keep_labels(split, 2)


def test_labelled_batches_keep_the_kinds_apart_and_see_each_datapoint_once():
    labels = torch.full((50,), -1)
    labels[[3, 7, 11, 20, 31]] = torch.tensor([0, 1, 2, 0, 1])
    split = Split(torch.arange(50.0).reshape(50, 1), labels, "continuous")
    batches = LabelledBatches(split, 4, seed=2)
    epoch = list(batches.epoch(1, labels=True))
    kinds = ["l" if (y >= 0).all() else "u" for _, y in epoch]
    assert all((y >= 0).all() or (y < 0).all() for _, y in epoch)  # never mixed
    assert kinds.count("l") == 2 and kinds[0] == "u" and kinds[-1] == "u"  # interleaved
    seen = torch.cat([x[:, 0] for x, _ in epoch]).long().sort().values
    assert torch.equal(seen, torch.arange(50)) and len(batches) == len(epoch)
    assert [batches.total(b) for b in range(len(batches))] == [len(x) for x, _ in epoch]
    assert [x.tolist() for x, _ in epoch[3:]] == [x.tolist() for x in batches.epoch(1, start=3)]  # resumes


def test_few_labels_are_repeated_so_that_one_batch_in_17_is_labelled():
    assert labelled_repeat(100, 49900, 200) == 16  # 1 labelled batch and 250 unlabelled
    assert labelled_repeat(3000, 47000, 200) == 1  # 15 and 235: Pyro's example's own rate
    assert labelled_repeat(100, 49900, 200, repeat=3) == 3
    with pytest.raises(ConfigError, match="labelled_repeat"):
        labelled_repeat(100, 49900, 200, repeat=0)
    with pytest.raises(ConfigError, match="labelled_repeat"):
        TrainConfig(labelled_repeat=0)
    labels = torch.full((40,), -1)
    labels[[2, 9, 17]] = torch.tensor([0, 1, 2])
    split = Split(torch.arange(40.0).reshape(40, 1), labels, "continuous")
    batches = LabelledBatches(split, 2, seed=0, repeat=4)
    epoch = list(batches.epoch(0, labels=True))
    seen = torch.cat([x[:, 0] for x, y in epoch if (y >= 0).all()]).long()
    assert torch.equal(torch.bincount(seen, minlength=40)[[2, 9, 17]], torch.tensor([4, 4, 4]))
    assert len(seen) == 12 and len(batches) == len(epoch) == 8 + 19
    passes = [seen[i : i + 3].tolist() for i in range(0, 12, 3)]
    assert all(sorted(p) == [2, 9, 17] for p in passes) and len({tuple(p) for p in passes}) > 1  # reshuffled
    assert [batches.total(b) for b in range(len(batches))] == [len(x) for x, _ in epoch]
    assert [x.tolist() for x, _ in epoch[5:]] == [x.tolist() for x in batches.epoch(0, start=5)]


def test_classification_error_and_hungarian_cluster_accuracy():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    probs = torch.nn.functional.one_hot((labels + 1) % 3, 4).float()  # clusters = labels shifted
    assert clusters.cluster_accuracy(probs, labels) == 1.0
    assert clusters.classification_error(probs, labels)["error"] == 1.0
    probs[0] = torch.tensor([0.0, 0.0, 0.0, 1.0])  # one datapoint in an unmatched cluster
    assert clusters.cluster_accuracy(probs, labels) == pytest.approx(7 / 8)
    e = clusters.classification_error(torch.nn.functional.one_hot(labels, 3).float(), labels)
    assert e == {"error": 0.0, "stderr": 0.0}


@pytest.fixture
def m2():
    torch.manual_seed(0)
    shape = (1, 2, 2)
    model = build_model("ss_vae", x_shape=shape, latent_dim=[3, 2], hidden=[8]).double()
    guide = build_guide("ss_mlp", x_shape=shape, latent_dim=[3, 2], hidden=[8]).double()
    return model, guide, torch.rand(6, *shape, dtype=torch.float64).bernoulli()


def test_m2_log_px_sums_the_class_out(m2):
    """log p(x) = log sum_y p(x, y): the unlabelled estimate against the labelled ones."""
    model, guide, x = m2
    hidden = torch.full((6,), -1)
    unlabelled = estimators.log_likelihood(model, guide, x, hidden, num_samples=20000)
    labelled = torch.stack(
        [estimators.log_likelihood(model, guide, x, torch.full((6,), y), num_samples=20000) for y in range(3)]
    )
    torch.testing.assert_close(
        unlabelled, labelled.logsumexp(0), atol=0.04, rtol=0
    )  # a wrong count of y: log 3


def test_m2_auxiliary_loss_is_alpha_over_the_labelled_share(m2):
    model, guide, x = m2
    y = torch.tensor([2, -1, 0, -1, -1, -1])
    guide.attach_data(torch.tensor([1, -1, -1, -1]))  # a quarter of the training data labelled
    logits = guide.class_logits(x)
    nll = -(torch.log_softmax(logits, -1)[0, 2] + torch.log_softmax(logits, -1)[2, 0])
    torch.testing.assert_close(guide.auxiliary_loss(x, y), 0.1 / 0.25 * nll)
    guide.aux_weight = 46.0  # Pyro's multiplier: per labelled image, whatever the share
    torch.testing.assert_close(guide.auxiliary_loss(x, y), 46.0 * nll)


def _run(tmp_path, config, sets):
    run = tmp_path / "run"
    argv = ["fit", config, "--run-dir", str(run), "--no-progress"]
    assert cli.main([*argv, *(a for s in sets for a in ("--set", s))]) == 0
    assert cli.main(["evaluate", str(run), "--num-samples", "3", "--no-progress", "--limit", "50"]) == 0
    return json.loads((run / "eval_test.json").read_text())


def test_m2_trains_from_its_config_and_reports_the_test_error(tmp_path, capsys):
    sets = ["data.train_size=400", "data.labelled=20", "data.val_size=100", "data.val_limit=50",
            "train.max_steps=4", "model.hidden=[16]", "guide.hidden=[16]"]  # fmt: skip
    out = _run(tmp_path, "configs/mnist_m2_100.toml", sets)
    e = out["classification_error"]
    assert (
        e["site"] == "y"
        and 0 <= e["error"] <= 1
        and e["stderr"] == pytest.approx(math.sqrt(e["error"] * (1 - e["error"]) / 50))
    )
    assert "log_likelihood_bits_per_dim" in out  # log p(x) of the images alone, labels summed out
    assert "test error" in capsys.readouterr().out


def test_gmvae_trains_from_its_config_and_reports_the_clustering_accuracy(tmp_path):
    sets = ["data.train_size=300", "data.val_size=100", "data.val_limit=50", "train.max_steps=4",
            "model.hidden=[16]", "guide.hidden=[16]"]  # fmt: skip
    out = _run(tmp_path, "configs/mnist_gmvae_10.toml", sets)
    assert 0.1 <= out["cluster_accuracy"]["c"] <= 1 and math.isfinite(out["log_likelihood"]["mean"])


def _two_classes(n: int, labelled: int) -> Split:
    """Binary 4 x 4 images, class 1 mostly on and class 0 mostly off; the first ``labelled`` keep labels."""
    y = torch.arange(n) % 2
    x = (torch.rand(n, 1, 4, 4) < torch.where(y == 1, 0.8, 0.2).view(n, 1, 1, 1)).to(torch.uint8)
    return Split(x, torch.where(torch.arange(n) < labelled, y, -1), "static", maximum=1)


def test_best_checkpoint_by_validation_classification_error(tmp_path):
    torch.manual_seed(0)
    shape, dims = (1, 4, 4), [2, 2]
    model = build_model("ss_vae", x_shape=shape, latent_dim=dims, hidden=[8])
    guide = build_guide("ss_mlp", x_shape=shape, latent_dim=dims, hidden=[8])
    train, val = _two_classes(64, 8), _two_classes(40, 40)
    rows = []
    cfg = TrainConfig(epochs=5, batch_size=16, lr=0.03, select="error", objective="enum")
    fit(model, guide, train, val, config=cfg, run_dir=tmp_path, progress=False, callbacks=[rows.append])
    errors = [r["val_error"] for r in rows if r.get("kind") == "epoch"]
    x = val.observe_fixed(VAL_BINARIZATION_SEED).float()  # seed 0 + the validation offset

    def error(g) -> float:
        return clusters.classification_error(g.class_logits(x).softmax(-1), val.labels)["error"]

    assert len(errors) == 5 and errors[-1] == pytest.approx(error(guide))
    best = build_guide("ss_mlp", x_shape=shape, latent_dim=dims, hidden=[8])
    best.load_state_dict(torch.load(tmp_path / "best.pt", weights_only=False)["guide"])
    assert error(best) == pytest.approx(min(errors))
    with pytest.raises(ConfigError, match="train.select"):
        fit(model, guide, train, None, config=TrainConfig(select="error"), progress=False)
    with pytest.raises(ConfigError, match="select"):
        TrainConfig(select="accuracy")


def test_the_class_of_a_grey_image_averages_q_over_binarizations(m2):
    model, guide, _ = m2
    grey = Split(torch.rand(300, 1, 2, 2, dtype=torch.float64), torch.arange(300) % 3, "dynamic")
    draws = [grey.observe_fixed(EVAL_BINARIZATION_SEED + i) for i in range(scoring.CLASS_DRAWS)]
    mean = sum(guide.class_logits(x).softmax(-1) for x in draws) / len(draws)
    e = scoring.class_report_data(model, guide, grey)["classification_error"]
    assert e["binarizations"] == scoring.CLASS_DRAWS
    assert e["error"] == pytest.approx(clusters.classification_error(mean, grey.labels)["error"])
    one = scoring.class_report(model, guide, [(draws[0], torch.full((300,), -1))], grey.labels)
    first = clusters.classification_error(guide.class_logits(draws[0]).softmax(-1), grey.labels)["error"]
    assert one["classification_error"]["error"] == pytest.approx(first) != e["error"]  # one draw differs
    static = Split(draws[0].to(torch.uint8), grey.labels, "static", maximum=1)
    model.float(), guide.float()  # static pixels are read as float32
    assert scoring.class_report_data(model, guide, static)["classification_error"]["binarizations"] == 1
