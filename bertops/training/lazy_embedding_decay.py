"""Full AdamW without its work on the word-embedding rows no training sentence reads (`train.lazy_embedding_decay`).

A row of the word embedding that no training batch ever reads gets a zero gradient at every step, so its Adam
moments stay exactly zero and full AdamW (and BertAdam) only multiplies it by (1 - lr x weight_decay) each step;
its Adam update is 0 / (0 + eps) = 0. On MR, 58 % of MiniLM's 30,522 rows are never read, and AdamW's pass over
them is about 4 ms of a 101 ms CPU step (docs/performance.md). Those rows are scattered over the vocabulary (the
12,833 read ids form 5,880 runs), so during training the table is held permuted: the rows the train split reads
first, as the one trainable weight the optimizer sees, and the others in a buffer whose decay is a running product
applied when the rows are next needed (a validation that reads them, a checkpoint, the end of training). The result
is full AdamW's, up to the rounding of one product of the decay factors against their step-by-step products.

- The state dict holds the whole table in vocabulary order under the stock key, brought up to date: checkpoints,
  the best model and the exported model are unchanged, and a resumed run permutes it again (the train split, and
  so the permutation, is the same).
- A training batch reading a row outside the train split's ids would need full Adam on it: that stops with an error
  rather than train something else.
- Skipped (the stock embedding stays) where it would not be full AdamW or cannot hold: a frozen or shared (tied)
  embedding, a collator that draws token ids of its own (masked-LM masking), several processes, fp16 with a
  GradScaler (a skipped step would still count its decay).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bertops.errors import BertopsError


class LazyDecayEmbedding(nn.Module):
    """An nn.Embedding's table split into the rows training reads (`weight`, trained) and the rest (decayed lazily)."""

    def __init__(self, embedding: nn.Embedding, read_ids: torch.Tensor):
        super().__init__()
        table = embedding.weight.detach()
        vocab = table.shape[0]
        read = torch.zeros(vocab, dtype=torch.bool)
        read[read_ids.long()] = True
        order = torch.cat([read.nonzero().squeeze(1), (~read).nonzero().squeeze(1)])  # new row -> token id
        position = torch.empty_like(order)
        position[order] = torch.arange(vocab)
        self._original = (embedding,)  # in a tuple: not a submodule (its weight is not trained, saved or moved)
        self.rows, self.num_embeddings = int(read.sum()), vocab
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("position", position, persistent=False)
        self.weight = nn.Parameter(table[order[:self.rows]].clone())
        self.register_buffer("unread", table[order[self.rows:]].clone(), persistent=False)
        pad = embedding.padding_idx
        self.padding_idx = int(position[pad]) if pad is not None and int(position[pad]) < self.rows else None
        self.sparse, self.max_norm, self.factor = embedding.sparse, None, 1.0

    # ---- training --------------------------------------------------------------------------------------------
    def decay(self, lr: float, weight_decay: float) -> None:
        """What this optimizer step does to the unread rows (call it once per step, before the step)."""
        self.factor *= 1.0 - lr * weight_decay

    def bring_up_to_date(self) -> None:
        if self.factor != 1.0:
            self.unread.mul_(self.factor)
            self.factor = 1.0

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        idx = self.position[input_ids]
        reads_unread = bool(idx.numel()) and int(idx.max()) >= self.rows  # a CPU-side check: the lever is a CPU's
        if not reads_unread:
            return F.embedding(idx, self.weight, self.padding_idx, sparse=self.sparse)
        if self.training and torch.is_grad_enabled():
            raise BertopsError("train.lazy_embedding_decay: a training batch read a token id outside the train "
                               "split's; set train.lazy_embedding_decay: false")
        self.bring_up_to_date()
        unread = idx >= self.rows
        return torch.where(unread.unsqueeze(-1), F.embedding((idx - self.rows).clamp_min(0), self.unread),
                           F.embedding(idx.clamp_max(self.rows - 1), self.weight, self.padding_idx))

    # ---- the stock table, in vocabulary order --------------------------------------------------------------
    @torch.no_grad()
    def full_table(self) -> torch.Tensor:
        self.bring_up_to_date()
        table = torch.empty((self.num_embeddings, self.weight.shape[1]), dtype=self.weight.dtype,
                            device=self.weight.device)
        table[self.order[:self.rows]] = self.weight.detach()
        table[self.order[self.rows:]] = self.unread
        return table

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.full_table()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        table = state_dict[key]
        if table.shape != (self.num_embeddings, self.weight.shape[1]):
            error_msgs.append(f"size mismatch for {key}: {tuple(table.shape)} in the checkpoint, "
                              f"{(self.num_embeddings, self.weight.shape[1])} here")
            return
        with torch.no_grad():
            self.weight.copy_(table[self.order[:self.rows]])
            self.unread.copy_(table[self.order[self.rows:]])
        self.factor = 1.0

    def release(self) -> nn.Embedding:
        """The original nn.Embedding, holding the trained table."""
        original = self._original[0].to(self.weight.device)
        with torch.no_grad():
            original.weight.copy_(self.full_table())
        return original


class LazyEmbeddingDecay:
    """The handle FineTuner keeps: installs the permuted table, counts each step's decay, restores the stock one."""

    def __init__(self, model: nn.Module, embedding: LazyDecayEmbedding):
        self.model, self.embedding, self._group = model, embedding, None

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.embedding.weight.grad is None:
            return  # AdamW leaves a parameter without a gradient alone (a frozen embedding: gradual unfreezing)
        if self._group is None:
            self._group = next(g for g in optimizer.param_groups if any(p is self.embedding.weight
                                                                        for p in g["params"]))
        self.embedding.decay(float(self._group["lr"]), float(self._group.get("weight_decay", 0.0)))

    def release(self) -> None:
        self.model.set_input_embeddings(self.embedding.release())


def install(model: nn.Module, read_ids: torch.Tensor | None, processes: int = 1,
            precision: str | None = None) -> LazyEmbeddingDecay | None:
    """Hold the model's input word embedding permuted, the rows in `read_ids` trained (see the module docstring);
    None where the stock embedding stays."""
    from bertops.training.embedding_grad import own_input_embedding

    if read_ids is None or processes > 1 or precision == "16-mixed":
        return None
    embedding = own_input_embedding(model, (nn.Embedding,))
    if embedding is None:
        return None
    lazy = LazyDecayEmbedding(embedding, read_ids.to(embedding.weight.device))
    if lazy.rows == lazy.num_embeddings:
        return None  # every row is read: nothing to skip
    model.set_input_embeddings(lazy)
    return LazyEmbeddingDecay(model, lazy)
