"""Fine-tuning strategies from params.finetune: frozen features, frozen lower layers, gradual unfreezing,
re-initialised top layers, layer-wise learning rates, and peft adapters (LoRA, IA3).

Works on the BERT family: the encoder's transformer blocks are the first `ModuleList` under the base model
(`encoder.layer` in BERT/RoBERTa/ELECTRA, `transformer.layer` in DistilBERT)."""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch import nn

from bertops.config import FinetuneParams
from bertops.errors import BertopsError
from bertops.training.encoder_parts import EncoderParts, encoder_parts, layer_depth  # noqa: F401

log = logging.getLogger(__name__)

IA3_FEEDFORWARD = ["output.dense"]


@torch.no_grad()
def _reinit(module: nn.Module, std: float) -> None:
    # Explicit, not model._init_weights: transformers 5 skips tensors it marked as loaded from a checkpoint
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            sub.weight.normal_(0.0, std)
            if sub.bias is not None:
                sub.bias.zero_()
        elif isinstance(sub, nn.LayerNorm):
            sub.weight.fill_(1.0)
            sub.bias.zero_()
        elif isinstance(sub, nn.Embedding):
            sub.weight.normal_(0.0, std)


def reinit_top(model: nn.Module, k: int, pooler: bool) -> list[str]:
    """Re-initialise the top k transformer blocks (and the pooler) with the model's initializer range."""
    parts = encoder_parts(model)
    if k > len(parts.layers):
        raise BertopsError(f"finetune.reinit_top_layers: {k} but the model has {len(parts.layers)} layers")
    std = getattr(model.config, "initializer_range", 0.02)
    done = []
    for i in range(len(parts.layers) - k, len(parts.layers)):
        _reinit(parts.layers[i], std)
        done.append(f"{parts.layers_name}.{i}")
    if (pooler or k) and parts.pooler is not None:
        _reinit(parts.pooler, std)
        done.append(parts.prefix + "pooler")
    return done


def set_trainable_depths(model: nn.Module, parts: EncoderParts, lowest: int) -> None:
    """Encoder parameters below depth `lowest` are frozen, the rest train (heads always train)."""
    for name, param in model.named_parameters():
        depth = layer_depth(name, parts)
        param.requires_grad_(depth is None or depth >= lowest)


def apply_strategy(model: nn.Module, new_params: set[str], finetune: FinetuneParams, task_type: str):
    """Returns (model, head parameter names): the model to train, possibly wrapped by peft, with the
    parameters that should not train frozen. `task_type`: the task family, whose `peft_task_type` names the head
    an adapter keeps trainable (None: the family offers no adapters)."""
    if finetune.reinit_top_layers or finetune.reinit_pooler:
        log.info("re-initialised %s", reinit_top(model, finetune.reinit_top_layers, finetune.reinit_pooler))
    if finetune.layer_features == "scalar_mix":
        from bertops import scalar_mix

        prefix = scalar_mix.attach(model)
        new_params = set(new_params) | {prefix + "scalars", prefix + "gamma"}  # new weights: trained as the head
    if finetune.encoder in ("lora", "ia3"):
        from bertops.tasks import get_task

        return _wrap_adapter(model, finetune, get_task(task_type).peft_task_type)
    if finetune.encoder == "frozen":
        for name, param in model.named_parameters():
            param.requires_grad_(name in new_params)
    elif finetune.freeze_layers or finetune.freeze_embeddings:
        parts = encoder_parts(model)
        if finetune.freeze_layers > len(parts.layers):
            raise BertopsError(f"finetune.freeze_layers: {finetune.freeze_layers} but the model has "
                               f"{len(parts.layers)} layers")
        set_trainable_depths(model, parts, max(1, finetune.freeze_layers + 1) if finetune.freeze_layers else 1)
    return model, set(new_params)


def _wrap_adapter(model: nn.Module, finetune: FinetuneParams, peft_task_type: str | None):
    from peft import IA3Config, LoraConfig, get_peft_model

    if peft_task_type is None:
        raise BertopsError(f"finetune.encoder: {finetune.encoder} is not available for this task (allowed: full, "
                           "frozen)")
    lora = finetune.lora
    linear = [name.split(".") for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    names = {parts[-1] for parts in linear} | {".".join(parts[-2:]) for parts in linear}
    if finetune.encoder == "lora":
        missing = [t for t in lora.target_modules if t not in names]
        if missing:
            raise BertopsError(f"finetune.lora.target_modules: {missing} name no Linear module of "
                               f"{type(model).__name__} (some that exist: {sorted(names)[:12]})")
        config = LoraConfig(task_type=peft_task_type, r=lora.r, lora_alpha=lora.alpha,
                            lora_dropout=lora.dropout, target_modules=list(lora.target_modules))
    else:  # IA3: learned rescaling of keys, values and the feed-forward output
        config = IA3Config(task_type=peft_task_type, target_modules=["key", "value", *IA3_FEEDFORWARD],
                           feedforward_modules=IA3_FEEDFORWARD)
    wrapped = get_peft_model(model, config)
    head = {name for name, p in wrapped.named_parameters() if p.requires_grad and "modules_to_save" in name}
    return wrapped, head


def parameter_counts(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total_params": total, "trainable_params": trainable}


class GradualUnfreezing(L.Callback):
    """ULMFiT-style: epoch 1 trains the head and the top block, each later epoch one block more, the embeddings
    once every block trains. The optimizer holds every parameter from the start (a frozen one has no gradient,
    so AdamW leaves it and its state alone)."""

    def __init__(self, parts: EncoderParts):
        self.parts = parts

    def on_train_epoch_start(self, trainer, pl_module):
        n = len(self.parts.layers)
        lowest = max(0, n - trainer.current_epoch)  # depth of the lowest block that trains this epoch
        set_trainable_depths(pl_module.model, self.parts, lowest)
        trainable = parameter_counts(pl_module.model)["trainable_params"]
        log.info("gradual unfreezing, epoch %d: blocks %d..%d train (%d parameters)",
                 trainer.current_epoch + 1, max(lowest, 1), n, trainable)
