"""The top transformer block computed for [CLS] alone, in training (`train.cls_top_layer`).

A [CLS]-head task (sequence classification, regression, multi-label) reads one position of the top block's
output: the pooler and the classifier see `last_hidden_state[:, 0]` only. The top block's other positions feed
nothing, yet a stock forward computes all of them: their query projection, attention rows, output projection,
feed-forward block and layer norms, and the backward of each. Here the top block's attention takes its query from
[CLS] alone (its keys and values still come from every position, as they must), and everything above the attention
runs on that one position. The [CLS] output is the same computation as in the stock block, so the loss and every
gradient are the stock ones up to floating-point rounding; the dropout masks of the positions that are no longer
computed are simply not drawn.

Only the training forward changes: in eval mode the block is the stock one, so validation, the saved checkpoint
and the served model never see this module. It works on BERT-style blocks (BERT, RoBERTa, ELECTRA, XLM-R: an
`attention.self` with `query`/`key`/`value` and an `attention.output` that adds the residual) and steps aside
elsewhere (DistilBERT's and DeBERTa's blocks, decoders, flash-attention kernels that take a 2-D mask, and where the
head reads more than the top block's [CLS]: a scalar mix of every layer).
"""

from __future__ import annotations

import types

from torch import nn

from bertops.errors import BertopsError
from bertops.training.encoder_parts import encoder_parts
from bertops.training.fast_dropout import ATTENTION as FAST_DROPOUT_ATTENTION

# attention implementations whose interface takes a query shorter than the keys with a 4-D (or no) mask
_ATTENTION = ("eager", "sdpa", FAST_DROPOUT_ATTENTION)


def _cls_attention_forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                           encoder_attention_mask=None, cache=None, **kwargs):
    """A BERT-style attention block's forward with the query of position 0 only: returns ([B, 1, hidden], None)."""
    if not self.training:
        return type(self).forward(self, hidden_states, attention_mask, encoder_hidden_states,
                                  encoder_attention_mask, cache=cache, **kwargs)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    attn = self.self
    batch, length = hidden_states.shape[:2]
    cls = hidden_states[:, :1]
    head = attn.attention_head_size
    query = attn.query(cls).view(batch, 1, -1, head).transpose(1, 2)
    key = attn.key(hidden_states).view(batch, length, -1, head).transpose(1, 2)
    value = attn.value(hidden_states).view(batch, length, -1, head).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] != 1:
        attention_mask = attention_mask[:, :, :1]  # the [CLS] query's row of the mask
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager_attention_forward)
    context, _ = interface(attn, query, key, value, attention_mask, dropout=attn.dropout.p, scaling=attn.scaling,
                           **kwargs)
    return self.output(context.reshape(batch, 1, -1).contiguous(), cls), None


class ClsTopLayer:
    """The handle of an installed top block; `release` gives it back its stock forward."""

    def __init__(self, attention: nn.Module):
        self.attention = attention
        self.set(True)

    def set(self, on: bool) -> None:
        """The [CLS]-only forward on, or the stock one back (an A/B takes turns on one model)."""
        if on:
            self.attention.forward = types.MethodType(_cls_attention_forward, self.attention)
        elif "forward" in vars(self.attention):
            del self.attention.forward

    def release(self) -> None:
        """Back to the stock block (after training: nothing saved or served depends on it)."""
        self.set(False)


def _bert_style(attention) -> bool:
    attn = getattr(attention, "self", None)
    return (attn is not None and all(hasattr(attn, name) for name in ("query", "key", "value", "scaling",
                                                                          "attention_head_size", "dropout"))
            and callable(getattr(attention, "output", None)) and not getattr(attention, "is_cross_attention", False))


def install(model: nn.Module) -> ClsTopLayer | None:
    """Compute the model's top block for [CLS] only in training, where that gives the stock [CLS] output; returns
    the handle, or None where the stock block stays (see the module docstring). The caller vouches that the head
    reads nothing but the top block's [CLS]."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return None
    if getattr(config, "_attn_implementation", None) not in _ATTENTION:
        return None
    if getattr(config, "output_hidden_states", False):
        return None
    try:
        parts = encoder_parts(model)
    except BertopsError:
        return None
    attention = getattr(parts.layers[-1], "attention", None)
    if attention is None or not _bert_style(attention) or getattr(parts.layers[-1], "chunk_size_feed_forward", 0):
        return None
    return ClsTopLayer(attention)
