"""MLflow tracking against a real tracking server (SQLite backend, artifacts served by it) that
this module starts: a run's config, every metrics row, its figures and its evaluation; a resumed
run logging to the same MLflow run; a sweep's runs nested under the sweep's own MLflow run with
the comparison table. The pair is a plain Pyro pair (functions and a module) written here."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import PYRO_PAIR, run_cli

CONFIG = """
run_dir = "{run}"
device = "cpu"
eval_samples = 10
[model]
name = "trackpair:Decoder"
[guide]
name = "trackpair:Encoder"
[data]
train_size = 256
val_limit = 32
test_limit = 32
[train]
epochs = 1
batch_size = 32
log_every = 2
mlflow = "{uri}"
mlflow_experiment = "{experiment}"
[sweep]
grid = {{ "model.hidden" = [8, 12] }}
seeds = 1
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` on a free port with a SQLite store; its URI once /health answers."""
    home = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += [
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination",
        str(home / "art"),
    ]
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=1).status == 200:
                    break
            except OSError:
                assert proc.poll() is None, (home / "server.log").read_text()[-2000:]
                time.sleep(0.25)
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def _config(tmp_path, uri, experiment):
    (tmp_path / "trackpair.py").write_text(PYRO_PAIR)
    config = tmp_path / "track.toml"
    config.write_text(CONFIG.format(run=tmp_path / "runs" / "one", uri=uri, experiment=experiment))
    return config


def test_a_run_logs_its_config_rows_figures_and_evaluation(server, tmp_path):
    from mlflow.tracking import MlflowClient

    config = _config(tmp_path, server, "one run")
    run = tmp_path / "runs" / "one"
    run_cli(["fit", str(config), "--no-progress"], tmp_path)
    run_cli(["evaluate", str(run), "--no-progress"], tmp_path)
    run_cli(["fit", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"], tmp_path)
    client = MlflowClient(tracking_uri=server)
    found = client.search_runs([client.get_experiment_by_name("one run").experiment_id])
    assert len(found) == 1  # the resumed run went on logging to the same MLflow run
    logged = found[0]
    assert logged.info.run_id == json.loads((run / "mlflow.json").read_text())["run_id"]
    assert json.loads(logged.data.params["model.name"]) == "trackpair:Decoder"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    history = client.get_metric_history(logged.info.run_id, "step/loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], r["loss"]) for r in steps]
    epochs = client.get_metric_history(logged.info.run_id, "epoch/val_elbo")
    assert [m.value for m in epochs] == [r["val_elbo"] for r in rows if r["kind"] == "epoch"] and len(
        epochs
    ) == 2
    evaluated = json.loads((run / "eval_test.json").read_text())
    assert logged.data.metrics["test/log_likelihood"] == evaluated["log_likelihood"]["mean"]
    assert logged.data.metrics["test/elbo_stderr"] == evaluated["elbo"]["stderr"]
    files = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"curves.png", "samples.png", "config.json", "eval_test.json"} <= files


def test_a_sweep_nests_its_runs_under_its_own_run_with_the_comparison(server, tmp_path):
    from mlflow.tracking import MlflowClient

    config = _config(tmp_path, server, "a sweep")
    folder = tmp_path / "study"
    run_cli(["sweep", str(config), "--dir", str(folder), "--workers", "2", "--threads", "1"], tmp_path)
    client = MlflowClient(tracking_uri=server)
    found = client.search_runs([client.get_experiment_by_name("a sweep").experiment_id])
    parent = json.loads((folder / "mlflow.json").read_text())["run_id"]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent]
    assert sorted(r.info.run_name for r in children) == sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert len(children) == 2 and all("test/log_likelihood" in r.data.metrics for r in children)
    assert {"compare.md", "compare.png"} <= {a.path for a in client.list_artifacts(parent)}
    table = (folder / "compare.md").read_text()
    assert "hidden=12" in table and "log_likelihood - hidden=8" in table


def test_the_callback_on_a_pair_of_functions_through_pyrovae_fit(server, tmp_path):
    """``pyrovae.fit`` with an :class:`MLflowLogger` among its callbacks, on a model and guide
    written as functions over ``pyro.module``: every step row reaches the server."""
    import pyro
    import pyro.distributions as dist
    import torch
    from mlflow.tracking import MlflowClient
    from torch import nn

    import pyrovae
    from pyrovae.run.tracking import MLflowLogger

    dec, enc = nn.Linear(2, 784), nn.Linear(784, 4)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x.reshape(x.shape[0], -1))

    def guide(x):
        pyro.module("enc", enc)
        loc, log_scale = enc(x.reshape(x.shape[0], -1)).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    x = torch.bernoulli(torch.full((64, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(0))
    logger = MLflowLogger(tmp_path / "fn", {"lr": 1e-3}, server, "functions")
    settings = pyrovae.TrainConfig(epochs=2, batch_size=16, log_every=1, compile="none")
    result = pyrovae.fit(model, guide, x, config=settings, run_dir=tmp_path / "fn", callbacks=[logger])
    logger.close()
    history = MlflowClient(tracking_uri=server).get_metric_history(logger.record["run_id"], "step/loss")
    assert [m.value for m in history] == [r["loss"] for r in result.metrics if r["kind"] == "step"]
    assert len(history) == 8
