"""Training on two processes (DDP over gloo, on the CPU) through the real `bertops stage train` command, started by
Lightning's own launcher and by torchrun: each run matches a one-process run of the same params (the same global
batches) and logs one MLflow run, not one per rank."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file

from bertops.cli import run_stage
from conftest import FILLER, NEGATIVE, POSITIVE, synthetic_reviews, tiny_params, write_corpus_csv, write_tiny_bert
from test_token_classification import CITIES, FIRST, LAST, synthetic_ner, write_conll

LAUNCHERS = {
    "lightning": [sys.executable, "-m", "bertops.cli"],  # train.devices: 2 -> Lightning starts rank 1
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "-m", "bertops.cli"],
}


def _train_cli(root, launcher="lightning", **train):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(train)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([*LAUNCHERS[launcher], "--root", str(root), "--params", str(root / "params.yaml"),
                           "stage", "train"], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert done.stdout.count('"run_id"') == 1  # one summary: the other rank prints nothing
    return json.loads(done.stdout[done.stdout.index("{"):])


def _one_process(base, words, write_corpus, **overrides):
    """A prepared tiny project (kept untrained for the DDP runs) and a one-process run of it."""
    # without dropout the runs see the same arithmetic, up to the order of float sums
    (base / "model").mkdir()
    model = write_tiny_bert(base / "model", words, dropout=0.0)
    prepared = base / "prepared"
    prepared.mkdir()
    params = tiny_params(model, train__epochs=2, train__early_stopping_patience=None, **overrides)
    params["train"].update(precision="32-true", accelerator="cpu")
    (prepared / "params.yaml").write_text(yaml.safe_dump(params))
    write_corpus(prepared / params["corpus"]["source"])
    for stage in ("import", "prepare"):
        run_stage(stage, prepared / "params.yaml", prepared)
    # the same global batches need a training split that fills whole batches on 2 ranks: Lightning's
    # DistributedSampler would repeat examples to even out an odd split (content-hash splits vary in size)
    train = prepared / "data" / "prepared" / "train.jsonl"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join(lines[:len(lines) // 16 * 16]))
    single = base / "single"
    shutil.copytree(prepared, single)
    summary = _train_cli(single)
    return prepared, model, summary, load_file(single / "models/best/model.safetensors")


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    return _one_process(tmp_path_factory.mktemp("ddp"), [*POSITIVE, *NEGATIVE, *FILLER],
                        lambda path: write_corpus_csv(path, synthetic_reviews(240)))


@pytest.fixture(scope="module")
def ner(tmp_path_factory):
    # entity F1 on validation needs every rank's sentences: gathered across processes
    return _one_process(tmp_path_factory.mktemp("ddp-ner"), [*POSITIVE, *FILLER, *FIRST, *LAST, *CITIES],
                        lambda path: write_conll(path, synthetic_ner(240), separator="\t\n"),
                        corpus__source="tweets.conll", task__type="token_classification", task__metric="f1",
                        registry__model_name="tiny-ner")


@pytest.mark.parametrize("task,launcher", [("sentiment", "lightning"), ("sentiment", "torchrun"),
                                           ("ner", "lightning")])
def test_ddp_two_processes_match_one(tmp_path, request, task, launcher):
    prepared, model, single, weights = request.getfixturevalue(task)
    root = tmp_path / "ddp"
    shutil.copytree(prepared, root)
    ddp = _train_cli(root, launcher, strategy="ddp", devices=2)

    assert single["processes"] == 1 and ddp["processes"] == 2
    metric = next(k for k in single if k.startswith("best_val_"))
    assert ddp[metric] == pytest.approx(single[metric], abs=1e-9)
    trained = load_file(root / "models/best/model.safetensors")
    assert trained.keys() == weights.keys()
    start = {f"bert.{k}": v for k, v in load_file(model / "model.safetensors").items()}
    moved = max((weights[k] - start[k]).abs().max().item() for k in weights if k in start)
    diff = max((weights[k] - trained[k]).abs().max().item() for k in weights)
    assert moved > 1e-2, "training did not move the weights: the comparison would be empty"
    assert diff < 1e-5, f"DDP weights differ from the one-process run by {diff} (training moved them by {moved})"

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.data.metrics["processes"] for r in runs] == [2.0]  # rank 1 created no run of its own
    assert len(client.get_metric_history(runs[0].info.run_id, "val_loss")) == 2  # per epoch, logged once
