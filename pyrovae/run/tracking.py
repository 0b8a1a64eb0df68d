"""MLflow tracking of runs and sweeps (``train.mlflow``; the ``pyrovae[mlflow]`` extra).

``train.mlflow = true`` logs to MLflow's own default (``MLFLOW_TRACKING_URI``, else its local
store, a SQLite file in the working directory), ``train.mlflow = "http://host:5000"`` (or any
tracking URI) to that server, under the experiment ``train.mlflow_experiment``. A run logs its
config as parameters, every metrics row (``step/loss``, ``epoch/val_elbo``, ...) at its step,
its figures and config as artifacts, and each evaluation's figures (``test/log_likelihood``, its
standard error, ...) with ``eval_SPLIT.json``. The MLflow run's id is kept in the run directory
(``mlflow.json``), so a resumed run and a later ``pyrovae evaluate`` log to the same MLflow run;
a run inside a sweep directory is nested under the sweep's own MLflow run, which holds the
comparison table. TensorBoard (``train.tensorboard``) stays beside it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pyrovae.errors import ConfigError
from pyrovae.training import checkpoint as ckpt_io
from pyrovae.training.rundir import RunDir

RECORD = "mlflow.json"  #: in a run (or sweep) directory: the tracking URI, experiment and run id
BATCH = 1000  #: MLflow's most metrics per log_batch call


def _client(uri: str | None):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise ConfigError(
            'train.mlflow needs MLflow: pip install "pyrovae[mlflow]" (or set train.mlflow = false)'
        ) from e
    return MlflowClient(tracking_uri=uri)


def resolve_uri(setting: bool | str) -> str:
    """The tracking URI ``train.mlflow`` names: itself, or for ``true`` MLflow's default here."""
    if isinstance(setting, str):
        return setting
    import mlflow

    return mlflow.get_tracking_uri()


def recorded(folder: str | Path) -> dict | None:
    """What ``folder/mlflow.json`` holds, or None."""
    path = Path(folder) / RECORD
    return json.loads(path.read_text()) if path.exists() else None


def _flat(raw: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in raw.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": json.dumps(v)[:6000]}
    return out


def open_run(folder: str | Path, uri: str, experiment: str, params: dict, parent: str | None = None) -> dict:
    """The MLflow run of ``folder``: the one its ``mlflow.json`` names on the same server, else a
    new run under ``experiment`` (nested under ``parent``) with ``params`` logged, recorded there."""
    from mlflow.entities import Param

    folder = Path(folder)
    known = recorded(folder)
    if known is not None and known["uri"] == uri:
        return known
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    tags = {"pyrovae.folder": str(folder.resolve())} | ({"mlflow.parentRunId": parent} if parent else {})
    run = client.create_run(experiment_id, run_name=folder.name, tags=tags)
    params = [Param(k, v) for k, v in _flat(params).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    record = {"uri": uri, "experiment_id": experiment_id, "run_id": run.info.run_id}
    folder.mkdir(parents=True, exist_ok=True)
    ckpt_io.atomic_write_text(folder / RECORD, json.dumps(record) + "\n")
    return record


class MLflowLogger:
    """A :func:`pyrovae.fit` callback: every numeric value of every metrics row as an MLflow
    metric ``KIND/KEY`` at the row's step, sent in batches at each epoch row and on ``close``."""

    def __init__(self, run_dir: str | Path, config: dict, uri: str, experiment: str):
        parent = recorded(Path(run_dir).parent)  # a run of a sweep: nested under the sweep's run
        self.record = open_run(run_dir, uri, experiment, config, parent and parent["run_id"])
        self.client = _client(uri)
        self.pending: list = []

    def __call__(self, row: dict) -> bool:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in row.items():
            if (
                key not in ("kind", "step")
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
            ):
                self.pending.append(Metric(f"{row['kind']}/{key}", float(value), now, int(row["step"])))
        if row["kind"] == "epoch" or len(self.pending) >= BATCH:
            self.flush()
        return False

    def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:BATCH], self.pending[BATCH:]
            self.client.log_batch(self.record["run_id"], metrics=batch)

    def close(self) -> None:
        self.flush()


def log_files(folder: str | Path, paths) -> None:
    """Log ``paths`` (figures, tables) as artifacts of ``folder``'s MLflow run, if it has one."""
    known = recorded(folder)
    if known is None:
        return
    client = _client(known["uri"])
    for path in map(Path, paths):
        if path.exists():
            client.log_artifact(known["run_id"], str(path))


def log_fitted(run_dir: str | Path, figures) -> None:
    """A trained run's ``figures``, ``curves.png`` and ``config.json`` on its MLflow run, if any."""
    files = RunDir(run_dir)
    log_files(run_dir, [*figures, files.curves, files.config])


def log_evaluation(run_dir: str | Path, split: str, out: dict, paths=()) -> None:
    """An evaluation's figures as metrics ``SPLIT/NAME`` and ``SPLIT/NAME_stderr`` (and the files
    ``paths``) on ``run_dir``'s MLflow run, if it has one."""
    known = recorded(run_dir)
    if known is None:
        return
    from mlflow.entities import Metric

    now, step = int(time.time() * 1000), int(out.get("step", 0))
    metrics = []
    for name, value in out.items():
        if isinstance(value, dict) and isinstance(value.get("mean"), (int, float)):
            metrics.append(Metric(f"{split}/{name}", float(value["mean"]), now, step))
            if isinstance(value.get("stderr"), (int, float)):
                metrics.append(Metric(f"{split}/{name}_stderr", float(value["stderr"]), now, step))
        elif name.endswith(("bits_per_dim", "bits_per_dim_stderr")) and isinstance(value, (int, float)):
            metrics.append(Metric(f"{split}/{name}", float(value), now, step))
    for group in ("ais", "refine"):
        inner = out.get(group, {}).get("log_likelihood") if isinstance(out.get(group), dict) else None
        if isinstance(inner, dict) and isinstance(inner.get("mean"), (int, float)):
            metrics.append(Metric(f"{split}/{group}_log_likelihood", float(inner["mean"]), now, step))
    client = _client(known["uri"])
    client.log_batch(known["run_id"], metrics=metrics)
    log_files(run_dir, paths)
