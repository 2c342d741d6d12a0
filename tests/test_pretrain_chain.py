"""Chained pipelines through real `dvc repro` on the tiny model: task-adaptive masked-LM pretraining on the
fine-tune's own training split, then fine-tuning from that checkpoint (the shipped pipelines/mr-tapt/*/dvc.yaml
files). DVC runs the upstream first, reruns only what a change touches, and the checkpoint carries the pooler."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModel

from conftest import REPO, synthetic_reviews, tiny_params, write_corpus_csv

pytestmark = pytest.mark.timeout(1800)  # about 5 min alone on 2 cores; far more on a shared one
PIPES = ("pipelines/mr-tapt/pretrain", "pipelines/mr-tapt/finetune")
TARGETS = [f"{p}/dvc.yaml" for p in PIPES]


def repro(root) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", *TARGETS], cwd=root, capture_output=True,
                          text=True, env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return re.findall(r"Running stage '([^']+)'", done.stdout)


def edit(path, section, **values):
    params = yaml.safe_load(path.read_text())
    params[section].update(values)
    path.write_text(yaml.safe_dump(params))


def texts(path):
    return {json.loads(line)["text"] for line in path.read_text().splitlines()}


def test_tapt_chain_runs_upstream_first_and_reruns_only_what_changed(tmp_path, tiny_model_dir):
    root = tmp_path
    shutil.copytree(REPO / "bertops", root / "bertops", ignore=shutil.ignore_patterns("__pycache__"))
    pre, fine = root / PIPES[0], root / PIPES[1]
    for pipe in PIPES:
        (root / pipe).mkdir(parents=True)
        shutil.copy(REPO / pipe / "dvc.yaml", root / pipe / "dvc.yaml")  # the shipped files, as they are
    write_corpus_csv(fine / "corpus.csv", synthetic_reviews(240))
    store = "sqlite:///../../../mlflow.db"
    fine_params = tiny_params("../pretrain/models/best", registry__model_name="tiny-tapt", tracking__uri=store)
    (fine / "params.yaml").write_text(yaml.safe_dump(fine_params))
    pre_params = tiny_params(tiny_model_dir, corpus__source="../finetune/data/prepared/train.jsonl",
                             task__type="masked_lm", task__metric="perplexity", registry__model_name="tiny-tapt-mlm",
                             tracking__uri=store)
    pre_params["corpus"].update(format="jsonl", text_column="text")
    pre_params["train"].update(epochs=2, early_stopping_patience=None)
    (pre / "params.yaml").write_text(yaml.safe_dump(pre_params))
    (root / ".gitignore").write_text("mlflow.db\nmlruns/\n.bertops/\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, check=True, env=env, capture_output=True)

    ran = repro(root)
    stages = ("import", "prepare", "train", "evaluate", "register")
    assert sorted(ran) == sorted(f"{p}/dvc.yaml:{s}" for p in PIPES for s in stages)
    order = {name: i for i, name in enumerate(ran)}
    assert order[f"{PIPES[1]}/dvc.yaml:prepare"] < order[f"{PIPES[0]}/dvc.yaml:import"]
    assert order[f"{PIPES[0]}/dvc.yaml:train"] < order[f"{PIPES[1]}/dvc.yaml:train"]

    # TAPT saw the fine-tune's training sentences and none of its validation or test sentences
    seen = texts(pre / "data" / "raw" / "corpus.jsonl")
    assert seen == texts(fine / "data" / "prepared" / "train.jsonl")
    assert not seen & (texts(fine / "data" / "prepared" / "test.jsonl") | texts(fine / "data" / "prepared" / "val.jsonl"))
    # the MLM checkpoint keeps the base model's pooler for the sentence classifier that starts from it
    saved = load_file(pre / "models" / "best" / "model.safetensors")
    base = AutoModel.from_pretrained(tiny_model_dir)
    assert torch.equal(saved["bert.pooler.dense.weight"], base.pooler.dense.weight)
    assert "cls.predictions.transform.dense.weight" in saved  # and the trained MLM head
    assert json.loads((fine / "reports" / "metrics.json").read_text())["accuracy"] >= 0.9
    assert (json.loads((pre / "reports" / "metrics.json").read_text())["perplexity"]
            < len((tiny_model_dir / "vocab.txt").read_text().split()))

    edit(fine / "params.yaml", "train", lr=2e-3)  # a fine-tune change leaves the pretraining alone
    assert sorted(repro(root)) == sorted(f"{PIPES[1]}/dvc.yaml:{s}" for s in ("train", "evaluate", "register"))

    edit(pre / "params.yaml", "train", epochs=3)  # a pretraining change retrains both, re-imports nothing
    assert sorted(repro(root)) == sorted(f"{p}/dvc.yaml:{s}" for p in PIPES for s in ("train", "evaluate", "register"))
