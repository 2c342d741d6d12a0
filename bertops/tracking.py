"""MLflow: where runs go (embedded SQLite by default), and the training run shared by train/evaluate/register."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bertops.config import Params
from bertops.layout import Layout

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def tracking_uri(params: Params, root: Path) -> str:
    """MLFLOW_TRACKING_URI wins over params; a relative sqlite path is taken relative to the project root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str((root / uri[len(prefix):]).resolve())
    return uri


def point_at(uri: str) -> None:
    """Point this process's mlflow at a tracking store (and the registry beside it, unless MLFLOW_REGISTRY_URI
    says otherwise), leaving the environment as it was."""
    import mlflow

    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"] or uri)
    # mlflow also exports these URIs to os.environ; put the user's environment back, or a later project in this
    # process (and every child process) would silently log into this project's store
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def configure(params: Params, layout: Layout) -> str:
    """Point mlflow at the tracking store and the experiment; returns the experiment id."""
    import mlflow

    os.environ.setdefault("MPLCONFIGDIR", str(layout.work_dir / "matplotlib"))
    uri = tracking_uri(params, layout.project_root)
    point_at(uri)
    experiment = mlflow.get_experiment_by_name(params.tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:"):
        # embedded mode: artifacts beside the database, inside the project
        artifact_location = (layout.project_root / "mlruns").resolve().as_uri()
    return mlflow.create_experiment(params.tracking.experiment, artifact_location=artifact_location)


def read_train_run(layout: Layout) -> str:
    return json.loads(layout.train_run_file.read_text())["run_id"]


def write_train_run(layout: Layout, run_id: str, experiment_id: str) -> None:
    from bertops.files import write_atomic

    record = {"run_id": run_id, "experiment_id": experiment_id}
    write_atomic(layout.train_run_file, json.dumps(record, indent=1) + "\n")
