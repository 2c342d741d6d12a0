"""params.yaml: every knob, validated once, with errors that name the field and what is allowed."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from bertops.errors import ParamsError
from bertops.tasks.base import TaskParamsBase

PARAMS_FILE = "params.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitParams(_Section):
    val: float = Field(0.1, gt=0, lt=0.5, description="share of examples held out for validation")
    test: float = Field(0.1, gt=0, lt=0.5, description="share of examples held out for the test split")
    seed: int = Field(0, ge=0, description="salt of the split hash: an example's split is a function of its own "
                                           "content and this salt, so new rows never move old ones")


class CorpusParams(_Section):
    source: str = Field(
        description="a packaged-corpus manifest (data/sources/*.yaml), your own .csv/.tsv/.jsonl/.parquet file, "
                    "or a folder of <label>/*.txt files"
    )
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "folder", "conll", "squad", "text"] = Field(
        "auto", description="file format; auto = by suffix (.csv, .tsv, .jsonl, .parquet; .conll/.bio/.iob = "
                            "conll: token and tag columns; .json = squad; .txt = text, one document or sentence "
                            "per line, for masked_lm) or folder for a directory (<folder>/<label>/*.txt)")
    encoding: str = Field("utf-8", description="text encoding of a user file")
    text_column: str = Field("text", min_length=1, description="CSV/TSV column or JSONL/Parquet field; a dotted "
                                                                "path (review.body) reads a nested field")
    text_pair_column: str | None = Field(None, description="second text of a sentence pair, or null")
    label_column: str = Field("label", min_length=1)
    tokens_column: str = Field("tokens", min_length=1, description="token classification, JSONL: list of words")
    tags_column: str = Field("tags", min_length=1, description="token classification, JSONL: list of tags")
    label_separator: str = Field("|", min_length=1, description="multi_label_classification, CSV/TSV: what "
                                                                "separates the labels in one cell")
    labels: list[str] | None = Field(
        None, min_length=2, description="the allowed labels in order; null = every label the corpus has"
    )
    group_column: str | None = Field(None, description="rows with one value here stay in one split (a document, "
                                                       "a speaker, a source id); null = each text is its own group")
    test_source: str | None = Field(None, description="a fixed test file you maintain (a golden set), in the "
                                                      "corpus's format: the test split as it is, its texts kept "
                                                      "out of train and val; null = test split by content hash")
    split: SplitParams = SplitParams()


class ModelParams(_Section):
    name_or_path: str = Field(min_length=1, description="hub name or local path of the pretrained encoder")
    revision: str | None = None
    max_length: int = Field(128, ge=8, le=8192, description="tokens per sequence after truncation")


TaskParams = TaskParamsBase  # each family's own params model (bertops/tasks/<family>.py) subclasses it


class TrainParams(_Section):
    seed: int = Field(0, ge=0)
    epochs: int = Field(3, ge=1, le=1000, description="maximum epochs; early stopping may end sooner")
    batch_size: int = Field(16, ge=1, description="examples per optimizer step, over all training processes; 16 measured on MR over seeds 0/1/2: 0.8515 / 0.8430 / 0.8505 (32: 0.8354 at seed 0)")
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
        "auto", description="auto = bf16-mixed on a GPU that supports it or a CPU with AMX or AVX-512 BF16, "
                            "else 32-true"
    )
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int | Literal["auto"] = Field("auto", description="devices per machine (on a CPU: processes); auto = "
                                                              "one CPU, or every GPU with strategy ddp")
    strategy: Literal["auto", "ddp"] = Field(
        "auto", description="auto = one device; ddp = one process per device (DistributedDataParallel)")
    num_nodes: int = Field(1, ge=1, description="machines (README: Training on several GPUs)")
    length_grouping: bool = Field(True, description="batch examples of similar length (less padding)")
    pad_to_multiple_of: int | Literal["auto"] = Field(
        "auto", description="pad a training batch's length up to a multiple of this; auto = 8 on a GPU (tensor "
                            "cores), 1 (no extra padding) on a CPU (docs/performance.md)")
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the model for training (inductor; dynamic shapes); auto = off "
                            "(docs/performance.md has the A/B rows)")
    fast_dropout: bool | Literal["auto"] = Field(
        "auto", description="dropout masks from 16-bit slices of 64-bit draws (bertops/training/fast_dropout.py) "
                            "instead of one 32-bit draw per element; auto = on a CPU, off on a GPU "
                            "(docs/performance.md has the A/B rows)")
    row_embedding_grad: bool | Literal["auto"] = Field(
        "auto", description="the word embedding's gradient formed and clipped over the rows a batch read, not the "
                            "whole vocabulary table (bertops/training/embedding_grad.py; the same gradient); auto = "
                            "on a CPU, off on a GPU (docs/performance.md has the A/B rows)")
    lazy_embedding_decay: bool | Literal["auto"] = Field(
        "auto", description="the word-embedding rows no training sentence reads are held apart in training and "
                            "only decayed, once, when next needed: what full AdamW does to them, without its pass "
                            "over them each step (bertops/training/lazy_embedding_decay.py); auto = on a CPU, off "
                            "on a GPU (docs/performance.md has the A/B rows)")
    cls_top_layer: bool | Literal["auto"] = Field(
        "auto", description="for a task whose head reads the top block's [CLS] alone, the top transformer block "
                            "computes [CLS] only in training (bertops/training/cls_top_layer.py; the same loss and "
                            "gradients); auto = on a CPU, off on a GPU (docs/performance.md has the A/B rows)")
    fused_attention_probs: bool | Literal["auto"] = Field(
        "auto", description="with fast dropout, the training attention's scaling, mask, softmax and dropout run as "
                            "one C++ kernel, and their backward as another (bertops/training/attention_probs.py; the "
                            "same masks, the same result up to rounding); auto = under bf16-mixed on a CPU with AMX, "
                            "where a C++ compiler is found (docs/performance.md has the A/B rows)")
    fused_dropout_add_norm: bool | Literal["auto"] = Field(
        "auto", description="with fast dropout, each block's dropout, residual add and LayerNorm run as one C++ "
                            "kernel, and their backward as another (bertops/training/dropout_add_norm.py; the same "
                            "masks, the same result up to rounding); auto = under bf16-mixed on a CPU with AMX, where "
                            "a C++ compiler is found (docs/performance.md has the A/B rows)")
    bf16_working_weights: bool | Literal["auto"] = Field(
        "auto", description="under bf16-mixed on a CPU, each trainable Linear reads a bf16 working copy of its "
                            "weights, and clipping's scaling, AdamW and the copy's refresh run as one pass generated "
                            "by torch.compile (bertops/training/working_weights.py; full AdamW, the same update up "
                            "to rounding); auto = there on a CPU with AMX, where a C++ compiler is found "
                            "(docs/performance.md has the A/B rows)")
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
    def _pad_multiple_positive(self):
        if self.pad_to_multiple_of != "auto" and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be auto or at least 1 (1 = no extra padding), got "
                             f"{self.pad_to_multiple_of}")
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
    flush_every_n_steps: int = Field(100, ge=1, description="buffered metrics are spooled for MLflow every N steps")
    ship_timeout_s: float = Field(300, ge=0, description="how long the train stage waits at its end for MLflow "
                                                         "to take the spooled records before it fails (re-run: "
                                                         "ships them without training again)")


class Params(_Section):
    corpus: CorpusParams
    model: ModelParams
    # the family named by task.type validates the section (bertops.tasks); sequence_classification by default
    task: SerializeAsAny[TaskParamsBase] = Field(None, validate_default=True)
    train: TrainParams = TrainParams()
    finetune: FinetuneParams = FinetuneParams()
    registry: RegistryParams
    tracking: TrackingParams = TrackingParams()

    @field_validator("task", mode="before")
    @classmethod
    def _family_params(cls, raw):
        from bertops.tasks import DEFAULT_TASK, get_task

        if isinstance(raw, TaskParamsBase):
            return raw
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ValueError("must be a mapping with at least `type`")
        name = raw.get("type", DEFAULT_TASK)
        try:
            family = get_task(name)
        except ParamsError as exc:
            raise ValueError(str(exc)) from None  # "task.type: unknown task ... (allowed: ...)"
        return family.params.model_validate({"type": name, **raw})

    @model_validator(mode="after")
    def _fits_task(self):
        from bertops.tasks import get_task

        get_task(self.task.type).check_params(self)
        if self.finetune.gradual_unfreezing and self.train.strategy != "auto":
            # DDP fixes the set of trained weights when it wraps the model
            raise ValueError(f"finetune.gradual_unfreezing needs train.strategy: auto (one device), got "
                             f"train.strategy: {self.train.strategy}")
        return self


def _describe(error: dict) -> str:
    loc = list(error["loc"])
    field = ".".join(str(p) for p in loc) or "(top level)"
    msg = error["msg"]
    if error["type"] == "value_error" and str((error.get("ctx") or {}).get("error", "")).startswith("task.type: "):
        return str(error["ctx"]["error"])  # the task registry names the field and the allowed values itself
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


def parse_assignments(text: str) -> dict:
    """`section.key=value,key=value` (what benchmarks and studies take on the command line) -> {dotted key: value},
    each value read as YAML (`1.0e-4`, `true`, `[a, b]`)."""
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"{text!r}: write section.key=value[,section.key=value]")
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_overrides(raw: dict, overrides: dict, default_section: str = "train") -> dict:
    """The raw params with `section.key` (or a bare `key` of `default_section`) values replaced, in place."""
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        raw.setdefault(section or default_section, {})[field] = value
    return raw


def with_overrides(params: Params, overrides: dict) -> Params:
    """Validated params with `section.key` values replaced (a bad value stops with the field named)."""
    return parse_params(apply_overrides(params.model_dump(mode="json"), overrides))


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
