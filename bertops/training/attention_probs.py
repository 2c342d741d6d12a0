"""The attention probabilities of a CPU training step in one kernel each way (`train.fused_attention_probs`).

With fast dropout (bertops.training.fast_dropout) a training step's attention is eager: the scores' product, then
a scaling, the mask's fill, autocast's cast to fp32, the softmax, the dropout masks' comparison and two products,
and the cast back to bf16 for the product with V; the backward undoes each. On MR's short rows (about 28 tokens)
these element-wise passes and their autograd nodes cost more than the two products (docs/performance.md). Here the
scaled, masked softmax and its dropout are one C++ pass (csrc/cpu_kernels.cpp, vectorised with ATen's
`Vectorized<float>`), and the backward's dropout and softmax gradients another, inside one autograd Function with the
two products on each side.

The masks are fast dropout's: the same 16-bit words drawn from torch's generator at the same point of the step, so
a seeded run drops the same positions as without this lever. The softmax is computed in fp32 from the bf16 scores,
as autocast computes it; the result is the eager path's up to rounding (the scores are scaled in fp32 here, in
bf16 there). It applies in training under bf16 autocast with a boolean (or no) mask shared by the heads; anything
else takes the eager path. Nothing is saved differently: no weights, and eval is sdpa as before.

The kernel is built once per machine (bertops.training.cpu_kernels: about 25 s, then cached). Where it cannot be
built, `install` leaves the model on the eager path.
"""

from __future__ import annotations

import torch
from torch import nn

from bertops.training import cpu_kernels, fast_dropout


def kernels():
    """The built kernels (probs_forward, probs_backward), or None where they cannot be built here."""
    return cpu_kernels.load()


class _AttentionCore(torch.autograd.Function):
    """softmax(where(mask, q k^T * scale, min)) with fast dropout, times v: [B, H, Lq, D] in bf16."""

    @staticmethod
    def forward(ctx, query, key, value, mask, p: float, scale: float):
        ops = kernels()
        words = fast_dropout.random_words((query.shape[0], query.shape[1], query.shape[2], key.shape[2]),
                                          query.device)
        threshold, keep_scale = fast_dropout.keep_threshold(p), fast_dropout.keep_scale(p)
        scores = torch.matmul(query, key.transpose(2, 3))
        dropped, probs = ops.probs_forward(scores, mask, words, threshold, scale, keep_scale)
        ctx.save_for_backward(query, key, value, dropped, probs, words)
        ctx.constants = threshold, scale, keep_scale
        return torch.matmul(dropped, value)

    @staticmethod
    def backward(ctx, grad):
        query, key, value, dropped, probs, words = ctx.saved_tensors
        threshold, scale, keep_scale = ctx.constants
        grad = grad.to(torch.bfloat16)
        grad_value = torch.matmul(dropped.transpose(2, 3), grad)
        grad_scores = kernels().probs_backward(torch.matmul(grad, value.transpose(2, 3)), probs, words, threshold,
                                               scale, keep_scale)
        return (torch.matmul(grad_scores, key), torch.matmul(grad_scores.transpose(2, 3), query), grad_value,
                None, None, None)


def attend(query, key, value, attention_mask, p: float, scaling: float):
    """The attention's context as transformers' attention functions return it ([B, Lq, H, D]), or None where the
    kernel does not apply (the caller then runs the eager attention)."""
    if not (query.dtype == key.dtype == value.dtype == torch.bfloat16 and query.device.type == "cpu"):
        return None
    if attention_mask is not None:
        if not (attention_mask.dtype == torch.bool and attention_mask.dim() == 4 and attention_mask.shape[1] == 1):
            return None
        if attention_mask.stride(-1) != 1:
            attention_mask = attention_mask.contiguous()
    if kernels() is None:
        return None
    context = _AttentionCore.apply(query, key, value, attention_mask, float(p), float(scaling))
    return context.transpose(1, 2).contiguous()


def install(model: nn.Module) -> int:
    """Mark the model's attention modules routed through fast dropout's attention; returns how many (0 where the
    kernel cannot be built or the model's attention is not routed). Builds the kernel now, not inside a step."""
    if getattr(getattr(model, "config", None), "_attn_implementation", None) != fast_dropout.ATTENTION:
        return 0
    if kernels() is None:
        return 0
    marked = 0
    for module in model.modules():
        if hasattr(module, "attention_head_size") and hasattr(module, "scaling"):  # transformers' self-attention
            setattr(module, fast_dropout.FUSED_PROBS, True)
            marked += 1
    return marked
