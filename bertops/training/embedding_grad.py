"""The word-embedding gradient without the full-table work (`train.row_embedding_grad`).

A batch of 16 short sentences reads a few hundred of a vocabulary's 30,522 rows, yet a dense embedding backward
zeroes the whole 30,522 x hidden gradient every step, and clipping then takes a norm over it and scales all of it
(profiled on the CPU: about 38 ms of a 640 ms MiniLM step; docs/performance.md). Here the embedding's backward is
sparse (only the rows read), and before clipping the rows are written into one persistent dense buffer whose
previous rows are zeroed first: the optimizer sees the same dense gradient as before, up to the order in which a
token's repeated positions are summed. Clipping's norm and scaling touch those rows only. The optimizer is
unchanged (full AdamW still updates every row: untouched rows' moments decay and weight decay applies, as in
full Adam).

Skipped, keeping the dense path, where it would not be the same gradient or cannot work: an embedding that is
frozen, or whose weight another module shares (an MLM head tied to it gives a dense gradient anyway), and several
processes (DDP reduces dense buckets).
"""

from __future__ import annotations

import torch
from torch import nn


class RowEmbeddingGrad:
    """Turns one embedding's sparse gradient into a dense one, reusing a buffer and zeroing only last step's rows."""

    def __init__(self, embedding: nn.Embedding):
        embedding.sparse = True
        self.embedding, self.buffer, self.rows = embedding, None, None

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def take(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This step's (rows, summed gradient rows), or None where the gradient is not sparse (none this step)."""
        grad = self.weight.grad
        if grad is None or not grad.is_sparse:
            return None
        grad = grad.coalesce()  # a token read at several positions: its rows summed, as the dense backward does
        return grad.indices()[0], grad.values()

    def put(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        """The dense gradient the optimizer sees: last step's rows zeroed, this step's written."""
        if self.buffer is None:
            self.buffer = torch.zeros_like(self.weight)
        elif self.rows is not None:
            self.buffer.index_fill_(0, self.rows, 0)
        self.buffer.index_copy_(0, rows, values.to(self.buffer.dtype))
        self.rows = rows
        self.weight.grad = self.buffer

    def release(self) -> None:
        """Back to a dense embedding (after training: nothing saved or served depends on it)."""
        self.embedding.sparse = False
        self.buffer = self.rows = None


def install(model: nn.Module, processes: int = 1) -> RowEmbeddingGrad | None:
    """Make the model's input word embedding's gradient sparse where that gives the same dense gradient; returns
    the handle `clip_and_densify` needs, or None where the dense path stays (see the module docstring)."""
    if processes > 1:
        return None
    from bertops.training.lazy_embedding_decay import LazyDecayEmbedding

    embedding = own_input_embedding(model, (nn.Embedding, LazyDecayEmbedding))
    return RowEmbeddingGrad(embedding) if embedding is not None else None


def own_input_embedding(model: nn.Module, kinds: tuple[type, ...]):
    """The model's input word embedding where it is exactly one of `kinds`, trains, has no max_norm and is the
    model's own: no other module shares its weight (an MLM head tied to it reads every row); else None."""
    if not hasattr(model, "get_input_embeddings"):
        return None
    embedding = model.get_input_embeddings()
    if type(embedding) not in kinds or not embedding.weight.requires_grad or embedding.max_norm is not None:
        return None
    shared = sum(1 for _, p in model.named_parameters(remove_duplicate=False) if p is embedding.weight)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if shared > 1 or (output is not None and getattr(output, "weight", None) is embedding.weight):
        return None
    return embedding


def clip_and_densify(parameters, max_norm: float | None, rows_grad: RowEmbeddingGrad | None,
                     working=None) -> None:
    """Clip every gradient to a total norm of `max_norm` (as torch.nn.utils.clip_grad_norm_ does), counting and
    scaling the embedding's gradient by its touched rows only, then hand the optimizer its dense gradient.
    `working` (bertops.training.working_weights.WorkingWeights): the Linears' bf16 working gradients count in the
    norm too, and their scaling is left to its fused update (it takes the coefficient)."""
    taken = rows_grad.take() if rows_grad is not None else None
    if taken is None and working is None:
        if max_norm:
            torch.nn.utils.clip_grad_norm_(parameters, max_norm, foreach=True)
        return
    skip = rows_grad.weight if taken is not None else None
    others = [p for p in parameters if p.grad is not None and p is not skip]
    rows, values = taken if taken is not None else (None, None)
    if max_norm:
        norms = [p.grad for p in others] + ([values] if taken is not None else [])
        total = torch.nn.utils.get_total_norm(norms, foreach=True) if norms else torch.zeros(())
        if working is not None:
            total = torch.sqrt(total.float().square() + working.grad_squares())
        torch.nn.utils.clip_grads_with_norm_(others, max_norm, total, foreach=True)
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # clip_grads_with_norm_'s coefficient
        if taken is not None:
            values = values * coef
        if working is not None:
            working.coef = coef
    if taken is not None:
        rows_grad.put(rows, values)
