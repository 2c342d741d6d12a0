"""A cheaper dropout for CPU training (`train.fast_dropout`).

On a CPU, torch's dropout draws one 32-bit Mersenne-Twister number per element (`bernoulli_`), and on MiniLM at
batch 16 those draws were a quarter of a training step's operator time (docs/performance.md). Here one 64-bit draw
makes the keep/drop decisions of four elements (16 bits each): the drop probability is p rounded to a multiple of
1/65,536 (0.1 -> 0.1000061) and the kept values are scaled by 1/(1 - that p), so the output's expectation is the
input, as with torch's dropout. The masks come from torch's default generator, so `torch.manual_seed` and
Lightning's seeding make them repeatable.

`install` swaps every `nn.Dropout` of a model for `FastDropout` (no weights: the state dict is unchanged) and, where
the model's attention is transformers' sdpa, routes the attention
probabilities' dropout through the same masks. In eval mode both are exactly the stock modules: evaluation, the
saved checkpoint and the served model never see this module.
"""

from __future__ import annotations

import torch
from torch import nn

ATTENTION = "bertops_fast_dropout"
FUSED_PROBS = "bertops_fused_attention_probs"  # set on an attention module by attention_probs.install
_RESOLUTION = 1 << 16


def _dropped_of_resolution(p: float) -> int:
    return round(p * _RESOLUTION)


def quantized_p(p: float) -> float:
    """The drop probability the 16-bit masks realise for a requested p."""
    return _dropped_of_resolution(p) / _RESOLUTION


def random_words(shape: torch.Size, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform int16 words of `shape`, four from each 64-bit draw of torch's generator."""
    n = 1
    for size in shape:
        n *= size
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    return words.view(torch.int16)[:n].view(shape)


def keep_threshold(p: float) -> int:
    """A word is kept where it is >= this: probability 1 - quantized_p(p) (int16 is uniform on [-32768, 32767])."""
    return _dropped_of_resolution(p) - (1 << 15)


def keep_scale(p: float) -> float:
    """What kept values are multiplied by: 1 / (1 - quantized_p(p)), so that the expectation is the input."""
    return 1.0 / (1.0 - quantized_p(p))


def keep_mask(shape: torch.Size, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A boolean mask, True with probability 1 - quantized_p(p), four elements per 64-bit draw."""
    return random_words(shape, device) >= keep_threshold(p)


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    return x * keep_mask(x.shape, p, x.device) * keep_scale(p)


class FastDropout(nn.Dropout):
    """nn.Dropout with the 16-bit masks above; the same `p`, no state."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              **kwargs):
    """transformers' attention-interface signature. Without dropout (eval, or p = 0) it is exactly sdpa; in
    training it is eager attention (what SDPA itself runs on a CPU when dropout is on) with the cheaper masks."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not (module.training and dropout > 0.0):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=scaling,
                                      **kwargs)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    if getattr(module, FUSED_PROBS, False):  # train.fused_attention_probs: the same, in one kernel each way
        from bertops.training import attention_probs

        context = attention_probs.attend(query, key, value, attention_mask, dropout, scaling)
        if context is not None:
            return context, None
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # sdpa's mask: True = attend
            weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
        else:
            weights = weights + attention_mask
    weights = fast_dropout(torch.softmax(weights, dim=-1), dropout)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def install(model: nn.Module) -> dict[str, int]:
    """Swap the model's dropouts in place; returns how many were swapped and whether attention was routed."""
    from transformers import PreTrainedModel

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                replacement = FastDropout(child.p, child.inplace)
                replacement.train(child.training)
                setattr(parent, name, replacement)
                swapped += 1
    routed = False
    top = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    # only from sdpa: the routed attention's eval path is sdpa, so an eager model's eval would change
    if top is not None and getattr(top.config, "_attn_implementation", None) == "sdpa":
        _register()
        try:
            top.set_attn_implementation(ATTENTION)
            routed = True
        except (ValueError, NotImplementedError):  # a model outside the attention interface keeps its own
            pass
    return {"dropout_modules": swapped, "attention": int(routed)}
