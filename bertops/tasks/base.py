"""What a task family is: the one object the stages, the flows and the served model ask for everything that differs
between tasks. A family (bertops/tasks/<family>.py) subclasses `TaskFamily`, sets its class attributes and
overrides what its task does differently; the stages never branch on the task.

The interface, in the order the pipeline uses it:
- `params`: the pydantic model of the `task:` section (`type` and `metric` at least);
- `raw_suffix`: the suffix import gives the raw copy of a user's file (and so the format prepare reads);
- `prepare`: read and validate the raw corpus (file:line errors), group and split it, write the splits;
- `load_model`, `encode`, `collators`, `build_module`, `finalize`: the head, the features, the batches, the
  LightningModule (head and loss, validation metrics) and what the checkpoint records after training;
- `score`: test metrics, per-example rows, the evaluation plot's matrix;
- `statistic`, `paired_test`, `class_table_key`: what the promotion gate compares, example by example;
- `log_model`, `serve`: what is registered in MLflow and how that model predicts;
- `predict`, `format_row`: `bertops predict`;
- `intended_use`, `metrics_markdown`, `limitations`: the model card's sections.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)


class TaskParamsBase(BaseModel):
    """The `task:` section. Every family's params model subclasses this one."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str
    metric: str

    @property
    def pipeline_task(self) -> str:
        from bertops.tasks import get_task

        return get_task(self.type).pipeline_task


@dataclass
class Scored:
    """What scoring the test split gives: the metrics (reports/metrics.json), one row per test example
    (reports/test_predictions.jsonl, the gate's paired evidence) and a matrix to plot (rows x columns)."""

    metrics: dict
    predictions: list[dict]
    matrix: np.ndarray
    row_labels: list[str]
    column_labels: list[str] | None = None  # None: the same as row_labels (a confusion matrix)
    title: str = "test confusion matrix"
    axis_labels: tuple[str, str] = ("predicted", "true")


@dataclass
class Collators:
    train: Callable
    eval: Callable | None = None  # None: the training collator


class TaskFamily:
    """Defaults suit a labelled task whose model is a plain transformers head; families override the rest."""

    name: ClassVar[str]
    params: ClassVar[type[TaskParamsBase]]
    auto_model: ClassVar[type]  # the transformers Auto class that puts the head on the encoder
    pipeline_task: ClassVar[str]  # recorded in lineage; the transformers pipeline when the flavor is used
    labelled: ClassVar[bool] = True  # the head is sized by the label set (labels.json)
    peft_task_type: ClassVar[str | None] = None  # peft's name for the head it keeps trainable; None: no adapters
    layer_mix_allowed: ClassVar[bool] = True
    lower_is_better: ClassVar[frozenset[str]] = frozenset()
    class_table_key: ClassVar[str | None] = None  # the metrics.json key of the per-class/type table
    class_kind: ClassVar[str] = "class"
    intended_use: ClassVar[str] = ""
    raw_suffixes: ClassVar[tuple[str, ...]] = ("csv", "tsv", "jsonl")
    served_packages: ClassVar[tuple[str, ...]] = ()  # what `serve` imports beyond bertops.tasks.pyfunc's list
    # the training schedule measured for this family where it differs from config.py's defaults (measured on MR),
    # which `bertops init` writes into a new pipeline's params.yaml, with the note saying where it was measured
    train_defaults: ClassVar[dict] = {}
    train_defaults_note: ClassVar[str] = ""

    # ---- params ---------------------------------------------------------------------------------------------
    def check_params(self, params) -> None:
        """Cross-section checks (raise ValueError naming the fields); the section itself is `params`."""
        if self.peft_task_type is None and params.finetune.encoder in ("lora", "ia3"):
            raise ValueError(f"finetune.encoder: {params.finetune.encoder} is not available for task.type "
                             f"{self.name} (allowed: full, frozen)")
        if not self.layer_mix_allowed and params.finetune.layer_features != "last":
            raise ValueError(f"finetune.layer_features: {params.finetune.layer_features} is not available for "
                             f"task.type {self.name} (allowed: last)")

    def metric_mode(self, metric: str) -> str:
        return "min" if metric in self.lower_is_better else "max"

    # ---- import and prepare ---------------------------------------------------------------------------------
    def raw_suffix(self, source: Path, corpus) -> str:
        from bertops.corpora.readers import detect_format

        return detect_format(source, corpus.format)

    def prepare(self, params, layout) -> dict:
        raise NotImplementedError

    # ---- training -------------------------------------------------------------------------------------------
    def head_kwargs(self, labels: list[str]) -> dict:
        if not self.labelled:
            return {}
        return dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                    label2id={label: i for i, label in enumerate(labels)})

    def load_model(self, params, labels: list[str], tokenizer, layout):
        """The pretrained encoder with this task's fresh head: (model, names of the new parameters)."""
        from bertops.modeling import load_with_head

        return load_with_head(params.model.name_or_path, self.auto_model, params.model.revision,
                              **self.head_kwargs(labels))

    def encode(self, rows: list[dict], tokenizer, labels: list[str], params) -> list[dict]:
        raise NotImplementedError

    def collators(self, tokenizer, params) -> Collators:
        from transformers import DataCollatorWithPadding

        from bertops.training.module import auto_pad_multiple

        return Collators(DataCollatorWithPadding(tokenizer, pad_to_multiple_of=auto_pad_multiple(params.train)))

    def build_module(self, model, new_params: set[str], params):
        raise NotImplementedError

    def finalize(self, model, tokenizer, params, layout) -> None:
        """After the best epoch's weights are loaded and before they are saved (thresholds, target scale)."""

    def after_save(self, params, layout) -> None:
        """After the checkpoint is written to models/best."""

    def load_trained(self, model_dir, dtype=None):
        import torch

        from bertops.modeling import load_trained

        return load_trained(model_dir, self.auto_model, dtype or torch.float32)

    def load_for_scoring(self, layout):
        """The trained checkpoint (float32, on the GPU when there is one, eval mode) and its tokenizer."""
        import torch
        from transformers import AutoTokenizer

        model = self.load_trained(layout.model_dir)
        if torch.cuda.is_available():
            model.cuda()
        return model.eval(), AutoTokenizer.from_pretrained(layout.model_dir)

    # ---- scoring and the gate -------------------------------------------------------------------------------
    def score(self, params, layout, labels: list[str], rows: list[dict]) -> Scored:
        raise NotImplementedError

    def statistic(self, metric: str, rows: list[dict]) -> Callable[[np.ndarray], np.ndarray]:
        """The metric recomputed on resamples: an index matrix (resamples x n) -> one value per resample."""
        raise ValueError(f"task.type {self.name}: no paired statistic for metric {metric!r}")

    def paired_test(self, metric: str) -> str:
        return "paired_bootstrap"

    def comparable_params(self, params) -> dict:
        """Params a test score depends on beyond the model and the test rows: two versions compare only when
        these agree (recorded on each version as bertops.compare.<name> tags)."""
        return {}

    def example_key(self, row: dict):
        """What identifies a test example across versions' per-example rows (the corpus line by default)."""
        return row["line"]

    def baseline(self, metric: str, rows: list[dict]) -> float | None:
        """The test score of a trivial predictor (a study run no better than it failed); None: not defined."""
        return None

    # ---- registering and serving ----------------------------------------------------------------------------
    def example_input(self, row: dict):
        """A prepared test row as the registered model takes it."""
        return {"text": row["text"], "text_pair": row["text_pair"]} if "text_pair" in row else {"text": row["text"]}

    def input_columns(self, params) -> dict[str, bool]:
        """The served model's input columns (strings), each with whether a row must have it: a text, and a second
        text when the model was trained on sentence pairs."""
        return {"text": True, **({"text_pair": True} if params.corpus.text_pair_column else {})}

    def input_schema(self, params):
        """The registered signature's inputs (what `mlflow models serve` enforces before `serve` runs)."""
        from mlflow.types import ColSpec, DataType, Schema

        return Schema([ColSpec(DataType.string, name, required=required)
                       for name, required in self.input_columns(params).items()])

    def params_schema(self):
        """The registered signature's inference params (a request's "params", e.g. top_k); None: none."""
        return None

    def serve_config(self, params) -> dict:
        """What `serve` needs besides the checkpoint, stored in the registered model's config."""
        return {"max_length": params.model.max_length, "inputs": list(self.input_columns(params))}

    def log_model(self, params, layout):
        """The bertops pyfunc model that runs `serve` (the evaluated code, shipped with the model)."""
        from bertops.tasks.pyfunc import log_task_model

        example = [self.example_input(json.loads(line)) for line in layout.split("test").open()][:2]
        return log_task_model(self, params, layout, example)

    def serve(self, model, tokenizer, rows: list[dict], config: dict):
        """Predictions for rows of the registered model's input schema, as a DataFrame."""
        raise NotImplementedError

    def validate_rows(self, rows: list, config: dict) -> list[dict]:
        """The request's rows, each with every input column as a non-blank string (a plain string is a row's
        text); ValueError naming the row and the column otherwise. Versions registered before the inputs were
        recorded take a text, and a pair when every row has one. Returns the rows' input columns."""
        rows = [{"text": r} if isinstance(r, str) else dict(r) if isinstance(r, dict) else r for r in rows]
        if not rows:
            raise ValueError("the request has no rows")
        columns = config.get("inputs") or (["text", "text_pair"] if all(
            isinstance(r, dict) and r.get("text_pair") is not None for r in rows) else ["text"])
        need = " and ".join(repr(c) for c in columns)
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(f"row {i}: expected an object with {need}, got {type(row).__name__}")
            for column in columns:
                value = row.get(column)
                if value is None:
                    kind = " (this model takes sentence pairs)" if len(columns) > 1 else ""
                    raise ValueError(f"row {i}: {column!r} is missing{kind}; each row needs {need}")
                if not isinstance(value, str):
                    raise ValueError(f"row {i}: {column!r} must be a string, got {type(value).__name__}")
                if not value.strip():
                    raise ValueError(f"row {i}: {column!r} is empty")
        return [{column: row[column] for column in columns} for row in rows]  # other fields play no part

    # ---- bertops predict ------------------------------------------------------------------------------------
    def predict_inputs(self, texts: list, pairs: bool) -> list[dict]:
        """`bertops predict`'s inputs as rows: texts, or pairs ("first<TAB>second" or a (first, second) tuple)."""
        if not pairs and any(isinstance(t, tuple) for t in texts):
            pairs = True  # a file's two columns (--pair-column) are pairs
        return split_pairs(texts) if pairs else [{"text": t} for t in texts]

    def predict(self, loaded, inputs: list[dict], params) -> list[dict]:
        """`bertops predict` on a loaded registered model (a pyfunc model unless a family overrides it)."""
        import pandas as pd

        out = loaded.predict(pd.DataFrame(inputs))
        return [{**x, **row} for x, row in zip(inputs, out.to_dict("records"))]

    def format_row(self, row: dict) -> str:
        return json.dumps(row, ensure_ascii=False)

    # ---- model card -----------------------------------------------------------------------------------------
    def example_count(self, metrics: dict):
        return metrics.get("examples")

    def metrics_markdown(self, metrics: dict) -> str:
        parts = [f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)]
        return ", ".join(parts) + "\n"

    def limitations(self, params, layout, metrics: dict) -> list[str]:
        return [f"Inputs longer than model.max_length = {params.model.max_length} sub-tokens are truncated."]


def class_table_markdown(kind: str, table: dict) -> str:
    rows = "\n".join(f"| {label} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |"
                     for label, s in table.items())
    return f"| {kind} | precision | recall | F1 | support |\n| --- | --- | --- | --- | --- |\n{rows}\n"


def mean_statistic(values) -> Callable[[np.ndarray], np.ndarray]:
    values = np.asarray(values, dtype=float)
    return lambda idx: values[idx].mean(axis=1)


def split_pairs(texts: list[str]) -> list[dict]:
    """`bertops predict` inputs of two texts (a sentence pair, or question and context): "first<TAB>second"."""
    from bertops.errors import BertopsError

    inputs = []
    for i, text in enumerate(texts, start=1):
        if isinstance(text, tuple):  # from a file's two columns (bertops.predict.read_inputs)
            inputs.append({"text": text[0], "text_pair": text[1]})
            continue
        first, sep, second = text.partition("\t")
        if not sep:
            raise BertopsError(f"predict: input {i} has no TAB between the two texts (a sentence pair, or "
                               f"question<TAB>context): {text!r}")
        inputs.append({"text": first, "text_pair": second})
    return inputs
