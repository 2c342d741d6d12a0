"""Stage 5, register: log the best checkpoint as a transformers-flavor model, register a version with its
lineage, and move `champion` only through the promotion gate."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

from pathlib import Path

import mlflow
from mlflow import MlflowClient
from transformers import AutoTokenizer, pipeline

import bertops
from bertops import lineage, tracking
from bertops.config import Params, metric_mode, params_hash
from bertops.errors import BertopsError
from bertops.layout import Layout
from bertops.modeling import AUTO_MODELS
from bertops.registry import CHALLENGER, CHAMPION, current_champion, move_champion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    challenger_value: float
    champion_version: str | None = None
    champion_value: float | None = None


def decide(*, metric: str, value: float, test_split: str, min_delta: float, champion) -> Decision:
    """The gate. `champion` is the current champion ModelVersion (or None)."""
    if champion is None:
        return Decision(True, "no champion yet", metric, value)
    tags = champion.tags
    base = {"metric": metric, "challenger_value": value, "champion_version": str(champion.version)}
    if tags.get("bertops.metric") != metric:
        return Decision(False, f"champion v{champion.version} was scored on {tags.get('bertops.metric')!r}, "
                               f"not {metric!r}: not comparable", **base)
    champion_value = float(tags["bertops.test_value"])
    base["champion_value"] = champion_value
    if tags.get("bertops.test_split_sha256") != test_split:
        return Decision(False, f"champion v{champion.version} was scored on a different test split: "
                               "not comparable, no automatic promotion", **base)
    # the improvement: higher is better, except for metrics like perplexity
    delta = value - champion_value if metric_mode(metric) == "max" else champion_value - value
    if delta > 0 and delta >= min_delta:
        return Decision(True, f"test {metric} {value:.4f} beats champion v{champion.version}'s "
                              f"{champion_value:.4f}: improvement {delta:+.4f} (min_delta {min_delta})", **base)
    return Decision(False, f"test {metric} {value:.4f} vs champion v{champion.version}'s {champion_value:.4f}: "
                           f"improvement {delta:+.4f} does not reach min_delta {min_delta} (and must be > 0)",
                    **base)


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


def log_model(params: Params, layout: Layout):
    """The checkpoint as an MLflow model in the active run: transformers flavor with the task's pipeline, or,
    for extractive QA (no pipeline in transformers 5), a pyfunc model carrying bertops's decoding code."""
    example = [_pipeline_input(json.loads(line)) for line in layout.split("test").open()][:2]
    pins = lineage.package_versions("transformers", "torch", "tokenizers", "accelerate")
    requirements = [f"{k}=={v.split('+')[0]}" for k, v in pins.items() if v != "not installed"]
    if params.task.type == "question_answering":
        import pandas as pd

        from bertops.qa.pyfunc import ExtractiveQA

        task = params.task
        config = {"max_length": params.model.max_length, "doc_stride": task.doc_stride, "n_best": task.n_best,
                  "max_answer_length": task.max_answer_length, "allow_no_answer": task.allow_no_answer,
                  "null_threshold": task.null_threshold}
        return mlflow.pyfunc.log_model(
            name="model", python_model=ExtractiveQA(), artifacts={"checkpoint": str(layout.model_dir)},
            code_paths=[str(Path(bertops.__file__).parent)], input_example=pd.DataFrame(example),
            model_config=config, pip_requirements=requirements + ["pandas"])
    model = AUTO_MODELS[params.task.type].from_pretrained(layout.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(layout.model_dir)
    classifier = pipeline(params.task.pipeline_task, model=model, tokenizer=tokenizer)
    if params.task.type == "masked_lm":
        example = [text.replace("[MASK]", tokenizer.mask_token) for text in example]
    return mlflow.transformers.log_model(
        classifier, name="model", task=params.task.pipeline_task, input_example=example,
        pip_requirements=requirements, model_config=pipeline_config(params))


def register(params: Params, layout: Layout) -> dict:
    # everything that can fail on bad input is checked before anything is written to the registry
    for needed in (layout.metrics_file, layout.train_run_file, layout.model_dir / "config.json"):
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
    with mlflow.start_run(run_id=run_id):
        info = log_model(params, layout)
        mlflow.log_artifact(str(layout.model_dir / "config.json"), artifact_path="reports")
    champion = current_champion(client, name)
    decision = decide(metric=params.task.metric, value=float(metrics[params.task.metric]),
                      test_split=tags["bertops.test_split_sha256"], min_delta=params.registry.min_delta,
                      champion=champion)
    version = mlflow.register_model(info.model_uri, name, tags=tags).version
    if decision.promote:
        move_champion(client, name, version)
        if champion is not None:
            client.set_model_version_tag(name, champion.version, "bertops.replaced_by", str(version))
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)
    client.set_model_version_tag(name, version, "bertops.decision", CHAMPION if decision.promote else CHALLENGER)
    client.set_model_version_tag(name, version, "bertops.decision_reason", decision.reason)
    client.set_tag(run_id, "bertops.registered_version", str(version))
    result = {"model_name": name, "version": str(version), "model_uri": info.model_uri,
              "decision": CHAMPION if decision.promote else CHALLENGER, **asdict(decision)}
    layout.registration_file.write_text(json.dumps(result, indent=1) + "\n")
    log.info("registered %s v%s -> %s: %s", name, version, result["decision"], decision.reason)
    return result
