"""Optimizer and schedule: full (bias-corrected) AdamW, no decay on biases/LayerNorm, linear warmup+decay."""

from __future__ import annotations

import torch
from transformers import get_linear_schedule_with_warmup

NO_DECAY_MARKERS = ("bias", "LayerNorm.weight", "layer_norm.weight", "LayerNorm.bias")


def param_groups(model: torch.nn.Module, *, lr: float, head_lr: float, weight_decay: float,
                 head_params: set[str]) -> list[dict]:
    """Four groups: {encoder, new head} x {decayed, not decayed}. Empty groups are left out."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = name in head_params
        decays = not any(marker in name for marker in NO_DECAY_MARKERS)
        groups.setdefault((is_head, decays), []).append(param)
    return [
        {"params": params, "lr": head_lr if is_head else lr, "weight_decay": weight_decay if decays else 0.0,
         "name": f"{'head' if is_head else 'encoder'}{'' if decays else '_no_decay'}"}
        for (is_head, decays), params in sorted(groups.items())
    ]


def build_optimizer(groups: list[dict], *, betas, eps: float, fused: bool = True) -> torch.optim.Optimizer:
    # torch's AdamW always applies Adam's bias correction ("full Adam"), unlike BERT's original BertAdam.
    # The fused kernel exists on CPU and GPU; on 2 CPU cores it is ~5x faster than foreach for MiniLM.
    return torch.optim.AdamW(groups, betas=tuple(betas), eps=eps, fused=fused)


def build_schedule(optimizer, *, total_steps: int, warmup_ratio: float):
    warmup = int(round(total_steps * warmup_ratio))
    return get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
