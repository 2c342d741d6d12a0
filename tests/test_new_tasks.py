"""The two task families added as one module each (bertops/tasks/sequence_regression.py and
multi_label_classification.py): each runs through the real dvc.yaml and the Prefect flow, registers, and predicts
by alias; their pieces (quantile-stratified splits, target scale, thresholds on validation, the gate's paired
statistics) are checked on their own."""

import csv
import json
import random
import subprocess
import sys

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from conftest import FILLER, NEGATIVE, POSITIVE, make_pipeline_repo, run_flow, tiny_params
from bertops.config import parse_params
from bertops.errors import CorpusError, ParamsError
from bertops.layout import Layout
from bertops.tasks import get_task
from bertops.tasks.multi_label_classification import choose_thresholds, f1_counts
from bertops.tasks.sequence_regression import quantile_bins, regression_metrics

REGRESSION, MULTI = get_task("sequence_regression"), get_task("multi_label_classification")


def scored_reviews(n: int, seed: int = 0) -> list[tuple[str, float]]:
    """A score carried by the sentiment words: +1 per positive, -1 per negative word (1 to 3 of one polarity),
    plus noise, among fillers."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sign = 1 if i % 2 == 0 else -1
        k = rng.randint(1, 3)
        words = rng.sample(FILLER, rng.randint(3, 6))
        for word in rng.sample(POSITIVE if sign > 0 else NEGATIVE, k):
            words.insert(rng.randrange(len(words) + 1), word)
        rows.append((" ".join(words) + f" {i}", round(sign * k + rng.uniform(-0.2, 0.2), 3)))
    return rows


def tagged_reviews(n: int, seed: int = 0) -> list[dict]:
    """Labels that co-occur: praise (a positive word), complaint (a negative word), acting (the word acting)."""
    rng = random.Random(seed)
    fillers = [w for w in FILLER if w != "acting"]
    rows = []
    for i in range(n):
        words = rng.sample(fillers, rng.randint(3, 5))
        labels = set()
        if rng.random() < 0.5:
            words.insert(rng.randrange(len(words) + 1), "acting")
            labels.add("acting")
        for kind, pool in (("praise", POSITIVE), ("complaint", NEGATIVE)):
            if rng.random() < 0.45:
                words.insert(rng.randrange(len(words) + 1), rng.choice(pool))
                labels.add(kind)
        rows.append({"text": " ".join(words) + f" {i}", "tags": sorted(labels)})
    return rows


# ---- pieces ------------------------------------------------------------------------------------------------

def test_quantile_bins_are_balanced_and_respect_order():
    values = list(np.random.default_rng(0).normal(size=500))
    bins = quantile_bins(values, 5)
    counts = np.bincount(bins)
    assert len(counts) == 5 and counts.min() >= 95
    order = np.argsort(values)
    assert all(np.diff(np.array(bins)[order]) >= 0)  # a larger value never falls in a lower bin


def test_regression_metrics_and_bootstrap_statistics_agree():
    rng = np.random.default_rng(1)
    gold = rng.normal(size=80)
    pred = gold + rng.normal(scale=0.5, size=80)
    metrics = regression_metrics(gold, pred)
    rows = [{"line": i, "target": g, "predicted": p} for i, (g, p) in enumerate(zip(gold, pred))]
    identity = np.arange(80)[None, :]
    for metric in ("pearson", "spearman", "rmse", "mae"):
        assert REGRESSION.statistic(metric, rows)(identity)[0] == pytest.approx(metrics[metric])
    assert REGRESSION.metric_mode("rmse") == "min" and REGRESSION.metric_mode("pearson") == "max"


def test_multilabel_statistics_and_thresholds():
    gold = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=bool)
    pred = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], dtype=bool)
    counts = f1_counts(gold, pred)
    assert counts["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert counts["subset_accuracy"] == pytest.approx(0.5)
    rows = [{"line": i, "labels": [n for n, g in zip("ab", gs) if g], "predicted": [n for n, p in zip("ab", ps) if p],
             "correct": bool((gs == ps).all())} for i, (gs, ps) in enumerate(zip(gold, pred))]
    identity = np.arange(4)[None, :]
    for metric in ("micro_f1", "macro_f1", "subset_accuracy"):
        assert MULTI.statistic(metric, rows)(identity)[0] == pytest.approx(counts[metric])
    # label 0 is separable at 0.3, label 1 at 0.7: each label gets its own threshold
    probs = np.array([[0.35, 0.8], [0.4, 0.75], [0.2, 0.6], [0.1, 0.3]])
    gold = np.array([[1, 1], [1, 1], [0, 0], [0, 0]], dtype=bool)
    chosen = choose_thresholds(probs, gold, None)
    assert 0.2 < chosen[0] <= 0.35 and 0.6 < chosen[1] <= 0.75
    assert list(choose_thresholds(probs, gold, 0.4)) == [0.4, 0.4]


def _project(root, model_dir, source, **overrides):
    params = tiny_params(model_dir, corpus__source=source, **overrides)
    params["train"].update(epochs=10, early_stopping_patience=4)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return params


def test_bad_targets_and_labels_stop_with_file_and_line(tmp_path, tiny_model_dir):
    from bertops.stages.import_corpus import import_corpus
    from bertops.stages.prepare import prepare

    (tmp_path / "scores.csv").write_text("review,score\nthe movie was great,1.5\nthe plot was dull,high\n")
    _project(tmp_path, tiny_model_dir, "scores.csv", task__type="sequence_regression", task__metric="pearson",
             corpus__label_column="score")
    params = parse_params(yaml.safe_load((tmp_path / "params.yaml").read_text()))
    import_corpus(params, Layout(tmp_path))
    with pytest.raises(CorpusError, match=r"corpus.csv:3: target 'high' in field 'score' is not a number"):
        prepare(params, Layout(tmp_path))

    (tmp_path / "tags.jsonl").write_text('{"review": "a b", "tags": ["praise"]}\n{"review": "c", "tags": ["nope"]}\n')
    _project(tmp_path, tiny_model_dir, "tags.jsonl", task__type="multi_label_classification",
             task__metric="micro_f1", corpus__label_column="tags", corpus__labels=["praise", "acting"])
    params = parse_params(yaml.safe_load((tmp_path / "params.yaml").read_text()))
    import_corpus(params, Layout(tmp_path))
    with pytest.raises(CorpusError, match=r"corpus.jsonl:2: unknown label 'nope'"):
        prepare(params, Layout(tmp_path))
    with pytest.raises(ParamsError, match=r"task.metric: .*'micro_f1'"):
        parse_params({**yaml.safe_load((tmp_path / "params.yaml").read_text()),
                      "task": {"type": "multi_label_classification", "metric": "accuracy"}})


# ---- the whole loop ----------------------------------------------------------------------------------------

def _predict(root, *texts) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "bertops.cli", "predict", "--json", *texts], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.strip().splitlines()[-len(texts):]]


@pytest.mark.timeout(1200)
def test_regression_through_dvc_and_the_flow_registers_predicts_and_gates(tmp_path, tiny_model_dir):
    root = tmp_path
    with (root / "scores.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "score"])
        writer.writerows(scored_reviews(400))
    params = _project(root, tiny_model_dir, "scores.csv", task__type="sequence_regression", task__metric="pearson",
                      corpus__label_column="score", registry__model_name="tiny-score")
    # Pearson ignores scale: on one split epoch 1 had the best val Pearson (0.941) at RMSE 2.3, so early stopping
    # kept it; all 10 epochs reach Pearson 0.959 at RMSE 0.72
    params["train"]["early_stopping_patience"] = None
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    make_pipeline_repo(root)
    first = run_flow(root)
    assert set(first["stages"].values()) == {"ran"} and first["registration"]["decision"] == "champion"

    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert metrics["metric"] == "pearson" and metrics["pearson"] > 0.9 and metrics["spearman"] > 0.85
    assert metrics["rmse"] < 0.6 * metrics["constant_rmse"]  # far better than always predicting the mean
    stats = json.loads((root / "data" / "prepared" / "stats.json").read_text())
    means = [stats["splits"][s]["mean"] for s in ("train", "val", "test")]
    assert max(means) - min(means) < 0.8  # by content hash: every split sees the whole range (target sd ~2)
    shares = stats["target_bin_shares"]["shares"]
    assert all(len(shares[s]) == 5 and min(shares[s].values()) > 0.05 for s in ("train", "val", "test"))
    scale = json.loads((root / "data" / "prepared" / "labels.json").read_text())
    config = json.loads((root / "models" / "best" / "config.json").read_text())
    assert config["bertops_target_mean"] == scale["target_mean"] and len(config["id2label"]) == 1  # one output

    # predicted by alias, in the target's own units (restored from the standardised head)
    high, low = _predict(root, "the movie was brilliant superb and charming", "the plot was awful")
    assert high["score"] > 1.5 and low["score"] < -0.3

    # the scoring server: the test split's scores as evaluate predicted them, a text 4x max_length answered
    import serving

    layout = Layout(root)
    rows, evaluated = serving.test_rows(layout), serving.evaluated(layout)
    with serving.serving_project(root, "tiny-score") as (url, model_uri, uri):
        out = serving.served(url, [{"text": r["text"]} for r in rows])
        assert max(abs(o["score"] - e["predicted"]) for o, e in zip(out, evaluated)) < 1e-4
        assert len(serving.served(url, [{"text": serving.long_text(params["model"]["max_length"], FILLER)}])) == 1
        serving.assert_bad_request(url, {"dataframe_records": [{"text": ""}]}, "row 0: 'text' is empty")

    # a second version on a grown corpus: the champion (a pyfunc model) is re-scored on the new test split, and
    # the gate runs the family's paired bootstrap on Pearson
    first_test = (root / "data" / "prepared" / "test.jsonl").read_text().splitlines()
    with (root / "scores.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "score"])
        writer.writerows(scored_reviews(480))  # the same first 400 rows, and 80 more
    second = run_flow(root)
    assert set(first_test) <= set((root / "data" / "prepared" / "test.jsonl").read_text().splitlines())
    registration = second["registration"]
    assert registration["champion_scored"].startswith("re-scored on this test split")
    assert registration["champion_value"] > 0.8  # the champion (a pyfunc), scored on rows it partly never saw
    version = registration["version"]
    store = f"sqlite:///{root / 'mlflow.db'}"  # both URIs: an earlier in-process test set mlflow's global registry
    tags = MlflowClient(tracking_uri=store, registry_uri=store).get_model_version("tiny-score", version).tags
    assert tags["bertops.gate.test"] == "paired_bootstrap" and 0 < float(tags["bertops.gate.p_value"]) <= 1


@pytest.mark.timeout(1200)
def test_multilabel_through_dvc_and_the_flow_registers_and_predicts(tmp_path, tiny_model_no_dropout_dir):
    root = tmp_path
    rows = tagged_reviews(600)
    (root / "tagged.jsonl").write_text("".join(json.dumps({"review": r["text"], "tags": r["tags"]}) + "\n"
                                               for r in rows))
    _project(root, tiny_model_no_dropout_dir, "tagged.jsonl", task__type="multi_label_classification",
             task__metric="micro_f1", corpus__label_column="tags", registry__model_name="tiny-tags")
    params = yaml.safe_load((root / "params.yaml").read_text())
    # three sigmoids take longer than one softmax: without dropout, seeds 0-2 had their best val micro F1 (0.99) at
    # epochs 19, 16 and 37, after plateaus that early stopping would cut short
    params["train"].update(epochs=40, early_stopping_patience=None)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    make_pipeline_repo(root)
    result = run_flow(root)
    assert set(result["stages"].values()) == {"ran"} and result["registration"]["decision"] == "champion"

    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert metrics["metric"] == "micro_f1" and metrics["micro_f1"] > 0.85 and metrics["subset_accuracy"] > 0.6
    assert set(metrics["per_class"]) == {"acting", "complaint", "praise"}
    config = json.loads((root / "models" / "best" / "config.json").read_text())
    assert set(config["bertops_thresholds"]) == {"acting", "complaint", "praise"}  # chosen on validation
    predictions = [json.loads(line) for line in (root / "reports" / "test_predictions.jsonl").open()]
    assert any(len(p["labels"]) >= 2 for p in predictions)  # labels co-occur in the fixture

    both, none_ = _predict(root, "the acting was brilliant and the plot awful", "the movie was a story")
    assert {x["label"] for x in both["labels"]} == {"acting", "praise", "complaint"}
    assert none_["labels"] == []  # no label word: no label passes its threshold

    import serving

    layout = Layout(root)
    rows, evaluated = serving.test_rows(layout), serving.evaluated(layout)
    with serving.serving_project(root, "tiny-tags") as (url, model_uri, uri):
        out = serving.served(url, [{"text": r["text"]} for r in rows])
        assert [sorted(o["labels"]) for o in out] == [sorted(e["predicted"]) for e in evaluated]
        assert len(serving.served(url, [{"text": serving.long_text(params["model"]["max_length"], FILLER)}])) == 1
        serving.assert_bad_request(url, {"dataframe_records": [{"text": None}]}, "row 0: 'text' is missing")
