"""The LightningModule of token classification: its loss and validation metrics (imported only by
the train stage: Lightning and torchmetrics stay out of the other stages and the served model)."""

from __future__ import annotations

import torch

from bertops.modeling import IGNORE_INDEX
from bertops.training.distributed import gather_objects
from bertops.training.module import FineTuner


class TokenClassifier(FineTuner):
    """Validation on entity spans: each word's tag is the prediction at its first sub-token."""

    VAL_METRICS = ("val_loss", "val_f1", "val_precision", "val_recall")

    def __init__(self, model, new_params: set[str], train_params, tag_scheme: str = "BIO", **kw):
        super().__init__(model, new_params, train_params, **kw)
        self.id2label = {int(i): label for i, label in model.config.id2label.items()}
        self.tag_scheme = tag_scheme
        self._gold: list[list[str]] = []
        self._pred: list[list[str]] = []

    def training_loss(self, batch) -> torch.Tensor:
        labels = batch["labels"]
        logits = self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        total = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                                  ignore_index=IGNORE_INDEX, reduction="sum")
        return self.token_mean(total, (labels != IGNORE_INDEX).sum())

    def validation_step(self, batch, batch_idx):
        out = self.model(**batch)
        labels = batch["labels"]
        self.log("val_loss", out.loss, on_epoch=True, batch_size=len(labels), logger=False, sync_dist=True)
        keep = labels != IGNORE_INDEX
        preds, labels, keep = out.logits.argmax(-1).cpu(), labels.cpu(), keep.cpu()  # once per batch
        for p, g, k in zip(preds, labels, keep):
            self._gold.append([self.id2label[int(i)] for i in g[k]])
            self._pred.append([self.id2label[int(i)] for i in p[k]])

    def on_validation_epoch_end(self):
        from bertops.ner_metrics import entity_scores

        # several training processes: each validated its share of the sentences (one gather for both lists)
        parts = gather_objects((self._gold, self._pred))
        gold = [s for part_gold, _ in parts for s in part_gold]
        pred = [s for _, part_pred in parts for s in part_pred]
        scores = entity_scores(gold, pred, self.tag_scheme)
        self._gold, self._pred = [], []
        self.log("val_f1", scores["f1"], prog_bar=True, logger=False)
        self.log("val_precision", scores["precision"], logger=False)
        self.log("val_recall", scores["recall"], logger=False)
