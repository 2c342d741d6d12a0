"""Stage 5, register: log the best checkpoint as a transformers-flavor model, register a version with its
lineage, and move `champion` only through the promotion gate."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from bertops import lineage, model_card, tracking
from bertops.config import Params, params_hash
from bertops.errors import BertopsError
from bertops.gate import Decision, Evidence, decide
from bertops.layout import Layout
from bertops.modeling import is_adapter_checkpoint
from bertops.tasks import task_of
from bertops.registry import (CHALLENGER, CHAMPION, current_champion, gate_lock, move_champion, read_predictions,
                              version_evidence)

log = logging.getLogger(__name__)


def lineage_tags(params: Params, layout: Layout, run_id: str, metrics: dict) -> dict[str, str]:
    hashes = lineage.dvc_out_hashes(layout.root)
    tags = {
        **{f"bertops.{k}": v for k, v in lineage.git_state(layout.root).items()},
        "bertops.data_raw_md5": hashes.get("data/raw", "unknown"),
        "bertops.data_prepared_md5": hashes.get("data/prepared", "unknown"),
        "bertops.test_split_sha256": lineage.file_sha256(layout.split("test")),
        "bertops.params_hash": params_hash(params),
        "bertops.params_file_sha256": lineage.file_sha256(layout.params) if layout.params.is_file() else "unknown",
        "bertops.run_id": run_id,
        "bertops.base_model": params.model.name_or_path,
        "bertops.task": params.task.type,
        "bertops.metric": params.task.metric,
        "bertops.test_value": repr(metrics[params.task.metric]),
        "bertops.hardware": lineage.hardware(),
    }
    tags.update({f"bertops.version.{k}": v for k, v in lineage.package_versions(
        "torch", "transformers", "lightning", "mlflow", "bertops").items()})
    return tags


def log_model(params: Params, layout: Layout):
    """The checkpoint as an MLflow model in the active run, as the task family registers it (a transformers
    pipeline, or a bertops pyfunc model running the code that evaluated it), with pinned requirements."""
    adapter = is_adapter_checkpoint(layout.model_dir)
    pins = lineage.package_versions("transformers", "torch", "tokenizers", "accelerate",
                                    *(["peft"] if adapter else []))
    requirements = [f"{k}=={v.split('+')[0]}" for k, v in pins.items() if v != "not installed"]
    return task_of(params).log_model(params, layout, requirements)


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
    return tags


def apply_gate(client: MlflowClient, params: Params, version: str, challenger: Evidence):
    """Under the registry lock: compare with the champion of this moment, move the alias or mark a challenger.
    Returns (decision, the champion's evidence or None)."""
    name = params.registry.model_name
    with gate_lock(client, name):
        champion = current_champion(client, name)
        before = version_evidence(client, champion) if champion is not None else None
        decision = decide(challenger, before, champion.version if champion is not None else None, params.registry,
                          task_of(params))
        if decision.promote:
            move_champion(client, name, version)
            if champion is not None:
                client.set_model_version_tag(name, champion.version, "bertops.replaced_by", str(version))
        else:
            client.set_registered_model_alias(name, CHALLENGER, version)
        for key, value in gate_tags(decision).items():
            client.set_model_version_tag(name, version, key, value)
    return decision, before


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
    tags = lineage_tags(params, layout, run_id, metrics)
    challenger = Evidence.from_reports(metrics, read_predictions(layout.predictions_file),
                                       tags["bertops.test_split_sha256"], task_of(params).class_table_key)
    with mlflow.start_run(run_id=run_id):
        info = log_model(params, layout)
        # evaluate already put metrics.json and test_predictions.jsonl (the next gate's evidence) into this run
        mlflow.log_artifact(str(layout.model_dir / "config.json"), artifact_path="reports")
        if layout.params.is_file():
            mlflow.log_artifact(str(layout.params), artifact_path="reports")  # the params themselves
    version = str(mlflow.register_model(info.model_uri, name, tags=tags).version)
    try:
        decision, before = apply_gate(client, params, version, challenger)
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
    result = {"model_name": name, "task": params.task.type, "version": version, "model_uri": info.model_uri, "run_id": run_id,
              "decision": CHAMPION if decision.promote else CHALLENGER, **asdict(decision)}
    layout.registration_file.write_text(json.dumps(result, indent=1) + "\n")
    log.info("registered %s v%s -> %s: %s", name, version, result["decision"], decision.reason)
    return result
