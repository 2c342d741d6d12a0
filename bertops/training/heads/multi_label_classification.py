"""The LightningModule of multi label classification: its loss and validation metrics (imported only by
the train stage: Lightning and torchmetrics stay out of the other stages and the served model)."""

from __future__ import annotations

import numpy as np
import torch

from bertops.tasks.multi_label_classification import f1_counts
from bertops.training.distributed import gather_objects
from bertops.training.module import FineTuner


class MultiLabelClassifier(FineTuner):
    READS_CLS_ONLY = True  # the pooler / [CLS] head on AutoModelForSequenceClassification
    VAL_METRICS = ("val_loss", "val_micro_f1", "val_macro_f1", "val_subset_accuracy")

    def __init__(self, model, new_params, train_params, threshold: float | None = None, **kw):
        super().__init__(model, new_params, train_params, **kw)
        self.threshold = 0.5 if threshold is None else threshold  # per-label thresholds come after training
        self._seen: list[tuple[np.ndarray, np.ndarray]] = []

    def validation_step(self, batch, batch_idx):
        out = self.model(**batch)
        self.log("val_loss", out.loss, on_epoch=True, batch_size=len(batch["labels"]), logger=False, sync_dist=True)
        self._seen.append((batch["labels"].cpu().numpy() > 0.5, torch.sigmoid(out.logits.float()).cpu().numpy()))

    def on_validation_epoch_end(self):
        parts = [p for part in gather_objects(self._seen) for p in part]
        self._seen = []
        gold = np.concatenate([g for g, _ in parts])
        pred = np.concatenate([p for _, p in parts]) >= self.threshold
        scores = f1_counts(gold, pred)
        self.log("val_micro_f1", scores["micro_f1"], prog_bar=True, logger=False)
        self.log("val_macro_f1", scores["macro_f1"], logger=False)
        self.log("val_subset_accuracy", scores["subset_accuracy"], logger=False)
