"""The fresh-data loop end to end, with real git, DVC, Prefect (ephemeral mode) and MLflow on the tiny model.
The corpus comes from a DVC data registry (another git + DVC repository with its own remote) through
`dvc import`; the flow's sync step brings it to the registry's latest revision with `dvc update`:
- v1 with a learning rate too small to learn: the first version is champion;
- v2 (more rows) is committed to the registry: the flow trains on it with no commit in the project, re-scores
  the champion on the new test split (which holds none of the champion's training rows) and promotes the better
  model;
- a worse model, registered by a register stage that was killed after it created the version and then re-run:
  one version, challenger;
- back to the champion's inputs: training is skipped; a code change to a training dependency is not skipped;
- a champion whose artifacts are gone cannot be scored: no promotion, with the reason."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from mlflow import MlflowClient

from conftest import make_pipeline_repo, run_flow, synthetic_reviews, write_corpus_csv

pytestmark = pytest.mark.timeout(1200)
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}


def sh(cwd, *cmd) -> str:
    done = subprocess.run(list(cmd), cwd=cwd, env=GIT_ENV, capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout.strip()


def dvc(cwd, *args) -> str:
    return sh(cwd, sys.executable, "-m", "dvc", *args)


def publish(registry, rows, message) -> str:
    """Commit a corpus version to the data registry and push its data to the registry's remote."""
    write_corpus_csv(registry / "corpus.csv", rows)
    dvc(registry, "add", "corpus.csv")
    sh(registry, "git", "add", "corpus.csv.dvc", ".gitignore")
    sh(registry, "git", "commit", "-qm", message)
    dvc(registry, "push")
    return sh(registry, "git", "rev-parse", "HEAD")


def texts(root, split) -> set[str]:
    return {json.loads(line)["text"] for line in (root / "data" / "prepared" / f"{split}.jsonl").open()}


def set_lr(root, lr):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["lr"] = lr
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def test_fresh_data_from_a_data_registry_rescored_champion_idempotent_register_and_skips(tiny_project, tmp_path_factory):
    from bertops import registry as reg
    from bertops.config import load_params
    from bertops.layout import Layout
    from bertops.rescoring import score_champion
    from bertops.tasks import task_of
    from bertops.corpora.splitting import read_split

    rows = synthetic_reviews(300)
    registry = tmp_path_factory.mktemp("data-registry")
    sh(registry, "git", "init", "-q")
    dvc(registry, "init", "-q")
    dvc(registry, "config", "core.analytics", "false")
    dvc(registry, "remote", "add", "-d", "storage", str(tmp_path_factory.mktemp("registry-remote")))
    sh(registry, "git", "add", "-A")
    sh(registry, "git", "commit", "-qm", "registry")
    rev1 = publish(registry, rows[:200], "corpus v1")

    root = tiny_project
    (root / "corpus.csv").unlink()
    make_pipeline_repo(root)
    dvc(root, "import", str(registry), "corpus.csv", "-o", "corpus.csv")
    sh(root, "git", "add", "corpus.csv.dvc", ".gitignore")
    sh(root, "git", "commit", "-qm", "import the corpus from the data registry")
    set_lr(root, 1e-7)  # v1's champion learns nothing: a later, real model must beat it
    store = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)

    first = run_flow(root)
    assert first["stages"] == {s: "ran" for s in ("import", "prepare", "train", "evaluate", "register")}
    assert first["registration"]["decision"] == "champion"
    tags = client.get_model_version("tiny-sentiment", "1").tags
    assert tags["bertops.corpus_registry_url"] == str(registry) and tags["bertops.corpus_registry_rev"] == rev1
    v1_train, v1_test = texts(root, "train"), texts(root, "test")

    # v2 is committed to the registry only: the next run picks it up through dvc update
    rev2 = publish(registry, rows, "corpus v2: 100 more rows")
    set_lr(root, 3e-3)
    second = run_flow(root)
    assert second["synced"]["updated"] == ["corpus.csv.dvc"]
    assert second["stages"]["train"] == "ran"
    v2_test = texts(root, "test")
    assert not v2_test & v1_train  # none of the champion's training rows is in the new test split
    assert v1_test <= v2_test  # every old test row stayed in test
    registration = second["registration"]
    assert registration["decision"] == "champion", registration["reason"]
    assert registration["champion_scored"].startswith("re-scored on this test split")
    assert registration["champion_value"] < 0.8 <= registration["challenger_value"]
    assert registration["champion_registered_value"] == pytest.approx(float(tags["bertops.test_value"]))
    assert registration["p_value"] < 0.05
    assert client.get_model_version("tiny-sentiment", "2").tags["bertops.corpus_registry_rev"] == rev2
    card = (root / "reports" / "model_card.md").read_text()
    assert "on this version's test split" in card and "at its registration" in card
    assert "| corpus.label_separator | \\| |" in card  # a pipe inside a table cell is escaped

    # a worse model; its register stage is killed after it created the version, then the flow re-runs it
    set_lr(root, 1e-7)
    dvc(root, "repro", "evaluate")
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\n"
        "from bertops.stages import register\n"
        "register.apply_gate = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from bertops.cli import main\n"
        "sys.exit(main(['stage', 'register']))")], cwd=root, env=GIT_ENV)
    assert killed.returncode == -9
    assert len(client.search_model_versions("name = 'tiny-sentiment'")) == 3  # created, never gated
    third = run_flow(root)
    assert third["stages"]["train"] == "skipped" and third["stages"]["register"] == "ran"
    assert third["registration"]["version"] == "3" and third["registration"]["decision"] == "challenger"
    assert len(client.search_model_versions("name = 'tiny-sentiment'")) == 3  # one version per training run
    assert str(client.get_model_version_by_alias("tiny-sentiment", "champion").version) == "2"

    # back to the champion's inputs: retraining would only repeat it
    set_lr(root, 3e-3)
    fourth = run_flow(root)
    assert fourth["champion_unchanged"] == "2"
    assert fourth["stages"]["train"] == fourth["stages"]["register"] == "skipped"
    # ...but a change to the code a training stage depends on makes the flow retrain
    params = load_params(root / "params.yaml")
    code = root / "bertops" / "tasks" / "sequence_classification.py"
    original = code.read_text()
    code.write_text(original + "\n# a fix\n")
    assert reg.champion_with_same_inputs(client, "tiny-sentiment", root, params) == (None, ["code_sha256"])
    code.write_text(original)
    assert reg.champion_with_same_inputs(client, "tiny-sentiment", root, params) == ("2", [])

    # a champion whose artifacts are gone: no evidence, a reason, nothing raised
    champion = client.get_model_version_by_alias("tiny-sentiment", "champion")
    model = client.get_logged_model(champion.source.removeprefix("models:/"))
    shutil.rmtree(model.artifact_location.removeprefix("file://"))
    layout = Layout(root)
    result = score_champion(client, champion, task_of(params), params, layout,
                            json.loads(layout.labels_file.read_text()), read_split(layout.split("test")), "another")
    assert result.evidence is None and "could not be loaded" in result.how


def test_decision_markdown_for_a_skipped_run():
    from flows.retrain import decision_markdown

    text = decision_markdown({"train": "skipped", "register": "skipped"}, None, None)
    assert "No new version" in text


def test_decision_markdown_for_a_challenger():
    from flows.retrain import decision_markdown

    registration = {"metric": "accuracy", "decision": "challenger", "version": "2", "challenger_value": 0.81,
                    "champion_version": "1", "champion_value": 0.85, "reason": "delta -0.04", "model_name": "m"}
    metrics = {"accuracy": 0.81, "macro_f1": 0.8,
               "per_class": {"pos": {"precision": 0.8, "recall": 0.82, "f1": 0.81, "support": 50}}}
    text = decision_markdown({"train": "ran", "register": "ran"}, registration, metrics)
    assert "Decision: **challenger**" in text and "| champion before | v1 | 0.8500 |" in text
    assert "| pos | 0.800 | 0.820 | 0.810 | 50 |" in text
