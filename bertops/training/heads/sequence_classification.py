"""The LightningModule of sequence classification: its loss and validation metrics (imported only by
the train stage: Lightning and torchmetrics stay out of the other stages and the served model)."""

from __future__ import annotations

from bertops.training.module import FineTuner


class SequenceClassifier(FineTuner):
    READS_CLS_ONLY = True  # the pooler / [CLS] head on AutoModelForSequenceClassification
    VAL_METRICS = ("val_loss", "val_accuracy", "val_macro_f1")

    def __init__(self, model, new_params: set[str], train_params, **kw):
        from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

        super().__init__(model, new_params, train_params, **kw)
        num_labels = model.config.num_labels
        self.val_accuracy = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.val_macro_f1 = MulticlassF1Score(num_classes=num_labels, average="macro")

    def validation_step(self, batch, batch_idx):
        out = self.model(**batch)
        preds = out.logits.argmax(-1)
        self.val_accuracy.update(preds, batch["labels"])
        self.val_macro_f1.update(preds, batch["labels"])
        self.log("val_loss", out.loss, on_epoch=True, batch_size=len(preds), logger=False, sync_dist=True)

    def on_validation_epoch_end(self):
        self.log("val_accuracy", self.val_accuracy.compute(), prog_bar=True, logger=False)
        self.log("val_macro_f1", self.val_macro_f1.compute(), logger=False)
        self.val_accuracy.reset()
        self.val_macro_f1.reset()
