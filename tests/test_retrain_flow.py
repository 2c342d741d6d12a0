"""The Prefect retraining flow end to end (ephemeral mode, no server) on the tiny setup: the first run executes
every DVC stage and registers a champion; a second run with nothing changed skips every stage; a clearly worse
learning rate registers a challenger that does not take the alias."""

import json

import pytest
import yaml
from mlflow import MlflowClient

from conftest import make_pipeline_repo, run_flow

pytestmark = pytest.mark.timeout(900)


def test_flow_runs_stages_skips_unchanged_and_gates(tiny_project):
    root = tiny_project
    make_pipeline_repo(root)

    first = run_flow(root)
    assert first["stages"] == {s: "ran" for s in ("import", "prepare", "train", "evaluate", "register")}
    assert first["registration"]["decision"] == "champion"
    assert json.loads((root / "reports" / "metrics.json").read_text())["accuracy"] >= 0.9

    second = run_flow(root)
    assert set(second["stages"].values()) == {"skipped"}
    assert second["registration"] is None

    params = yaml.safe_load((root / "params.yaml").read_text())
    first_lr = params["train"]["lr"]
    params["train"]["lr"] = 1e-7  # cannot learn anything in 6 short epochs
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    third = run_flow(root)
    assert third["stages"]["import"] == third["stages"]["prepare"] == "skipped"
    assert third["stages"]["train"] == "ran"
    assert third["registration"]["decision"] == "challenger"
    store = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert str(client.get_model_version_by_alias("tiny-sentiment", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("tiny-sentiment", "challenger").version) == "2"
    # lineage: the data hashes on the version are the ones dvc.lock recorded for this run
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    tags = client.get_model_version("tiny-sentiment", "2").tags
    assert tags["bertops.data_raw_md5"] == lock["import"]["outs"][0]["md5"]
    assert tags["bertops.data_prepared_md5"] == lock["prepare"]["outs"][0]["md5"]
    assert tags["bertops.git_dirty"] == "true"  # params.yaml was edited and not committed
    assert len(tags["bertops.git_commit"]) == 40

    # back to the champion's params: DVC sees a changed param, but the champion already is that model
    params["train"]["lr"] = first_lr
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    fourth = run_flow(root)
    assert fourth["champion_unchanged"] == "1"
    assert fourth["stages"]["train"] == fourth["stages"]["register"] == "skipped"
    assert len(client.search_model_versions("name = 'tiny-sentiment'")) == 2


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
