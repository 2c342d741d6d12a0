"""Where a BERT-family model keeps its embeddings, transformer blocks and pooler: the strategies, the scalar mix
and the optimizer's layer-wise groups all find them here. The blocks are the first `ModuleList` under the base
model (`encoder.layer` in BERT/RoBERTa/ELECTRA, `transformer.layer` in DistilBERT)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from bertops.errors import BertopsError


@dataclass(frozen=True)
class EncoderParts:
    prefix: str  # parameter-name prefix of the base model inside the task model, e.g. "bert."
    embeddings: nn.Module | None
    layers: nn.ModuleList
    layers_name: str  # e.g. "bert.encoder.layer"
    pooler: nn.Module | None


def encoder_parts(model: nn.Module) -> EncoderParts:
    base_name = getattr(model, "base_model_prefix", "")
    base = getattr(model, base_name, None) if base_name else None
    if base is None:
        base, base_name = model, ""
    prefix = f"{base_name}." if base_name else ""
    for name, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and name.split(".")[-1] in ("layer", "layers"):
            return EncoderParts(prefix, getattr(base, "embeddings", None), module, prefix + name,
                                getattr(base, "pooler", None))
    raise BertopsError(f"finetune: cannot find the transformer layers of {type(model).__name__} (expected a "
                       "ModuleList named layer/layers under the base model); use finetune.encoder: full with "
                       "no freeze_layers / reinit_top_layers / layer_lr_decay")


def layer_depth(name: str, parts: EncoderParts) -> int | None:
    """0 = embeddings, 1..L = transformer blocks, L + 1 = everything above (pooler); None = not the encoder."""
    n = len(parts.layers)
    match = re.match(re.escape(parts.layers_name) + r"\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    if parts.prefix and not name.startswith(parts.prefix):
        return None
    if ".embeddings." in f".{name}":
        return 0
    return n + 1
