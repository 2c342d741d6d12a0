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
from transformers import AutoTokenizer, pipeline

import bertops
from bertops import lineage, model_card, tracking
from bertops.config import Params, params_hash
from bertops.errors import BertopsError
from bertops.gate import Decision, Evidence, decide
from bertops.layout import Layout
from bertops.modeling import AUTO_MODELS, is_adapter_checkpoint, needs_bertops_loader
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


def _pipeline_input(row: dict):
    """What the task's pipeline takes: a string (a token-classification row's words joined by spaces), or
    {text, text_pair} for a sentence pair."""
    if "tokens" in row:
        return " ".join(row["tokens"])
    if "question" in row:
        return {"question": row["question"], "context": row["context"]}
    if "text_pair" not in row and "label" not in row:  # masked LM: a cloze with one word masked
        words = row["text"].split()
        words[len(words) // 2] = "[MASK]"
        return " ".join(words)
    return {"text": row["text"], "text_pair": row["text_pair"]} if "text_pair" in row else row["text"]


def pipeline_config(params: Params) -> dict | None:
    """Call arguments the registered pipeline runs with, matching how the model was trained and evaluated."""
    task = params.task
    if task.type == "token_classification":
        return {"aggregation_strategy": "first"}  # whole words; each word's tag read at its first sub-token
    return None


def _log_bertops_pyfunc(python_model, layout: Layout, example_rows: list[dict], config: dict,
                        requirements: list[str]):
    """A pyfunc model that runs bertops's own inference code, shipped with it through `code_paths`."""
    import pandas as pd

    return mlflow.pyfunc.log_model(
        name="model", python_model=python_model, artifacts={"checkpoint": str(layout.model_dir)},
        code_paths=[str(Path(bertops.__file__).parent)], input_example=pd.DataFrame(example_rows),
        model_config=config, pip_requirements=requirements + ["pandas"])


def log_model(params: Params, layout: Layout):
    """The checkpoint as an MLflow model in the active run: transformers flavor with the task's pipeline, or a
    pyfunc model carrying bertops's own inference code for extractive QA (no pipeline in transformers 5) and for
    peft adapters (only the adapter and head weights are stored; the base model loads with the model)."""
    example = [_pipeline_input(json.loads(line)) for line in layout.split("test").open()][:2]
    adapter = is_adapter_checkpoint(layout.model_dir)
    pins = lineage.package_versions("transformers", "torch", "tokenizers", "accelerate",
                                    *(["peft"] if adapter else []))
    requirements = [f"{k}=={v.split('+')[0]}" for k, v in pins.items() if v != "not installed"]
    if needs_bertops_loader(layout.model_dir) and params.task.type in ("sequence_classification",
                                                                         "token_classification"):
        from bertops.pyfunc_classifier import BertopsClassifier

        rows = [x if isinstance(x, dict) else {"text": x} for x in example]
        config = {"task_type": params.task.type, "max_length": params.model.max_length,
                  "tag_scheme": getattr(params.task, "tag_scheme", "BIO")}
        return _log_bertops_pyfunc(BertopsClassifier(), layout, rows, config, requirements)
    if params.task.type == "question_answering":
        from bertops.qa.pyfunc import ExtractiveQA

        task = params.task
        config = {"task_type": task.type, "max_length": params.model.max_length, "doc_stride": task.doc_stride,
                  "n_best": task.n_best,
                  "max_answer_length": task.max_answer_length, "allow_no_answer": task.allow_no_answer,
                  "null_threshold": task.null_threshold}
        return _log_bertops_pyfunc(ExtractiveQA(), layout, example, config, requirements)
    model = AUTO_MODELS[params.task.type].from_pretrained(layout.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(layout.model_dir)
    classifier = pipeline(params.task.pipeline_task, model=model, tokenizer=tokenizer)
    if params.task.type == "masked_lm":
        example = [text.replace("[MASK]", tokenizer.mask_token) for text in example]
    return mlflow.transformers.log_model(
        classifier, name="model", task=params.task.pipeline_task, input_example=example,
        pip_requirements=requirements, model_config=pipeline_config(params))


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
        decision = decide(challenger, before, champion.version if champion is not None else None, params.registry)
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
                                       tags["bertops.test_split_sha256"])
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
    result = {"model_name": name, "version": version, "model_uri": info.model_uri, "run_id": run_id,
              "decision": CHAMPION if decision.promote else CHALLENGER, **asdict(decision)}
    layout.registration_file.write_text(json.dumps(result, indent=1) + "\n")
    log.info("registered %s v%s -> %s: %s", name, version, result["decision"], decision.reason)
    return result
