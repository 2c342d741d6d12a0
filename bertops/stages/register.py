"""Stage 5, register: log the best checkpoint as the task family's served model, register a version with its
lineage, and move `champion` only through the promotion gate."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from bertops import lineage, model_card, tracking
from bertops.config import Params
from bertops.errors import BertopsError
from bertops.gate import Decision, Evidence, decide
from bertops.layout import Layout
from bertops.tasks import task_of
from bertops.registry import (CHALLENGER, CHAMPION, current_champion, gate_lock, move_champion, read_predictions,
                              training_inputs, version_evidence)
from bertops.rescoring import ChampionScore, compare_tags, score_champion
from bertops.corpora.splitting import read_split

log = logging.getLogger(__name__)


def lineage_tags(params: Params, layout: Layout, run_id: str, metrics: dict) -> dict[str, str]:
    tags = {
        **{f"bertops.{k}": v for k, v in lineage.git_state(layout.root).items()},
        "bertops.data_raw_md5": lineage.dvc_out_hashes(layout.root).get("data/raw", "unknown"),
        # prepared data, params hash, code and base model: what the flow compares before it skips training
        **training_inputs(layout.root, params),
        "bertops.test_split_sha256": lineage.file_sha256(layout.split("test")),
        "bertops.params_file_sha256": lineage.file_sha256(layout.params) if layout.params.is_file() else "unknown",
        "bertops.run_id": run_id,
        "bertops.base_model": params.model.name_or_path,
        "bertops.task": params.task.type,
        "bertops.metric": params.task.metric,
        "bertops.test_value": repr(metrics[params.task.metric]),
        "bertops.hardware": lineage.hardware(),
    }
    # a corpus (or fixed test file) brought in with `dvc import`: the data registry and the revision trained on
    tags.update({f"bertops.{k}": v for k, v in lineage.corpus_registry(layout.root, params.corpus.source).items()})
    if params.corpus.test_source:
        tags.update({f"bertops.test_source_{k.removeprefix('corpus_')}": v
                     for k, v in lineage.corpus_registry(layout.root, params.corpus.test_source).items()})
    tags.update({f"bertops.version.{k}": v for k, v in lineage.package_versions(
        "torch", "transformers", "lightning", "mlflow", "bertops").items()})
    return tags


def log_model(params: Params, layout: Layout):
    """The checkpoint as the task family's served MLflow model (bertops.tasks.pyfunc) in the active run."""
    return task_of(params).log_model(params, layout)


def gate_tags(decision: Decision) -> dict[str, str]:
    tags = {"bertops.decision": CHAMPION if decision.promote else CHALLENGER,
            "bertops.decision_reason": decision.reason[:5000]}
    for check in decision.checks:
        tags[f"bertops.gate.{check.name}"] = f"{'passed' if check.passed else 'failed'}: {check.detail}"[:5000]
    if decision.p_value is not None:
        tags["bertops.gate.p_value"] = f"{decision.p_value:.6g}"
        tags["bertops.gate.test"] = decision.test
    if decision.champion_version is not None:
        tags["bertops.gate.champion_version"] = decision.champion_version
    if decision.champion_value is not None:
        tags["bertops.gate.champion_value"] = repr(decision.champion_value)  # on this version's test split
    if decision.champion_registered_value is not None:
        tags["bertops.gate.champion_registered_value"] = repr(decision.champion_registered_value)
    if decision.champion_scored:
        tags["bertops.gate.champion_scored"] = decision.champion_scored[:5000]
    return tags


def stored_champion_score(client: MlflowClient, mv) -> ChampionScore:
    """The champion's results as it was registered (a gate decision without re-scoring: tests, same split)."""
    return ChampionScore(version_evidence(client, mv), "its per-example results at registration",
                         float(mv.tags.get("bertops.test_value", "nan")))


def apply_gate(client: MlflowClient, params: Params, version: str, challenger: Evidence,
               score: Callable | None = None):
    """Under the registry lock: compare with the champion of this moment, scored on the challenger's test split by
    `score(mv) -> ChampionScore`, then move the alias or mark a challenger. Scoring runs before the lock is
    taken, and again under it only if the champion changed meanwhile. Returns (decision, the champion's evidence
    or None)."""
    name = params.registry.model_name
    score = score or (lambda mv: stored_champion_score(client, mv))
    early = current_champion(client, name)
    scored = {early.version: score(early)} if early is not None and str(early.version) != str(version) else {}
    with gate_lock(client, name):
        champion = current_champion(client, name)
        if champion is not None and str(champion.version) == str(version):
            champion = None  # a retry after this version was promoted: nothing to compare with but itself
        result = None
        if champion is not None:
            result = scored.get(champion.version) or score(champion)
        decision = decide(challenger, result.evidence if result else None,
                          champion.version if champion is not None else None, params.registry, task_of(params),
                          champion_scored=result.how if result else None,
                          champion_registered_value=result.registered_value if result else None)
        if decision.promote:
            move_champion(client, name, version)
            if champion is not None:
                client.set_model_version_tag(name, champion.version, "bertops.replaced_by", str(version))
        else:
            client.set_registered_model_alias(name, CHALLENGER, version)
        for key, value in gate_tags(decision).items():
            client.set_model_version_tag(name, version, key, value)
    return decision, result.evidence if result else None


def existing_version(client: MlflowClient, name: str, run_id: str):
    """The version already registered from this training run (a retried register stage), or None."""
    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return max(found, key=lambda mv: int(mv.version)) if found else None


def reusable_logged_model(run_id: str, experiment_id: str):
    """A model this run already logged completely (a register retried after logging, before registering)."""
    try:
        models = mlflow.search_logged_models(experiment_ids=[experiment_id],
                                             filter_string=f"source_run_id = '{run_id}'", output_format="list")
    except MlflowException:
        return None
    ready = [m for m in models if m.name == "model" and str(m.status).endswith("READY")]
    return max(ready, key=lambda m: m.creation_timestamp) if ready else None


def already_registered(name: str, mv, run_id: str) -> dict:
    """registration.json of a version whose gate already decided (the stage is re-run, or retried after it)."""
    tags = mv.tags
    metric = tags.get("bertops.metric")
    champion = tags.get("bertops.gate.champion_version")
    return {"model_name": name, "task": tags.get("bertops.task"), "version": str(mv.version), "model_uri": mv.source,
            "run_id": run_id, "decision": tags["bertops.decision"], "promote": tags["bertops.decision"] == CHAMPION,
            "reason": tags.get("bertops.decision_reason", ""), "metric": metric,
            "challenger_value": float(tags.get("bertops.test_value", "nan")), "champion_version": champion,
            "champion_value": float(tags["bertops.gate.champion_value"]) if "bertops.gate.champion_value" in tags
            else None, "p_value": float(tags["bertops.gate.p_value"]) if "bertops.gate.p_value" in tags else None,
            "test": tags.get("bertops.gate.test"), "checks": [], "already_registered": True}


def register(params: Params, layout: Layout) -> dict:
    # everything that can fail on bad input is checked before anything is written to the registry
    for needed in (layout.metrics_file, layout.predictions_file, layout.train_run_file,
                   layout.model_dir / "config.json"):
        if not needed.is_file():
            raise BertopsError(f"{needed}: missing; run the train and evaluate stages first")
    metrics = json.loads(layout.metrics_file.read_text())
    if metrics.get("metric") != params.task.metric:
        raise BertopsError(f"{layout.metrics_file}: scored on {metrics.get('metric')!r} but task.metric is "
                           f"{params.task.metric!r}; re-run evaluate")
    run_id = tracking.read_train_run(layout)
    tracking.configure(params, layout)
    client = MlflowClient()
    name = params.registry.model_name
    family = task_of(params)
    tags = {**lineage_tags(params, layout, run_id, metrics), **compare_tags(family, params)}
    challenger = Evidence.from_reports(metrics, read_predictions(layout.predictions_file),
                                       tags["bertops.test_split_sha256"], family.class_table_key,
                                       family.comparable_params(params))

    # idempotent: a retry (Prefect retries the stage; a kill; a re-run) never registers a second version of the
    # same training run, and a version whose gate already decided is not decided again
    mv = existing_version(client, name, run_id)
    if mv is not None and mv.tags.get("bertops.decision") in (CHAMPION, CHALLENGER):
        log.info("%s v%s was already registered from run %s (%s): nothing to do", name, mv.version, run_id,
                 mv.tags["bertops.decision"])
        result = already_registered(name, mv, run_id)
        # `dvc repro` removes a stage's outputs before it runs: write both back (the card is the version's text)
        (layout.reports_dir / "model_card.md").write_text(mv.description or "")
        layout.registration_file.write_text(json.dumps(result, indent=1) + "\n")
        return result
    if mv is None:
        experiment_id = client.get_run(run_id).info.experiment_id
        logged = reusable_logged_model(run_id, experiment_id)
        with mlflow.start_run(run_id=run_id):
            info = logged or log_model(params, layout)
            # evaluate already put metrics.json and test_predictions.jsonl (the next gate's evidence) into this run;
            # params.yaml and labels.json let a later version re-score this one on its own test split
            mlflow.log_artifact(str(layout.model_dir / "config.json"), artifact_path="reports")
            mlflow.log_artifact(str(layout.labels_file), artifact_path="reports")
            if layout.params.is_file():
                mlflow.log_artifact(str(layout.params), artifact_path="reports")  # the params themselves
        version = str(mlflow.register_model(info.model_uri, name, tags=tags).version)
        model_uri = info.model_uri
    else:
        version, model_uri = str(mv.version), mv.source
        log.info("%s v%s was registered from run %s before the stage stopped: gating it", name, version, run_id)
    labels = json.loads(layout.labels_file.read_text())
    test_rows = read_split(layout.split("test"))

    def score(champion_mv):
        return score_champion(client, champion_mv, family, params, layout, labels, test_rows,
                              tags["bertops.test_split_sha256"])

    try:
        decision, before = apply_gate(client, params, version, challenger, score)
    except BaseException as exc:
        client.set_model_version_tag(name, version, "bertops.decision", f"error: {exc}"[:5000])
        raise
    card = model_card.render(params, layout, name, version, tags, metrics, challenger, decision, before)
    (layout.reports_dir / "model_card.md").write_text(card)
    client.update_model_version(name, version, description=card)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifact(str(layout.reports_dir / "model_card.md"), artifact_path="reports")
        if before is not None and challenger.class_f1:  # in the run only: there is no plot without a champion
            with tempfile.TemporaryDirectory() as tmp:
                plot = model_card.plot_class_changes(challenger, before, decision, Path(tmp) / "class_changes.png")
                mlflow.log_artifact(str(plot), artifact_path="reports")
    client.set_tag(run_id, "bertops.registered_version", version)
    result = {"model_name": name, "task": params.task.type, "version": version, "model_uri": model_uri,
              "run_id": run_id, "decision": CHAMPION if decision.promote else CHALLENGER, **asdict(decision)}
    layout.registration_file.write_text(json.dumps(result, indent=1) + "\n")
    log.info("registered %s v%s -> %s: %s", name, version, result["decision"], decision.reason)
    return result
