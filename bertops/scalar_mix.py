"""ELMo-style scalar mix: the head reads gamma * sum_j softmax(s)_j h_j over the embedding output and every
transformer block's output, instead of the last block only. Attached to a transformers model in place (forward
hooks), so every task head (the pooler and [CLS] classifier, token tags, QA spans) reads the mix unchanged.

Saved with the model: the weights go into the checkpoint (`<base>.layer_mix.*`) and config.json records
`bertops_layer_features: scalar_mix`; `attach_saved` re-attaches them when such a checkpoint is loaded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bertops.training.encoder_parts import encoder_parts

CONFIG_KEY = "bertops_layer_features"


class ScalarMix(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.scalars = nn.Parameter(torch.zeros(n))  # equal weights to start
        self.gamma = nn.Parameter(torch.ones(()))
        self._outputs: list[torch.Tensor] = []

    def mixed(self, last: torch.Tensor) -> torch.Tensor:
        hidden = self._outputs + [last]
        self._outputs = []
        weights = torch.softmax(self.scalars, dim=0).to(last.dtype)
        return self.gamma.to(last.dtype) * sum(w * h for w, h in zip(weights, hidden))


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def attach(model: nn.Module) -> str:
    """Add a scalar mix to `model`; returns the name prefix of its parameters."""
    parts = encoder_parts(model)
    base = model.get_submodule(parts.prefix.rstrip(".")) if parts.prefix else model
    if parts.embeddings is None:
        raise ValueError(f"{type(model).__name__}: no embeddings module to mix in")
    mix = ScalarMix(len(parts.layers) + 1)
    base.add_module("layer_mix", mix)

    def keep(module, args, output):
        mix._outputs.append(_first(output))

    def replace(module, args, output):
        if isinstance(output, tuple):
            return (mix.mixed(output[0]), *output[1:])
        return mix.mixed(output)

    def reset(module, args, kwargs):
        mix._outputs = []

    base.register_forward_pre_hook(reset, with_kwargs=True)
    parts.embeddings.register_forward_hook(keep)
    for layer in parts.layers[:-1]:
        layer.register_forward_hook(keep)
    parts.layers[-1].register_forward_hook(replace)
    model.config.__setattr__(CONFIG_KEY, "scalar_mix")
    return f"{parts.prefix}layer_mix."


def attach_saved(model: nn.Module, model_dir) -> None:
    """A checkpoint saved with a scalar mix: re-attach it and load its weights (from_pretrained skipped them)."""
    from safetensors import safe_open

    prefix = attach(model)
    state = {}
    with safe_open(str(Path(model_dir) / "model.safetensors"), framework="pt") as fh:
        for key in fh.keys():
            if key.startswith(prefix):
                state[key[len(prefix):]] = fh.get_tensor(key)
    missing = {"scalars", "gamma"} - set(state)
    if missing:
        raise ValueError(f"{model_dir}: config says scalar_mix but the weights lack {sorted(missing)}")
    model.get_submodule(prefix.rstrip(".")).load_state_dict(state)
