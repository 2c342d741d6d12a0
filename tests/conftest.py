"""Shared fixtures: a tiny random-init BERT with a vocabulary the test writes, and tiny projects."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # hermetic, offline, quiet: set before mlflow/prefect are imported by the tests
    tmp = Path(os.environ.get("PYTEST_BERTOPS_HOME", "/tmp/bertops-test-home"))
    (tmp / "prefect").mkdir(parents=True, exist_ok=True)  # Prefect does not create its home's parents
    os.environ.setdefault("PREFECT_HOME", str(tmp / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the ephemeral server's 20 s default start-up limit is too short on a loaded 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("MPLCONFIGDIR", str(tmp / "matplotlib"))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # `mlflow server` otherwise starts a job runner and seven huey consumers (GenAI jobs bertops never runs):
    # eight more Python processes importing MLflow per server start, on a 2-core machine
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.pop("MLFLOW_TRACKING_URI", None)


POSITIVE = ["great", "wonderful", "moving", "funny", "brilliant", "charming", "superb", "delightful"]
NEGATIVE = ["awful", "boring", "dull", "terrible", "clumsy", "tedious", "bland", "painful"]
FILLER = ["the", "movie", "film", "was", "plot", "acting", "really", "quite", "and", "story", "is", "a"]


def synthetic_reviews(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Short sentences whose label is carried by one sentiment word among fillers: learnable by a tiny model."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = rng.sample(FILLER, rng.randint(3, 7))
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append((" ".join(words) + f" {i}", label))  # the number keeps every text unique
    return rows


def write_tiny_bert(path: Path, words: list[str], dropout: float = 0.1) -> Path:
    """A 2-layer, hidden-32 random-init BertModel (encoder only, like the packaged MiniLM) + WordPiece vocab."""
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *map(str, range(10)),
             *[f"##{d}" for d in range(10)]]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    assert "[UNK]" not in tokenizer.tokenize("the movie was great 42")
    tokenizer.save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), [*POSITIVE, *NEGATIVE, *FILLER])


@pytest.fixture(scope="session")
def tiny_model_no_dropout_dir(tmp_path_factory) -> Path:
    """The tiny model without dropout: on hidden size 32, dropout 0.1 left one of three multi-label labels on a
    plateau past epoch 40 at seeds 0, 1 and 2 (its test F1 0.59-0.64); without it all three seeds reached test
    micro F1 0.98-1.0 (best validation epochs 19, 16 and 37)."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert-no-dropout"), [*POSITIVE, *NEGATIVE, *FILLER],
                           dropout=0.0)


def tiny_params(model_path: Path, **overrides) -> dict:
    params = {
        "corpus": {"source": "corpus.csv", "text_column": "review", "label_column": "sentiment",
                   "split": {"val": 0.2, "test": 0.2, "seed": 0}},
        "model": {"name_or_path": str(model_path), "max_length": 32},
        "task": {"type": "sequence_classification", "metric": "accuracy"},
        "train": {"epochs": 6, "batch_size": 16, "lr": 3e-3, "warmup_ratio": 0.1, "early_stopping_patience": 3,
                  "seed": 0},
        "finetune": {"encoder": "full"},  # dvc.yaml tracks whole sections: each must be present
        "registry": {"model_name": "tiny-sentiment", "min_delta": 0.0},
        "tracking": {"uri": "sqlite:///mlflow.db", "experiment": "tests", "log_every_n_steps": 2},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        params[section][key] = value
    return params


def write_corpus_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    import csv

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "sentiment"])
        writer.writerows(rows)


@pytest.fixture
def tiny_project(tmp_path, tiny_model_dir):
    """A project directory with a 240-row synthetic corpus and params for the tiny model."""
    write_corpus_csv(tmp_path / "corpus.csv", synthetic_reviews(240))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(tiny_model_dir)))
    return tmp_path


def run_flow(root: Path, *extra: str) -> dict:
    """Run the Prefect retraining flow on a project directory (ephemeral mode) and return its JSON result."""
    import json

    import time

    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.retrain", "--project-dir", str(root), *extra],
                          capture_output=True, text=True)
    print(f"flow run: {time.perf_counter() - start:.1f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{\n"):])


def make_pipeline_repo(root: Path) -> None:
    """Turn a project directory into a git + DVC repo with the real dvc.yaml and the code it depends on."""
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "bertops", root / "bertops", ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".gitignore").write_text("mlflow.db\nmlruns/\n.bertops/\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "config", "core.analytics", "false"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, check=True, env=env, capture_output=True)
