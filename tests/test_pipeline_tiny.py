"""The whole pipeline, stage by stage, on a tiny random-init BERT: training learns, metrics and plots are
written, registration carries lineage, and the promotion gate moves `champion` only for a better model."""

from collections import Counter
import json

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bertops import tracking
from bertops.config import load_params
from bertops.layout import Layout
from bertops.stages.evaluate import evaluate
from bertops.stages.import_corpus import import_corpus
from bertops.stages.prepare import prepare
from bertops.tasks.sequence_classification import classification_metrics
from bertops.predict import predict
from bertops.stages.register import register
from bertops.stages.train import train

LINEAGE_TAGS = ("bertops.git_commit", "bertops.git_dirty", "bertops.data_raw_md5", "bertops.data_prepared_md5",
                "bertops.test_split_sha256", "bertops.params_hash", "bertops.params_file_sha256", "bertops.run_id",
                "bertops.base_model", "bertops.hardware", "bertops.version.transformers")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """Import, prepare, train and evaluate once; tests below register from it."""
    from conftest import synthetic_reviews, tiny_params, write_corpus_csv
    import yaml

    root = tmp_path_factory.mktemp("project")
    write_corpus_csv(root / "corpus.csv", synthetic_reviews(240))
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(tiny_model_dir)))
    params, layout = load_params(root / "params.yaml"), Layout(root)
    import_corpus(params, layout)
    prepare(params, layout)
    summary = train(params, layout)
    metrics = evaluate(params, layout)
    return params, layout, summary, metrics


def test_tiny_model_learns_the_task(trained):
    _, layout, summary, metrics = trained
    assert summary["best_val_accuracy"] >= 0.9
    assert metrics["accuracy"] >= 0.9, metrics  # chance is 0.5
    assert set(metrics["per_class"]) == {"negative", "positive"}
    assert (layout.model_dir / "config.json").is_file() and (layout.model_dir / "tokenizer.json").is_file()
    config = json.loads((layout.model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    for name in ("metrics.json", "confusion_matrix.png", "learning_curve.png", "test_predictions.jsonl",
                 "plots/train_loss.csv", "plots/val_metrics.csv"):
        assert (layout.reports_dir / name).is_file(), name


def test_training_run_logged_to_mlflow(trained):
    params, layout, summary, metrics = trained
    tracking.configure(params, layout)
    run = MlflowClient().get_run(summary["run_id"])
    assert run.data.params["train.lr"] == str(params.train.lr)
    assert run.data.params["model.name_or_path"] == params.model.name_or_path
    history = MlflowClient().get_metric_history(summary["run_id"], "train_loss")
    assert len(history) >= 5  # per-step loss, sampled every log_every_n_steps
    lr = MlflowClient().get_metric_history(summary["run_id"], "lr_encoder")
    assert max(m.value for m in lr) == pytest.approx(params.train.lr, rel=0.05)  # warmup reached the peak
    assert sorted(lr, key=lambda m: m.step)[-1].value < params.train.lr / 2  # then decayed
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    val_points = MlflowClient().get_metric_history(summary["run_id"], "val_accuracy")
    assert len(val_points) == summary["epochs_trained"]


def _set_test_results(layout, labels, wrong: int, new_run: bool = True):
    """Rewrite evaluate's outputs as if the model got the first `wrong` test examples wrong (predictions and
    metrics kept consistent), in a fresh MLflow run as a new training would have, and log them to the run as
    evaluate does; returns the accuracy."""
    rows = [json.loads(line) for line in layout.predictions_file.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["correct"] = i >= wrong
        row["predicted"] = row["label"] if row["correct"] else next(x for x in labels if x != row["label"])
    layout.predictions_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = classification_metrics([labels.index(r["label"]) for r in rows],
                                     [labels.index(r["predicted"]) for r in rows], labels)
    layout.metrics_file.write_text(json.dumps({**metrics, "metric": "accuracy"}))
    if new_run:
        run = MlflowClient().create_run(json.loads(layout.train_run_file.read_text())["experiment_id"])
        tracking.write_train_run(layout, run.info.run_id, run.info.experiment_id)
    for path in (layout.metrics_file, layout.predictions_file):
        MlflowClient().log_artifact(tracking.read_train_run(layout), str(path), artifact_path="reports")
    return metrics["accuracy"]


def test_promotion_gate_both_ways(trained):
    params, layout, summary, metrics = trained
    name = params.registry.model_name
    store = tracking.tracking_uri(params, layout.root)
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    labels = json.loads(layout.labels_file.read_text())
    tracking.configure(params, layout)

    _set_test_results(layout, labels, wrong=12, new_run=False)  # the run training logged to
    first = register(params, layout)
    assert first["decision"] == "champion" and first["reason"] == "no champion yet"
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == first["version"]
    for tag in LINEAGE_TAGS:
        assert champion.tags.get(tag) not in (None, ""), tag
    assert champion.tags["bertops.run_id"] == summary["run_id"]
    assert "# tiny-sentiment v1" in champion.description and "no champion yet" in champion.description

    _set_test_results(layout, labels, wrong=14)  # worse: the alias stays, the version is tagged with why
    worse = register(params, layout)
    assert worse["decision"] == "challenger"
    assert str(client.get_model_version_by_alias(name, "champion").version) == first["version"]
    assert str(client.get_model_version_by_alias(name, "challenger").version) == worse["version"]
    tags = client.get_model_version(name, worse["version"]).tags
    assert tags["bertops.decision"] == "challenger"
    assert tags["bertops.gate.min_delta"].startswith("failed: test accuracy")
    assert json.loads(layout.registration_file.read_text())["decision"] == "challenger"

    _set_test_results(layout, labels, wrong=11)  # better by one example: not significant, the alias stays
    lucky = register(params, layout)
    tags = client.get_model_version(name, lucky["version"]).tags
    assert lucky["decision"] == "challenger" and tags["bertops.gate.min_delta"].startswith("passed")
    assert tags["bertops.gate.significance"].startswith("failed: mcnemar_exact p=0.5 (1 examples only the challenger")
    assert str(client.get_model_version_by_alias(name, "champion").version) == first["version"]

    _set_test_results(layout, labels, wrong=0)  # right on the 12 the champion missed: p = 0.5 ** 12
    better = register(params, layout)
    assert better["decision"] == "champion" and better["p_value"] == pytest.approx(0.5 ** 12)
    assert str(client.get_model_version_by_alias(name, "champion").version) == better["version"]
    assert client.get_model_version(name, first["version"]).tags["bertops.replaced_by"] == better["version"]
    card = (layout.reports_dir / "model_card.md").read_text()
    assert card == client.get_model_version(name, better["version"]).description
    for expected in ("## Intended use", "| significance | passed | mcnemar_exact p=0.0002441", "## Limitations",
                     f"champion v{first['version']}", "| train.lr |"):
        assert expected in card, expected
    artifacts = {f.path for f in client.list_artifacts(better["run_id"], "reports")}
    assert {"reports/model_card.md", "reports/test_predictions.jsonl", "reports/class_changes.png"} <= artifacts


def test_review_prints_the_gate_for_a_reviewer(trained, capsys):
    """Builds on the versions test_promotion_gate_both_ways registered."""
    from bertops.cli import main

    params, layout, _, _ = trained
    base = ["--root", str(layout.root), "--params", str(layout.params)]
    assert main([*base, "review", params.registry.model_name, "3"]) == 0
    out = capsys.readouterr().out
    assert "reviewing v3 against champion v4" in out
    assert "significance: failed: mcnemar_exact p=0.5" in out
    assert "positive" in out and "negative" in out  # per-class F1 side by side


def test_scoring_server_serves_what_evaluate_scored(trained):
    """The registered model behind `mlflow models serve`: the test split's labels exactly as evaluate predicted
    them, a text four times model.max_length answered, bad requests a 400 that says why."""
    import serving
    from conftest import FILLER

    params, layout, _, _ = trained
    first = register(params, layout)  # the same version the tests above registered (registering is idempotent per run)
    card = layout.reports_dir / "model_card.md"
    before = card.read_text()
    card.unlink()  # as `dvc repro` does before it re-runs the stage
    again = register(params, layout)
    assert again["already_registered"] and again["version"] == first["version"] and card.read_text() == before
    tracking.configure(params, layout)
    info = mlflow.models.get_model_info(f"models:/{params.registry.model_name}@champion")
    assert set(info.flavors) == {"python_function"}  # a model from code: nothing unpickled
    assert info.flavors["python_function"]["model_code_path"].endswith("served_model.py")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["text"]
    rows, evaluated = serving.test_rows(layout), serving.evaluated(layout)
    with serving.serving_project(layout.root, params.registry.model_name) as (url, model_uri, uri):
        out = serving.served(url, [{"text": r["text"]} for r in rows])
        assert [o["label"] for o in out] == [e["predicted"] for e in evaluated]
        assert max(abs(o["probability"] - e["probability"]) for o, e in zip(out, evaluated)) < 1e-4
        assert all(abs(sum(o["probabilities"].values()) - 1) < 1e-5 for o in out)
        # plain strings are texts; a text 4x max_length is cut where training and evaluation cut it
        long = serving.long_text(params.model.max_length, FILLER)
        status, body = serving.invoke(url, {"inputs": ["the movie was great and charming", long]})
        assert status == 200 and body["predictions"][0]["label"] == "positive", body
        serving.assert_bad_request(url, {"dataframe_records": [{"text": "fine"}, {"text": "  "}]},
                                   "row 1: 'text' is empty")
        serving.assert_bad_request(url, {"dataframe_records": [{"review": "fine"}]}, "missing inputs ['text']")
    serving.assert_requirements_cover_imports(model_uri, uri, [{"text": "great"}])


def test_missing_model_is_a_clear_error(tmp_path, tiny_project):
    from bertops.errors import BertopsError
    from bertops.config import parse_params
    import yaml

    raw = yaml.safe_load((tiny_project / "params.yaml").read_text())
    raw["model"]["name_or_path"] = str(tmp_path / "no-such-model")
    params, layout = parse_params(raw), Layout(tiny_project)
    import_corpus(params, layout)
    prepare(params, layout)
    with pytest.raises(BertopsError, match="model.name_or_path: cannot load"):
        train(params, layout)
    assert not (tiny_project / "mlflow.db").exists()  # failed before any run was created


def test_killed_training_resumes_from_last_checkpoint(tiny_project, tiny_model_no_dropout_dir, tmp_path_factory):
    """SIGKILL the train stage mid-epoch, epochs after its validation metric stopped improving; re-running it
    continues the same MLflow run from the last epoch's checkpoint (not the best one's), with the data order the
    uninterrupted run had: without dropout, the same weights and the same train_loss at every step as a run that
    was never killed."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from safetensors.torch import load_file

    raw = yaml.safe_load((tiny_project / "params.yaml").read_text())
    raw["model"]["name_or_path"] = str(tiny_model_no_dropout_dir)
    raw["train"].update({"epochs": 30, "early_stopping_patience": None})  # long enough to be killed midway
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(raw))
    never_killed = tmp_path_factory.mktemp("never-killed")
    for name in ("corpus.csv", "params.yaml"):
        shutil.copy(tiny_project / name, never_killed / name)
    params, layout = load_params(tiny_project / "params.yaml"), Layout(tiny_project)
    import_corpus(params, layout)
    prepare(params, layout)

    cmd = [sys.executable, "-m", "bertops.cli", "--root", str(tiny_project), "--params",
           str(tiny_project / "params.yaml"), "stage", "train"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240

    def while_training(ready) -> None:
        while time.time() < deadline and not ready():
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)

    def saved_epoch(name: str) -> int:
        found = list((tiny_project / ".bertops").rglob(name))  # Lightning writes it atomically (fsspec)
        return torch.load(found[0], map_location="cpu", weights_only=False)["epoch"] if found else -1

    # past the epoch where the tiny run's val_accuracy reaches 1.0 and stays: the resume point must keep moving
    # after the best checkpoint stops improving (Lightning 2.6's save_last=True does not)
    while_training(lambda: saved_epoch("last.ckpt") >= 6)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert saved_epoch("best.ckpt") < saved_epoch("last.ckpt")  # the plateau this test is about
    assert not layout.model_dir.exists()  # killed midway: nothing was exported
    state = json.loads(next((tiny_project / ".bertops").rglob("state.json")).read_text())

    summary = train(params, layout)
    assert summary["run_id"] == state["run_id"]  # the same MLflow run continued
    tracking.configure(params, layout)
    history = MlflowClient().get_metric_history(summary["run_id"], "val_accuracy")
    # every epoch validated (a point per epoch, at its last global step), nothing the killed process logged was lost
    # (its spool shipped on resume), and at most the one epoch after the last checkpoint was redone; a restart from
    # scratch would redo the first epoch, whose checkpoint existed before the kill
    logged = Counter(m.step for m in history)
    assert len(logged) == 30
    redone = sorted(step for step, count in logged.items() if count > 1)
    assert len(redone) <= 1 and min(logged) not in redone and max(logged.values()) <= 2, logged
    assert summary["epochs_trained"] == 30
    assert not list((tiny_project / ".bertops").rglob("*.ckpt"))  # cleaned up after success
    resumed_loss = {}
    for m in MlflowClient().get_metric_history(summary["run_id"], "train_loss"):
        resumed_loss.setdefault(m.step, set()).add(round(m.value, 5))  # a redone step: logged twice, same value

    reference_params, reference = load_params(never_killed / "params.yaml"), Layout(never_killed)
    import_corpus(reference_params, reference)
    prepare(reference_params, reference)
    reference_summary = train(reference_params, reference)
    tracking.configure(reference_params, reference)
    reference_loss = {m.step: {round(m.value, 5)}
                      for m in MlflowClient().get_metric_history(reference_summary["run_id"], "train_loss")}
    assert resumed_loss == reference_loss
    ours, theirs = (load_file(str(d / "model.safetensors")) for d in (layout.model_dir, reference.model_dir))
    assert ours.keys() == theirs.keys()
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-5


def test_predict_cli_prints_label_and_probability(trained, capsys):
    from bertops.cli import main

    params, layout, _, _ = trained
    code = main(["--root", str(layout.root), "--params", str(layout.params), "predict", "--json",
                 "the movie was great and charming", "the film was awful and boring"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["label"] for r in rows] == ["positive", "negative"]
    assert all(0.5 < r["probability"] <= 1 for r in rows)
    # what the scoring server answers (the same registered model), and a long text cut where evaluation cuts it
    tracking.configure(params, layout)
    served = mlflow.pyfunc.load_model(f"models:/{params.registry.model_name}@champion")
    long_text = "an odd , long and rambling tale that goes nowhere at all " * 6
    texts = [r["text"] for r in rows] + ["an odd and rambling tale that goes nowhere", "ok", "great", long_text]
    ours = predict(None, texts, None, layout.params, layout.root)
    theirs = served.predict(pd.DataFrame({"text": texts})).to_dict("records")
    assert [r["label"] for r in ours] == [o["label"] for o in theirs]
    assert all(abs(r["probability"] - o["probability"]) < 1e-4 for r, o in zip(ours, theirs))
    model = AutoModelForSequenceClassification.from_pretrained(layout.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(layout.model_dir)
    with torch.no_grad():
        enc = tokenizer(long_text, truncation=True, max_length=params.model.max_length, return_tensors="pt")
        expected = torch.softmax(model(**enc).logits, -1).max().item()
    assert ours[-1]["probability"] == pytest.approx(expected, abs=1e-4)


def test_predict_from_the_model_uri_alone_reads_csv_and_jsonl_and_writes_every_probability(trained, tmp_path,
                                                                                          monkeypatch, capsys):
    """No params.yaml: the model's MLmodel says its task; --file reads a CSV or nested JSONL column; --output
    writes CSV with one probability column per class, or JSONL; options go after the command."""
    import csv

    from bertops.cli import main

    params, layout, _, _ = trained
    uri = tracking.tracking_uri(params, layout.root)
    model = f"models:/{params.registry.model_name}@champion"
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    texts = ["the movie was great and charming", "the film was awful and boring"]
    (tmp_path / "in.csv").write_text("id,review\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)))
    assert main(["predict", "--model-uri", model, "--tracking-uri", uri, "--file", "in.csv", "--text-column",
                 "review", "--output", "out.csv"]) == 0
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [r["label"] for r in rows] == ["positive", "negative"] and [r["text"] for r in rows] == texts
    assert {"probability", "probabilities.negative", "probabilities.positive"} <= set(rows[0])
    assert all(abs(float(r["probabilities.negative"]) + float(r["probabilities.positive"]) - 1) < 1e-3 for r in rows)
    # the same numbers as predict in the project, with its params
    ours = predict(None, texts, None, layout.params, layout.root)
    assert [round(float(r["probability"]), 4) for r in rows] == [r["probability"] for r in ours]

    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"review": {"body": t}}) + "\n" for t in texts))
    assert main(["predict", "--file", "in.jsonl", "--text-column", "review.body", "--output", "out.jsonl",
                 "--model-uri", model, "--tracking-uri", uri]) == 0
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["label"] for r in lines] == ["positive", "negative"] and set(lines[0]["probabilities"]) == {
        "negative", "positive"}
    capsys.readouterr()
    # a missing column stops with the file and line, before the model loads
    assert main(["predict", "--file", "in.csv", "--text-column", "body", "--model-uri", model,
                 "--tracking-uri", uri]) == 2
    assert "in.csv:2: missing field 'body'" in capsys.readouterr().err
    # no params.yaml, no --tracking-uri, no MLFLOW_TRACKING_URI: say what is missing
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["predict", "--model-uri", model, "fine"]) == 2
    assert "--tracking-uri" in capsys.readouterr().err


def test_predict_cli_unknown_model_is_a_clear_error(trained, capsys):
    from bertops.cli import main

    params, layout, _, _ = trained
    code = main(["--root", str(layout.root), "--params", str(layout.params), "predict",
                 "--model-uri", "models:/no-such-model@champion", "text"])
    assert code == 2
    assert "cannot load models:/no-such-model@champion" in capsys.readouterr().err


def test_configure_does_not_leak_the_store_into_the_environment(tmp_path, tiny_project):
    import os

    params = load_params(tiny_project / "params.yaml")
    tracking.configure(params, Layout(tiny_project))
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri() == f"sqlite:///{tiny_project / 'mlflow.db'}"


def test_manual_promotion_rollback_and_lineage_lookup(trained, capsys):
    """Builds on the versions test_promotion_gate_both_ways registered (champion history 1 -> 4)."""
    from bertops.cli import main
    from bertops.registry import champion_history

    params, layout, summary, _ = trained
    name = params.registry.model_name
    store = tracking.tracking_uri(params, layout.root)
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    base = ["--root", str(layout.root), "--params", str(layout.params)]
    assert champion_history(client, name) == ["1", "4"]

    assert main([*base, "promote", name, "2", "--reason", "reviewed by hand: better on the new slice"]) == 0
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    tags = client.get_model_version(name, "2").tags
    assert tags["bertops.manual_promotion_reason"] == "reviewed by hand: better on the new slice"
    assert tags["bertops.manual_promotion_by"]

    assert main([*base, "rollback", name]) == 0
    assert str(client.get_model_version_by_alias(name, "champion").version) == "4"
    assert main([*base, "rollback", name]) == 0
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    capsys.readouterr()
    assert main([*base, "rollback", name]) == 2
    assert "no earlier champion" in capsys.readouterr().err
    assert main([*base, "promote", name, "99", "--reason", "x"]) == 2
    assert "no version 99" in capsys.readouterr().err

    assert main([*base, "lineage", name, "1"]) == 0
    out = capsys.readouterr().out
    assert f"bertops.run_id\t{summary['run_id']}" in out
    client.set_model_version_tag(name, "1", "bertops.data_raw_md5", "abc123")  # as dvc.lock would record it
    assert main([*base, "lineage", "--data", "abc123"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [f"{name}\t1"]


def test_same_seed_same_model_whatever_the_global_rng(tiny_project):
    import torch
    from safetensors.torch import load_file

    params, layout = load_params(tiny_project / "params.yaml"), Layout(tiny_project)
    import_corpus(params, layout)
    prepare(params, layout)
    weights = []
    for disturbance in (1, 2):
        torch.manual_seed(disturbance)  # whatever ran before in the process must not matter
        train(params, layout)
        weights.append(load_file(str(layout.model_dir / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
