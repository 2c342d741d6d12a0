"""A block's dropout, residual add and LayerNorm as one C++ kernel each way (`train.fused_dropout_add_norm`).

Each BERT block ends its attention and its feed-forward part with `LayerNorm(dropout(dense(x)) + residual)`. Under
bf16 autocast with fast dropout that is, after the product, a draw of the masks, their comparison, two products,
the add (bf16 + fp32), and the layer norm in fp32; the backward undoes each. Here everything after the product is one
C++ pass (csrc/cpu_kernels.cpp) and its backward another, in one autograd Function: the same fast-dropout masks,
drawn at the same point of the step, the same fp32 layer norm, so the result is the stock path's up to rounding.

It applies in training under bf16 autocast to the output modules of transformers' BERT-style blocks (a `dense`
Linear, a fast `dropout` and an affine `LayerNorm`, called as (hidden_states, input_tensor)); anything else (eval,
fp32, another dropout or norm) runs the module's own forward. Nothing is saved differently: no weights change name
and the module's class is unchanged. The kernel is built once per machine (bertops.training.cpu_kernels).
"""

from __future__ import annotations

import types

import torch
from torch import nn

from bertops.training import cpu_kernels, fast_dropout


class _DropoutAddNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, residual, gamma, beta, p: float, eps: float):
        ops = cpu_kernels.load()
        words = fast_dropout.random_words(y.shape, y.device)
        threshold, keep_scale = fast_dropout.keep_threshold(p), fast_dropout.keep_scale(p)
        out, xhat, rstd = ops.dropout_add_norm_forward(y, residual, words, threshold, keep_scale, gamma, beta, eps)
        ctx.save_for_backward(xhat, rstd, words, gamma)
        ctx.constants = threshold, keep_scale
        return out

    @staticmethod
    def backward(ctx, grad):
        xhat, rstd, words, gamma = ctx.saved_tensors
        threshold, keep_scale = ctx.constants
        grad_y, grad_residual, grad_gamma, grad_beta = cpu_kernels.load().dropout_add_norm_backward(
            grad, xhat, rstd, words, threshold, keep_scale, gamma)
        return grad_y, grad_residual, grad_gamma, grad_beta, None, None


def _forward(self, hidden_states, input_tensor):
    """The output module's forward: the fused kernel in training where it applies, else the module's own."""
    y = self.dense(hidden_states)
    norm, dropout = self.LayerNorm, self.dropout
    if (self.training and dropout.p > 0.0 and y.dtype == torch.bfloat16 and input_tensor.dtype == torch.float32
            and y.shape == input_tensor.shape and y.device.type == "cpu" and norm.weight.dtype == torch.float32):
        y = y.contiguous()
        return _DropoutAddNorm.apply(y, input_tensor.contiguous(), norm.weight, norm.bias, float(dropout.p),
                                     float(norm.eps))
    return norm(dropout(y) + input_tensor)


def _bert_style_output(module: nn.Module) -> bool:
    norm = getattr(module, "LayerNorm", None)
    return (isinstance(getattr(module, "dense", None), nn.Linear)
            and type(getattr(module, "dropout", None)) is fast_dropout.FastDropout
            and type(norm) is nn.LayerNorm and norm.elementwise_affine and norm.bias is not None
            and len(norm.normalized_shape) == 1)


def install(model: nn.Module) -> int:
    """Route the model's BERT-style block outputs (after fast_dropout.install) through the kernel; returns how many
    (0 where the kernel cannot be built). Builds the kernel now, not inside a step."""
    outputs = [m for name, m in model.named_modules() if name.endswith("output") and _bert_style_output(m)]
    if not outputs or cpu_kernels.load() is None:
        return 0
    for module in outputs:
        module.forward = types.MethodType(_forward, module)
    return len(outputs)
