"""The LightningModule of masked lm: its loss and validation metrics (imported only by
the train stage: Lightning and torchmetrics stay out of the other stages and the served model)."""

from __future__ import annotations

import math

import torch

from bertops.modeling import IGNORE_INDEX
from bertops.tasks.masked_lm import masked_lm_head
from bertops.training.module import FineTuner


class MaskedLM(FineTuner):
    """Held-out perplexity: exp of the mean loss over every masked token of the split (fixed masks)."""

    VAL_METRICS = ("val_loss", "val_perplexity", "val_accuracy")

    def __init__(self, model, new_params: set[str], train_params, **kw):
        super().__init__(model, new_params, train_params, **kw)
        self._sums = None
        self._head = masked_lm_head(model)

    def masked_outputs(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean loss, logits, labels) over the masked positions only. The head runs on those ~15 % of positions
        instead of all of them: its projection onto the vocabulary costs more than the whole encoder per token
        for a small model (MiniLM: 384 x 30,522 vs about 6 x 1.8 M multiply-adds). Same loss as the model's own
        forward, which scores every position and then ignores the unmasked ones."""
        masked = batch["labels"] != IGNORE_INDEX
        targets = batch["labels"][masked]
        if self._head is None:  # a model family whose head we do not know: its own forward
            out = self.model(**batch)
            return out.loss, out.logits[masked], targets
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        hidden = self.model.base_model(**inputs).last_hidden_state
        logits = self._head(hidden[masked])
        if logits.shape[0] == 0:  # nothing masked in this batch: a zero loss that still reaches every weight
            return logits.sum() + hidden.sum() * 0.0, logits, targets
        return torch.nn.functional.cross_entropy(logits.float(), targets), logits, targets

    def training_loss(self, batch) -> torch.Tensor:
        mean, _, targets = self.masked_outputs(batch)
        return self.token_mean(mean * targets.numel(), mean.new_tensor(float(targets.numel())))

    def on_validation_epoch_start(self):
        self._sums = torch.zeros(3, device=self.device)  # loss sum, masked tokens, correct top-1

    def validation_step(self, batch, batch_idx):
        loss, logits, labels = self.masked_outputs(batch)
        n = labels.numel()
        correct = (logits.argmax(-1) == labels).sum()
        self._sums += torch.stack([loss.float() * n, loss.new_tensor(float(n)).float(), correct.float()])

    def on_validation_epoch_end(self):
        loss_sum, n, correct = self.trainer.strategy.reduce(self._sums, reduce_op="sum").tolist()
        mean = loss_sum / max(n, 1.0)
        self.log("val_loss", mean, logger=False)
        self.log("val_perplexity", math.exp(min(mean, 50.0)), prog_bar=True, logger=False)
        self.log("val_accuracy", correct / max(n, 1.0), logger=False)
