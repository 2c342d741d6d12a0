"""The LightningModule of sequence regression: its loss and validation metrics (imported only by
the train stage: Lightning and torchmetrics stay out of the other stages and the served model)."""

from __future__ import annotations

from bertops.tasks.sequence_regression import SCALE_KEYS, regression_metrics
from bertops.training.distributed import gather_objects
from bertops.training.module import FineTuner


class SequenceRegressor(FineTuner):
    READS_CLS_ONLY = True  # the pooler / [CLS] head on AutoModelForSequenceClassification
    VAL_METRICS = ("val_loss", "val_pearson", "val_spearman", "val_rmse", "val_mae")
    metric = "pearson"  # task.metric: shown on the progress bar (the family sets it)

    def __init__(self, model, new_params, train_params, **kw):
        super().__init__(model, new_params, train_params, **kw)
        self.mean, self.std = (float(getattr(model.config, k)) for k in SCALE_KEYS)
        self._pairs: list[tuple[list[float], list[float]]] = []

    def validation_step(self, batch, batch_idx):
        out = self.model(**batch)
        self.log("val_loss", out.loss, on_epoch=True, batch_size=len(batch["labels"]), logger=False, sync_dist=True)
        pred = out.logits.float().squeeze(-1) * self.std + self.mean
        gold = batch["labels"].float() * self.std + self.mean
        self._pairs.append((gold.cpu().tolist(), pred.cpu().tolist()))

    def on_validation_epoch_end(self):
        parts = gather_objects(self._pairs)  # several training processes: each validated its share
        gold = [g for part in parts for gs, _ in part for g in gs]
        pred = [p for part in parts for _, ps in part for p in ps]
        self._pairs = []
        scores = regression_metrics(gold, pred)
        self.log(f"val_{self.metric}", scores[self.metric], prog_bar=True, logger=False)
        for key in ("pearson", "spearman", "rmse", "mae"):
            if key != self.metric:
                self.log(f"val_{key}", scores[key], logger=False)
