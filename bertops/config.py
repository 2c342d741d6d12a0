"""params.yaml: every knob, validated once, with errors that name the field and what is allowed."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bertops.errors import ParamsError

PARAMS_FILE = "params.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitParams(_Section):
    val: float = Field(0.1, gt=0, lt=0.5, description="share of examples held out for validation")
    test: float = Field(0.1, gt=0, lt=0.5, description="share of examples held out for the test split")
    seed: int = Field(0, ge=0, description="seed of the stratified split")


class CorpusParams(_Section):
    source: str = Field(
        description="a packaged-corpus manifest (data/sources/*.yaml) or your own .csv/.tsv/.jsonl file"
    )
    format: Literal["auto", "csv", "tsv", "jsonl", "conll", "squad", "text"] = Field(
        "auto", description="file format; auto = by suffix (.conll/.bio/.iob = conll: token<TAB>tag lines; "
                            ".json = squad; .txt = text, one document or sentence per line, for masked_lm)")
    encoding: str = Field("utf-8", description="text encoding of a user file")
    text_column: str = Field("text", min_length=1)
    text_pair_column: str | None = Field(None, description="second text of a sentence pair, or null")
    label_column: str = Field("label", min_length=1)
    tokens_column: str = Field("tokens", min_length=1, description="token classification, JSONL: list of words")
    tags_column: str = Field("tags", min_length=1, description="token classification, JSONL: list of tags")
    labels: list[str] | None = Field(
        None, min_length=2, description="the allowed labels in order; null = every label the corpus has"
    )
    split: SplitParams = SplitParams()


class ModelParams(_Section):
    name_or_path: str = Field(min_length=1, description="hub name or local path of the pretrained encoder")
    revision: str | None = None
    max_length: int = Field(128, ge=8, le=8192, description="tokens per sequence after truncation")


class SequenceClassificationTask(_Section):
    """One label per text (or per text pair) from the [CLS]/pooler output."""

    type: Literal["sequence_classification"] = "sequence_classification"
    metric: Literal["accuracy", "macro_f1"] = Field(
        "accuracy", description="selects the best epoch, stops early and gates promotion"
    )

    @property
    def pipeline_task(self) -> str:
        return "text-classification"


class TokenClassificationTask(_Section):
    """One tag per word (NER): labels on each word's first sub-token, entity-level metrics."""

    type: Literal["token_classification"]
    metric: Literal["f1"] = Field("f1", description="entity-level F1 (seqeval, strict span matching)")
    tag_scheme: Literal["BIO", "BIOES"] = Field("BIO", description="how tags mark entity spans")
    unk_warn_ratio: float = Field(
        0.01, ge=0, le=1, description="prepare warns when more than this share of words contain [UNK] pieces")
    add_unknown_tokens: bool = Field(
        False, description="add words the tokenizer maps to [UNK] to the vocabulary and resize the embeddings")

    @property
    def pipeline_task(self) -> str:
        return "token-classification"


class QuestionAnsweringTask(_Section):
    """Extractive QA on SQuAD-format JSON: the answer's start and end tokens in the context."""

    type: Literal["question_answering"]
    metric: Literal["f1", "exact_match"] = Field("f1", description="SQuAD F1 or exact match (official normalisation)")
    doc_stride: int = Field(128, ge=1, description="tokens of overlap between windows of a long context")
    max_answer_length: int = Field(30, ge=1, description="longest answer span in tokens")
    n_best: int = Field(20, ge=1, description="start and end candidates considered per window")
    allow_no_answer: bool = Field(False, description="SQuAD 2.0: predict no answer when the null score wins")
    null_threshold: float = Field(0.0, description="predict no answer when null score > best span + this")

    @property
    def pipeline_task(self) -> str:
        return "question-answering"  # recorded in lineage; transformers 5 has no such pipeline (see qa/pyfunc.py)


class MaskedLMTask(_Section):
    """Continued masked-LM pretraining (domain- or task-adaptive) on unlabelled text; the output checkpoint can
    be the model.name_or_path of a fine-tune. The MLM head is initialised when the checkpoint lacks one (its
    decoder stays tied to the input embeddings)."""

    type: Literal["masked_lm"]
    metric: Literal["perplexity"] = Field("perplexity", description="held-out perplexity on masked tokens")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="share of tokens selected for prediction")
    mask_replace_prob: float = Field(0.8, ge=0, le=1, description="selected tokens replaced by [MASK]")
    random_replace_prob: float = Field(0.1, ge=0, le=1, description="selected tokens replaced by a random token")
    masking: Literal["token", "whole_word", "span"] = Field(
        "token", description="unit of selection: sub-tokens, whole words, or spans of whole words (SpanBERT)")
    span_mean_length: float = Field(3.0, ge=1, le=10, description="mean span length in words (masking: span)")

    @model_validator(mode="after")
    def _replacement_shares(self):
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ValueError("mask_replace_prob + random_replace_prob must be at most 1 (the rest is kept)")
        return self

    @property
    def pipeline_task(self) -> str:
        return "fill-mask"


TASK_TYPES = ("sequence_classification", "token_classification", "question_answering", "masked_lm")
TaskParams = Annotated[SequenceClassificationTask | TokenClassificationTask | QuestionAnsweringTask | MaskedLMTask,
                       Field(discriminator="type")]
LOWER_IS_BETTER = {"perplexity"}


def metric_mode(metric: str) -> str:
    """"min" for metrics where lower is better (perplexity), else "max"."""
    return "min" if metric in LOWER_IS_BETTER else "max"


class TrainParams(_Section):
    seed: int = Field(0, ge=0)
    epochs: int = Field(4, ge=1, le=1000, description="maximum epochs; early stopping may end sooner")
    batch_size: int = Field(32, ge=1, description="examples per optimizer step, over all training processes")
    eval_batch_size: int = Field(128, ge=1)
    lr: float = Field(5e-5, gt=0, le=1.0, description="peak learning rate of the encoder")
    head_lr: float | None = Field(None, gt=0, le=1.0, description="peak learning rate of the new head; null = lr")
    weight_decay: float = Field(0.01, ge=0, le=1.0, description="not applied to biases and LayerNorm weights")
    warmup_ratio: float = Field(0.06, ge=0, lt=1.0, description="share of steps with linear warmup")
    optimizer: Literal["adamw", "bertadam"] = Field(
        "adamw", description="adamw = full Adam with bias correction and decoupled weight decay; bertadam = the "
                             "original BERT code's Adam without bias correction (for comparison)")
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    early_stopping_patience: int | None = Field(
        2, ge=1, description="epochs without improvement of task.metric before stopping; null = never"
    )
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = Field(
        "auto", description="auto = bf16-mixed on a GPU that supports it or a CPU with AMX, else 32-true"
    )
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int | Literal["auto"] = Field("auto", description="devices per machine (on a CPU: processes); auto = "
                                                              "one CPU, or every GPU with strategy ddp")
    strategy: Literal["auto", "ddp"] = Field(
        "auto", description="auto = one device; ddp = one process per device (DistributedDataParallel)")
    num_nodes: int = Field(1, ge=1, description="machines (README: Training on several GPUs)")
    length_grouping: bool = Field(True, description="batch examples of similar length (less padding)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    max_train_examples: int | None = Field(None, ge=1, description="train on a random subset of N examples (seeded by train.seed)")
    train_fraction: float = Field(1.0, gt=0, le=1, description="train on a random share of the training split "
                                                               "(seeded by train.seed); 1 = all of it")
    resume: bool = Field(True, description="continue from the last checkpoint of an interrupted run")

    @model_validator(mode="after")
    def _distribution_is_explicit(self):
        several = (isinstance(self.devices, int) and self.devices > 1) or self.num_nodes > 1
        if several and self.strategy == "auto":
            raise ValueError(f"strategy: auto trains on one device; devices: {self.devices} / num_nodes: "
                             f"{self.num_nodes} need strategy ddp (allowed: auto, ddp)")
        return self

    @model_validator(mode="after")
    def _betas_in_range(self):
        for i, beta in enumerate(self.adam_betas):
            if not 0 <= beta < 1:
                raise ValueError(f"adam_betas[{i}] must be in [0, 1), got {beta}")
        return self


class LoraParams(_Section):
    r: int = Field(8, ge=1, le=1024, description="rank of the low-rank update")
    alpha: float = Field(16, gt=0, description="scaling: the update is multiplied by alpha / r")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] = Field(
        ["query", "value"], min_length=1, description="names of the Linear modules that get an adapter")


ENCODER_MODES = ("full", "frozen", "lora", "ia3")


class FinetuneParams(_Section):
    """How the pretrained encoder is adapted (README: Fine-tuning strategies)."""

    encoder: Literal["full", "frozen", "lora", "ia3"] = Field(
        "full", description="full fine-tuning | frozen (feature extraction: only the head trains) | "
                            "lora / ia3 (peft adapters: only adapter and head weights train and are saved)")
    freeze_embeddings: bool = Field(False, description="keep the embedding layer fixed")
    freeze_layers: int = Field(0, ge=0, description="keep the embeddings and the lowest N transformer layers fixed")
    gradual_unfreezing: bool = Field(
        False, description="start with only the head (and top layer) trainable; unfreeze one more layer from the "
                           "top each epoch, the embeddings last (ULMFiT)")
    reinit_top_layers: int = Field(0, ge=0, description="re-initialise the top K transformer layers before training")
    reinit_pooler: bool = Field(False, description="re-initialise the pooler (also done when reinit_top_layers > 0)")
    layer_lr_decay: float = Field(
        1.0, gt=0, le=1, description="layer-wise learning-rate decay: a layer k levels below the top trains at "
                                     "lr * decay^k, the embeddings lowest; 1 = the same lr everywhere")
    layer_features: Literal["last", "scalar_mix"] = Field(
        "last", description="what the head reads: the last layer, or a learned softmax-weighted sum of all "
                            "hidden layers times a learned scale (ELMo-style scalar mix)")
    lora: LoraParams = LoraParams()

    @model_validator(mode="after")
    def _consistent(self):
        if self.encoder in ("frozen", "lora", "ia3") and (self.freeze_layers or self.freeze_embeddings or
                                                           self.gradual_unfreezing):
            raise ValueError(f"freeze_layers / freeze_embeddings / gradual_unfreezing apply to encoder: full; "
                             f"with encoder: {self.encoder} the encoder's own weights never train")
        if self.encoder in ("lora", "ia3") and self.layer_features != "last":
            raise ValueError("layer_features: scalar_mix is not available with adapters (allowed: last)")
        if self.encoder in ("lora", "ia3") and self.layer_lr_decay != 1.0:
            raise ValueError("layer_lr_decay applies to encoder weights, which do not train with adapters")
        return self


class RegistryParams(_Section):
    model_name: str = Field(min_length=1, description="registered model name in the MLflow Model Registry")
    min_delta: float = Field(
        0.0, ge=0, description="the challenger must beat the champion's test metric by at least this"
    )
    alpha: float = Field(
        0.05, gt=0, le=1, description="the improvement must be significant at this level (paired one-sided test; "
                                      "1 = no significance required)")
    max_class_regression: float | None = Field(
        0.05, ge=0, le=1, description="no class / entity type may lose more F1 than this; null = not checked")
    min_class_support: int = Field(
        10, ge=1, description="classes / entity types with fewer test examples than this are left out of the "
                              "regression check (one example moves their F1 by a large step)")
    bootstrap_samples: int = Field(1000, ge=100, le=100_000, description="resamples for the paired bootstrap")


class TrackingParams(_Section):
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI; MLFLOW_TRACKING_URI overrides it")
    experiment: str = Field("bertops", min_length=1)
    log_every_n_steps: int = Field(10, ge=1, description="train loss / lr sampled every N steps")
    flush_every_n_steps: int = Field(100, ge=1, description="buffered metrics are sent to MLflow every N steps")


class Params(_Section):
    corpus: CorpusParams
    model: ModelParams
    task: TaskParams = SequenceClassificationTask()

    @model_validator(mode="after")
    def _stride_fits(self):
        if self.task.type == "question_answering" and self.task.doc_stride >= self.model.max_length // 2:
            raise ValueError(f"task.doc_stride ({self.task.doc_stride}) must be less than half of "
                             f"model.max_length ({self.model.max_length}): windows would barely advance")
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_task_type(cls, raw):
        if isinstance(raw, dict) and isinstance(raw.get("task"), dict) and "type" not in raw["task"]:
            raw = {**raw, "task": {"type": "sequence_classification", **raw["task"]}}
        return raw
    train: TrainParams = TrainParams()
    finetune: FinetuneParams = FinetuneParams()
    registry: RegistryParams

    @model_validator(mode="after")
    def _strategy_fits_task(self):
        if self.task.type == "masked_lm" and (self.finetune.encoder != "full" or
                                              self.finetune.layer_features != "last"):
            raise ValueError(f"finetune.encoder: {self.finetune.encoder} / finetune.layer_features: "
                             f"{self.finetune.layer_features} do not apply to masked_lm pretraining, which trains "
                             "the encoder itself (allowed: encoder full, layer_features last)")
        if self.finetune.gradual_unfreezing and self.train.strategy != "auto":
            # DDP fixes the set of trained weights when it wraps the model
            raise ValueError(f"finetune.gradual_unfreezing needs train.strategy: auto (one device), got "
                             f"train.strategy: {self.train.strategy}")
        return self
    tracking: TrackingParams = TrackingParams()


def _describe(error: dict) -> str:
    loc = list(error["loc"])
    if len(loc) > 1 and loc[0] == "task" and loc[1] in TASK_TYPES:
        del loc[1]  # pydantic names the union member; the user wrote task.<field>
    field = ".".join(str(p) for p in loc) or "(top level)"
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        msg = "unknown key"
    elif error["type"] == "missing":
        msg = "required field is missing"
    ctx = error.get("ctx") or {}
    if "expected" in ctx and "allowed" not in msg:
        msg += f" (allowed: {ctx['expected']})"
    got = error.get("input")
    if error["type"] not in ("missing",) and not isinstance(got, dict):
        msg += f"; got {got!r}"
    return f"{field}: {msg}"


def parse_params(raw: dict, source: str = PARAMS_FILE) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ParamsError(f"{source}: invalid params:\n  " + "\n  ".join(lines)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections (corpus, model, task, train, registry, tracking)")
    return parse_params(raw, str(path))


def params_hash(params: Params) -> str:
    """A stable hash of the validated params (defaults filled in), for lineage."""
    return hashlib.sha256(params.model_dump_json().encode()).hexdigest()[:16]


def flat_params(params: Params) -> dict[str, str]:
    """`section.key` -> value, as logged to MLflow."""
    out: dict[str, str] = {}

    def walk(prefix: str, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = str(value)

    walk("", params.model_dump(mode="json"))
    return out
