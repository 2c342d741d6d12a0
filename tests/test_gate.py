"""The promotion gate: the paired tests' numbers, each check's verdict, and the alias move under a race."""

import json
import threading
import time
from contextlib import nullcontext

import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.metrics import f1_score


from bertops.config import RegistryParams
from bertops.gate import Evidence, decide, mcnemar_exact, paired_bootstrap
from bertops.ner_metrics import entity_scores, entity_spans
from bertops.tasks import get_task

SEQ, NER, MLM = (get_task(n) for n in ("sequence_classification", "token_classification", "masked_lm"))

REGISTRY = RegistryParams(model_name="m")


def classified(correct: list[bool], split="s1", metric="accuracy", class_f1=None, support=None) -> Evidence:
    rows = [{"line": i + 2, "label": "pos" if i % 2 else "neg",
             "predicted": ("pos" if i % 2 else "neg") if ok else ("neg" if i % 2 else "pos"), "correct": ok}
            for i, ok in enumerate(correct)]
    return Evidence(metric, float(np.mean(correct)), split, rows, class_f1 or {},
                    {label: (support or {}).get(label, 20) for label in class_f1 or {}})


def test_mcnemar_exact_one_sided():
    assert mcnemar_exact([False] * 10, [True] * 10) == (pytest.approx(0.5 ** 10), 10, 0)
    p, won, lost = mcnemar_exact([False, False, False, True], [True, True, True, False])
    assert (won, lost) == (3, 1) and p == pytest.approx(5 / 16)  # P(X >= 3), X ~ Binomial(4, 1/2)
    assert mcnemar_exact([True, False], [True, False])[0] == 1.0  # no discordant pairs: no evidence


def test_bootstrap_statistics_reproduce_the_reported_metrics():
    rng = np.random.default_rng(0)
    rows = classified(list(rng.random(60) > 0.3)).predictions
    identity = np.arange(len(rows))[None, :]
    macro = SEQ.statistic("macro_f1", rows)(identity)[0]
    assert macro == pytest.approx(f1_score([r["label"] for r in rows], [r["predicted"] for r in rows],
                                           average="macro"))
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"], ["B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "B-ORG"], ["B-PER", "O"]]
    ner = [{"line": i, "gold_entities": len(entity_spans(g, "BIO")), "predicted_entities": len(entity_spans(p, "BIO")),
            "correct_entities": len(entity_spans(g, "BIO") & entity_spans(p, "BIO"))} for i, (g, p) in enumerate(zip(gold, pred))]
    assert NER.statistic("f1", ner)(np.arange(3)[None, :])[0] == pytest.approx(entity_scores(gold, pred, "BIO")["f1"])
    mlm = [{"line": 1, "loss_sum": 2.0, "masked_tokens": 2}, {"line": 2, "loss_sum": 4.0, "masked_tokens": 2}]
    assert MLM.statistic("perplexity", mlm)(np.arange(2)[None, :])[0] == pytest.approx(np.exp(1.5))


def test_paired_bootstrap_direction_and_no_difference():
    worse = [{"line": i, "gold_entities": 2, "predicted_entities": 2, "correct_entities": 1} for i in range(80)]
    better = [{**r, "correct_entities": 2 if r["line"] % 4 else 1} for r in worse]
    assert paired_bootstrap("f1", worse, better, samples=500, family=NER) < 0.01
    assert paired_bootstrap("f1", better, worse, samples=500, family=NER) > 0.99
    assert paired_bootstrap("f1", worse, worse, samples=500, family=NER) == 1.0  # never better: p = (500 + 1) / 501
    high = [{"line": i, "loss_sum": 3.0, "masked_tokens": 1} for i in range(50)]
    low = [{**r, "loss_sum": 2.0} for r in high]
    assert paired_bootstrap("perplexity", high, low, samples=300, family=MLM) < 0.01  # lower perplexity is the better one


@pytest.mark.parametrize("challenger,champion,promote,why", [
    (classified([True] * 40), None, True, "no champion yet"),
    (classified([True] * 40), classified([True] * 30 + [False] * 10, metric="macro_f1"), False, "not comparable"),
    (classified([True] * 40), classified([True] * 30 + [False] * 10, split="s2"), False, "another test split"),
    (classified([True] * 29 + [False] * 11), classified([True] * 30 + [False] * 10), False, "min_delta failed"),
    (classified([True] * 31 + [False] * 9), classified([True] * 30 + [False] * 10), False, "significance failed"),
    (classified([True] * 40), classified([True] * 30 + [False] * 10), True, "mcnemar_exact p=0.0009766"),
    (classified([True] * 40, class_f1={"pos": 0.99, "neg": 0.80}),
     classified([True] * 30 + [False] * 10, class_f1={"pos": 0.70, "neg": 0.90}), False,
     "class_regression failed: regresses by more than 0.05: neg F1 0.9000 -> 0.8000"),
    # a class with 2 test examples: F1 0.5 -> 0 is one example; left out, and said so
    (classified([True] * 40, class_f1={"pos": 0.99, "neg": 0.95, "rare": 0.0}, support={"rare": 2}),
     classified([True] * 30 + [False] * 10, class_f1={"pos": 0.70, "neg": 0.90, "rare": 0.5}), True,
     "not checked, under 10 test examples: rare (2)"),
    (classified([True] * 40, class_f1={"pos": 0.99, "neg": 0.60, "rare": 0.0}, support={"rare": 2}),
     classified([True] * 30 + [False] * 10, class_f1={"pos": 0.70, "neg": 0.90, "rare": 0.5}), False,
     "neg F1 0.9000 -> 0.6000; not checked, under 10 test examples: rare (2)"),
])
def test_decide(challenger, champion, promote, why):
    decision = decide(challenger, champion, "3" if champion else None, REGISTRY, SEQ)
    assert decision.promote is promote
    assert why in decision.reason


def test_min_delta_and_switches():
    better, champion = classified([True] * 40), classified([True] * 30 + [False] * 10)
    assert not decide(better, champion, "1", RegistryParams(model_name="m", min_delta=0.3), SEQ).promote
    slightly = classified([True] * 31 + [False] * 9)
    assert decide(slightly, champion, "1", RegistryParams(model_name="m", alpha=1.0), SEQ).promote  # no significance
    regressing = classified([True] * 40, class_f1={"neg": 0.1})
    lenient = RegistryParams(model_name="m", max_class_regression=None)
    assert decide(regressing, classified([True] * 30 + [False] * 10, class_f1={"neg": 0.9}), "1", lenient, SEQ).promote


def test_a_champion_that_could_not_be_scored_or_masked_otherwise_is_not_compared():
    unscored = decide(classified([True] * 40), None, "2", REGISTRY, SEQ, champion_scored="artifacts gone")
    assert not unscored.promote and "could not be compared on this test split (artifacts gone)" in unscored.reason
    masks = {"task.mlm_probability": "0.15", "task.masking": "token"}
    challenger = Evidence("accuracy", 1.0, "s1", classified([True] * 40).predictions,
                          comparable={**masks, "task.masking": "whole_word"})
    champion = Evidence("accuracy", 0.75, "s1", classified([True] * 30 + [False] * 10).predictions, comparable=masks)
    decision = decide(challenger, champion, "1", REGISTRY, SEQ)
    assert not decision.promote and "task.masking token -> whole_word: not comparable" in decision.reason


def test_the_same_masking_compares_as_the_register_stage_builds_it():
    """The challenger's comparable params come from the family (floats); the champion's from its version tags
    (strings): equal values must agree, or no masked LM could ever replace its first champion."""
    from bertops.rescoring import compare_tags, compared_params
    from bertops.tasks import get_task

    from pathlib import Path

    from bertops.config import load_params

    params = load_params(Path(__file__).resolve().parents[1] / "pipelines" / "cloze-name" / "params.yaml")
    family = MLM
    metrics = {"metric": "perplexity", "perplexity": 7.7}
    rows = [{"line": i, "masked_tokens": 2, "loss_sum": 1.0, "correct_tokens": 1, "correct": False} for i in range(40)]
    challenger = Evidence.from_reports(metrics, rows, "s1", comparable=family.comparable_params(params))
    champion = Evidence.from_reports({**metrics, "perplexity": 11.3}, rows, "s1",
                                     comparable=compared_params(compare_tags(family, params)))
    decision = decide(challenger, champion, "1", REGISTRY, MLM)
    assert "not comparable" not in decision.reason, decision.reason
    assert decision.champion_value == 11.3


def test_champion_without_per_example_results_blocks_automatic_promotion():
    champion = Evidence("accuracy", 0.5, "s1", None)
    decision = decide(classified([True] * 40), champion, "1", REGISTRY, SEQ)
    assert not decision.promote and "no per-example test results" in decision.reason


# ---- the alias under concurrent registrations ---------------------------------------------------------------

def _version(client, experiment_id, tmp_path, name, evidence: Evidence) -> str:
    run = client.create_run(experiment_id)
    folder = tmp_path / run.info.run_id
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"metric": evidence.metric, evidence.metric: evidence.value}))
    (folder / "test_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evidence.predictions))
    client.log_artifacts(run.info.run_id, str(folder), artifact_path="reports")
    tags = {"bertops.metric": evidence.metric, "bertops.test_value": repr(evidence.value),
            "bertops.test_split_sha256": evidence.test_split}
    return str(client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
                                           tags=tags).version)


def _race(tmp_path, monkeypatch, locked: bool):
    from bertops.config import parse_params
    from bertops.registry import move_champion
    from bertops.stages import register as register_stage

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", store)
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    experiment_id = client.create_experiment("race", artifact_location=str(tmp_path / "artifacts"))
    client.create_registered_model("m")
    base = [True] * 60 + [False] * 40
    v0 = _version(client, experiment_id, tmp_path, "m", classified(base))
    move_champion(client, "m", v0)
    good = classified([True] * 90 + [False] * 10)  # right wherever `fair` is, and on 10 more examples
    fair = classified([True] * 80 + [False] * 20)
    va, vb = (_version(client, experiment_id, tmp_path, "m", e) for e in (good, fair))
    params = parse_params({"corpus": {"source": "x.csv"}, "model": {"name_or_path": "x"},
                           "registry": {"model_name": "m"}})

    real_decide = register_stage.decide

    def slow_decide(challenger, *args, **kwargs):  # both read the champion at once; the worse one decides last
        decision = real_decide(challenger, *args, **kwargs)
        time.sleep(1.0 if challenger is good else 2.0)
        return decision

    monkeypatch.setattr(register_stage, "decide", slow_decide)
    if not locked:
        monkeypatch.setattr(register_stage, "gate_lock", lambda *a, **k: nullcontext())
    start = threading.Barrier(2)
    results, errors = {}, []

    def gate_one(version, evidence):
        try:
            start.wait()
            own = MlflowClient(tracking_uri=store, registry_uri=store)  # one client per thread, as two processes
            results[version] = register_stage.apply_gate(own, params, version, evidence)[0]
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=gate_one, args=(v, e)) for v, e in ((va, good), (vb, fair))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    champion = str(client.get_model_version_by_alias("m", "champion").version)
    return champion, va, vb, results, client


def test_concurrent_registrations_leave_the_alias_on_the_better_version(tmp_path, monkeypatch):
    champion, good, fair, results, client = _race(tmp_path, monkeypatch, locked=True)
    assert champion == good
    assert not client.search_registered_models("name = 'm.bertops-gate-lock'")  # the lock is released
    if results[fair].promote:  # it went first: then the better one was compared with it, not with v1
        assert results[good].champion_version == fair and results[good].promote
    else:
        assert results[fair].champion_version == good


def test_without_the_lock_the_race_is_lost(tmp_path, monkeypatch):
    """The control: the same race without the lock leaves the alias on the worse version."""
    champion, good, fair, results, _ = _race(tmp_path, monkeypatch, locked=False)
    assert results[good].promote and results[fair].promote
    assert results[good].champion_version == results[fair].champion_version == "1"
    assert champion == fair


def test_a_stale_lock_is_broken_once_and_a_fresh_one_never(tmp_path, monkeypatch):
    """Two waiters find the same dead holder's lock: one breaks it and takes the lock; the other waits for that
    fresh lock instead of deleting it. promote and rollback wait for the lock too."""
    from bertops.errors import BertopsError
    from bertops.registry import LOCK_SUFFIX, gate_lock, promote

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    client.create_registered_model("m")
    client.create_registered_model("m" + LOCK_SUFFIX, tags={"bertops.lock_holder": "dead@host:1",
                                                              "bertops.lock_since": repr(time.time() - 7200)})
    start, inside, errors = threading.Barrier(2), [], []

    def waiter(i):
        try:
            own = MlflowClient(tracking_uri=store, registry_uri=store)
            start.wait()
            with gate_lock(own, "m", wait_s=60, stale_s=1800):
                inside.append(("enter", i, time.monotonic()))
                time.sleep(1.5)
                inside.append(("leave", i, time.monotonic()))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    events = sorted(inside, key=lambda e: e[2])
    assert [e[0] for e in events] == ["enter", "leave", "enter", "leave"]  # one after the other, never both
    assert not client.search_registered_models(f"name = 'm{LOCK_SUFFIX}'")
    assert len(client.search_registered_models(f"name LIKE 'm{LOCK_SUFFIX}.broken-%'")) == 1

    from bertops import registry

    original = registry.gate_lock
    monkeypatch.setattr(registry, "gate_lock", lambda c, n: original(c, n, wait_s=1))
    monkeypatch.setattr(registry, "_get_version", lambda *a: None)  # no version needed to reach the lock
    with original(client, "m"):  # a live holder: a manual promotion or rollback waits for it (here: gives up)
        with pytest.raises(BertopsError, match="held the promotion lock"):
            promote(client, "m", "1", reason="a test")
        with pytest.raises(BertopsError, match="held the promotion lock"):
            registry.rollback(client, "m")
