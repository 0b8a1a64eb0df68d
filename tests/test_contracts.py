"""The contracts as types (Takes, Objective, the hook Protocols), the one evaluation-data
recipe, the run directory's names, the one override function, and results returned with their
per-datapoint values."""

import json
import typing
from pathlib import Path

import pytest
import torch

from pyrovae import hooks
from pyrovae.data.splits import EVAL_BINARIZATION_SEED, Split
from pyrovae.errors import ConfigError, ModelError
from pyrovae.guides import MLPGuide
from pyrovae.hooks import ModelHooks, Takes
from pyrovae.inference.scoring import evaluate_data
from pyrovae.models import VAE
from pyrovae.run import cli
from pyrovae.run.config import Config, apply_overrides, config_from_dict
from pyrovae.run.recipes import EvaluationData
from pyrovae.training.loop import fit
from pyrovae.training.objectives import ELBOObjective, Objective
from pyrovae.training.rundir import FIGURES, RunDir
from pyrovae.training.settings import TrainConfig

CONFIGS = Path(__file__).parents[1] / "configs"


def test_takes_is_an_enum_and_the_plain_strings_still_work():
    class Labelled:
        takes = "image,label"

    class Wrong:
        takes = "image+label"

    assert hooks.takes(Labelled) is Takes.IMAGE_LABEL and hooks.takes(object()) is Takes.IMAGE
    assert Takes.IMAGE_PARTIAL_LABEL == "image,partial_label"  # configs and old models compare as strings
    with pytest.raises(ModelError, match="Wrong.takes is 'image\\+label'; use a pyrovae.hooks.Takes"):
        hooks.takes(Wrong)


def test_the_model_protocol_declares_every_member_it_documents():
    declared = {*typing.get_type_hints(ModelHooks), *(n for n in vars(ModelHooks) if not n.startswith("_"))}
    documented = {line.split("``")[0].split("(")[0] for line in ModelHooks.__doc__.split("- ``")[1:]}
    assert documented <= declared | {"decode", "sample"}, documented - declared
    assert {"inputs", "check_data", "check_pixels", "takes", "latent_sites", "label_site"} <= declared


def _tiny():
    torch.manual_seed(0)
    x = Split(torch.rand(64, 1, 4, 4), torch.zeros(64, dtype=torch.long), "dynamic")
    model = VAE((1, 4, 4), 2, hidden=[8])
    return model, MLPGuide((1, 4, 4), 2, hidden=[8]), x


def test_an_objective_of_ones_own_trains_exactly_as_the_named_one():
    calls = []

    class Counted(ELBOObjective):
        def __call__(self, *args, **kwargs):
            calls.append(1)
            return super().__call__(*args, **kwargs)

    cfg = TrainConfig(max_steps=5, batch_size=16, compile="none", log_every=1)
    states = []
    for objective in (None, Counted()):
        model, guide, x = _tiny()
        fit(model, guide, x, config=cfg, device="cpu", progress=False, objective=objective)
        states.append([p.detach().clone() for m in (model, guide) for p in m.parameters()])
    assert calls and all(torch.equal(a, b) for a, b in zip(*states))
    assert issubclass(Counted, Objective)
    model, guide, x = _tiny()
    with pytest.raises(ConfigError, match="subclass Objective"):
        fit(model, guide, x, config=cfg, device="cpu", progress=False, objective=lambda *a, **k: 0)


def test_the_evaluation_data_is_the_binarization_evaluate_reads():
    grey = Split(torch.rand(30, 1, 2, 2), torch.arange(30) % 3, "dynamic")
    data = EvaluationData.of(grey, "test", seed=4)
    assert torch.equal(data.images, grey.observe_fixed(4 + EVAL_BINARIZATION_SEED))
    head = data.head(7)
    assert torch.equal(head.images, data.images[:7]) and torch.equal(head.labels, grey.labels[:7])

    class Partial:
        takes = Takes.IMAGE_PARTIAL_LABEL

        def inputs(self, images, labels):
            return (images,) if labels is None else (images, labels)

    assert len(data.inputs(Partial())) == 1  # evaluation hides the labels of a semi-supervised model


def test_evaluate_returns_the_per_datapoint_values_behind_its_means(ppca):
    model, x = ppca
    out = evaluate_data(model, model.exact_guide(), x, num_samples=7, bits_per_dim=False, per_datapoint=True)
    values = out["per_datapoint"]["log_likelihood"]
    assert values.shape == (40,) and values.mean().item() == pytest.approx(out["log_likelihood"]["mean"])
    torch.testing.assert_close(values, model.log_marginal(x))  # the exact posterior: log p(x) itself
    assert "per_datapoint" not in evaluate_data(
        model, model.exact_guide(), x, num_samples=7, bits_per_dim=False
    )


def test_the_run_directory_names_every_file(tmp_path):
    files = RunDir(tmp_path)
    assert files.checkpoint.name == "checkpoint.pt" and files.step(12).name == "step-00000012.pt"
    assert files.evaluation("val").name == "eval_val.json"
    assert files.evaluation("val", values=True).name == "eval_val.pt"
    assert [files.figure(f).name for f in FIGURES][0] == "samples.png" and not files.has_checkpoint()
    files.history.mkdir()
    files.step(3).write_bytes(b"")
    assert files.has_checkpoint() and files.steps() == [files.step(3)]
    with pytest.raises(ValueError, match="unknown figure 'sample'"):
        files.figure("sample")


def test_one_override_function_takes_flags_and_settings_in_order():
    raw = apply_overrides(Config().to_dict(), [("train.epochs", 2), "train.epochs=3", ("data.root", "/d")])
    cfg = config_from_dict(raw)
    assert cfg.train.epochs == 3 and cfg.data.root == "/d"


def test_evaluate_writes_the_per_datapoint_values_beside_its_summary(tmp_path):
    run = tmp_path / "run"
    sets = ["data.train_size=256", "data.val_limit=32", "data.test_limit=40", "train.epochs=1"]
    sets.append("eval_samples=3")
    args = ["fit", str(CONFIGS / "mnist_vae.toml"), "--run-dir", str(run), "--device", "cpu", "--no-progress"]
    assert cli.main([*args, *(a for s in sets for a in ("--set", s))]) == 0
    annealed = ["--method", "ais", "--steps", "3", "--chains", "2", "--bdmc", "5"]
    assert cli.main(["evaluate", str(run), "--no-progress", *annealed]) == 0
    summary = json.loads((run / "eval_test.json").read_text())
    values = torch.load(run / "eval_test.pt", weights_only=True)
    assert values["is"]["log_likelihood"].shape == (40,) and values["ais"]["log_likelihood"].shape == (40,)
    assert values["is"]["elbo"].double().mean().item() == pytest.approx(summary["elbo"]["mean"])
    assert values["bdmc"]["lower"].shape == values["bdmc"]["upper"].shape == (5,)
    assert values["bdmc"]["lower"].double().mean().item() == pytest.approx(summary["bdmc"]["lower"]["mean"])
    assert all("per_datapoint" not in part for part in (summary, summary["ais"], summary["bdmc"]))
