"""Training on two processes (DDP over gloo, on the CPU) through the real `bertops stage train` command: the run
matches a one-process run of the same params (same global batches) and logs one MLflow run, not one per rank."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file

from bertops.cli import run_stage
from conftest import POSITIVE, NEGATIVE, FILLER, synthetic_reviews, tiny_params, write_corpus_csv, write_tiny_bert


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory):
    # without dropout the two runs see exactly the same arithmetic, up to the order of float sums
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop"), [*POSITIVE, *NEGATIVE, *FILLER], dropout=0.0)


def _train_cli(root, **train):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(train)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, "-m", "bertops.cli", "--root", str(root), "--params",
                           str(root / "params.yaml"), "stage", "train"], cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(done.stdout[done.stdout.index("{"):])  # one summary: the other rank prints nothing


def test_ddp_two_processes_match_one(tmp_path, no_dropout_model):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    write_corpus_csv(one / "corpus.csv", synthetic_reviews(240))
    params = tiny_params(no_dropout_model, train__epochs=2, train__early_stopping_patience=None)
    params["train"].update(precision="32-true", accelerator="cpu")
    (one / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("import", "prepare"):
        run_stage(stage, one / "params.yaml", one)
    shutil.copytree(one, two)

    single = _train_cli(one)
    ddp = _train_cli(two, strategy="ddp", devices=2)

    assert single["processes"] == 1 and ddp["processes"] == 2
    assert ddp["best_val_accuracy"] == pytest.approx(single["best_val_accuracy"], abs=1e-9)
    a, b = load_file(one / "models/best/model.safetensors"), load_file(two / "models/best/model.safetensors")
    assert a.keys() == b.keys()
    start = {f"bert.{k}": v for k, v in load_file(no_dropout_model / "model.safetensors").items()}
    moved = max((a[k] - start[k]).abs().max().item() for k in a if k in start)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"weights moved {moved:.4f}, DDP vs one process {diff:.2e}")
    assert moved > 1e-2, "training did not move the weights: the comparison would be empty"
    assert diff < 1e-5, f"DDP weights differ from the one-process run by {diff} (training moved them by {moved})"

    client = MlflowClient(f"sqlite:///{two / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.data.metrics["processes"] for r in runs] == [2.0]  # rank 1 created no run of its own
    curve = [m.value for m in client.get_metric_history(runs[0].info.run_id, "val_accuracy")]
    assert len(curve) == 2  # one validation per epoch, logged once
