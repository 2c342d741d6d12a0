"""The LightningModule of question answering: its loss and validation metrics (imported only by
the train stage: Lightning and torchmetrics stay out of the other stages and the served model)."""

from __future__ import annotations

from bertops.training.distributed import gather_objects
from bertops.training.module import FineTuner


class QuestionAnswerer(FineTuner):
    """Validation as the test is scored: the best span over all windows of a question, SQuAD EM/F1."""

    VAL_METRICS = ("val_loss", "val_f1", "val_exact_match")

    def __init__(self, model, new_params: set[str], train_params, task, **kw):
        super().__init__(model, new_params, train_params, **kw)
        self.task = task
        self._logits: dict[int, tuple] = {}

    def training_loss(self, batch):
        batch.pop("feature_index", None)
        return super().training_loss(batch)

    def validation_step(self, batch, batch_idx):
        index = batch.pop("feature_index").tolist()
        out = self.model(**batch)
        self.log("val_loss", out.loss, on_epoch=True, batch_size=len(index), logger=False, sync_dist=True)
        starts, ends = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        for row, i in enumerate(index):
            self._logits[i] = (starts[row], ends[row])

    def on_validation_epoch_end(self):
        from bertops.qa.metrics import squad_scores
        from bertops.qa.windows import best_answers

        data = self.trainer.datamodule
        features, rows = data.splits["val"].features, data.rows["val"]
        for part in gather_objects(self._logits):  # several training processes: each scored its share of windows
            self._logits.update(part)
        answers = best_answers(features, [self._logits[i][0] for i in range(len(features))],
                               [self._logits[i][1] for i in range(len(features))], [r["context"] for r in rows],
                               **self.task.decoding())
        self._logits = {}
        scores = squad_scores({r["id"]: a for r, a in zip(rows, answers)},
                              {r["id"]: r["answers"]["text"] for r in rows})
        self.log("val_f1", scores["f1"], prog_bar=True, logger=False)
        self.log("val_exact_match", scores["exact_match"], logger=False)
