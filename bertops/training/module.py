"""LightningModules: a shared fine-tuning core (loss, clipping, AdamW + schedule) with per-task validation
metrics: sequence (and sentence-pair) classification from [CLS], token classification (entity-level F1)."""

from __future__ import annotations

import math

import lightning as L
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from bertops.config import FinetuneParams, TrainParams
from bertops.ner_metrics import entity_scores
from bertops.training.data import IGNORE_INDEX
from bertops.training.distributed import gather_objects
from bertops.training.optim import build_optimizer, build_schedule, param_groups
from bertops.training.strategies import encoder_parts


class FineTuner(L.LightningModule):
    """The training side shared by every task: the model's own loss, clipping, optimizer and schedule."""

    def __init__(self, model, new_params: set[str], train_params: TrainParams,
                 finetune: FinetuneParams = FinetuneParams()):
        super().__init__()
        self.model, self.new_params, self.hp, self.finetune = model, new_params, train_params, finetune
        # from_pretrained returns the model in eval mode (dropout off); Lightning keeps modules' modes as found
        self.model.train()
        if finetune.encoder == "frozen":  # a fixed feature extractor: no dropout inside the encoder either
            self.model.base_model.eval()  # Lightning keeps these modes (it restores them after validation)

    def forward(self, batch):
        return self.model(**batch)

    def training_loss(self, batch) -> torch.Tensor:
        """The loss a training step minimises; tasks whose loss is a mean over tokens override it."""
        return self.model(**batch).loss

    def training_step(self, batch, batch_idx):
        loss = self.training_loss(batch)
        # kept on the device: the progress bar reads it at its refresh rate, MLflow logging in batches
        self.log("train_loss", loss, prog_bar=True, logger=False, on_step=True, on_epoch=False)
        return loss

    def token_mean(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """The mean loss per token over the whole global batch. DDP averages the ranks' gradients, so a rank's
        own token mean would weigh a token on a rank with few of them more than one on a busy rank: divide by the
        mean token count per rank instead (one scalar all-reduce, no host sync), and the gradient is exactly the
        one-process one."""
        if self.trainer.world_size > 1:
            count = self.trainer.strategy.reduce(count.float(), reduce_op="sum") / self.trainer.world_size
        return total / count.float().clamp_min(1.0)

    def on_before_optimizer_step(self, optimizer):
        # Clipping here rather than through Trainer(gradient_clip_val=...): Lightning's mixed-precision plugin
        # refuses to clip for fused optimizers, and this hook already sees unscaled gradients.
        if self.hp.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.hp.max_grad_norm, foreach=True)

    def configure_optimizers(self):
        hp = self.hp
        ft = self.finetune
        per_layer = ft.layer_lr_decay != 1.0 or ft.gradual_unfreezing
        groups = param_groups(self.model, lr=hp.lr, head_lr=hp.head_lr or hp.lr, weight_decay=hp.weight_decay,
                              head_params=self.new_params, layer_lr_decay=ft.layer_lr_decay,
                              parts=encoder_parts(self.model) if per_layer else None,
                              include_frozen=ft.gradual_unfreezing)
        # fp16 with a GradScaler needs the non-fused step (Lightning unscales before clipping only then)
        fused = self.trainer.precision != "16-mixed"
        optimizer = build_optimizer(groups, betas=hp.adam_betas, eps=hp.adam_eps, fused=fused, kind=hp.optimizer)
        schedule = build_schedule(optimizer, total_steps=int(self.trainer.estimated_stepping_batches),
                                  warmup_ratio=hp.warmup_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class SequenceClassifier(FineTuner):
    VAL_METRICS = ("val_loss", "val_accuracy", "val_macro_f1")

    def __init__(self, model, new_params: set[str], train_params: TrainParams, **kw):
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


class TokenClassifier(FineTuner):
    """Validation on entity spans: each word's tag is the prediction at its first sub-token."""

    VAL_METRICS = ("val_loss", "val_f1", "val_precision", "val_recall")

    def __init__(self, model, new_params: set[str], train_params: TrainParams, tag_scheme: str = "BIO", **kw):
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
        # several training processes: each validated its share of the sentences (one gather for both lists)
        parts = gather_objects((self._gold, self._pred))
        gold = [s for part_gold, _ in parts for s in part_gold]
        pred = [s for _, part_pred in parts for s in part_pred]
        scores = entity_scores(gold, pred, self.tag_scheme)
        self._gold, self._pred = [], []
        self.log("val_f1", scores["f1"], prog_bar=True, logger=False)
        self.log("val_precision", scores["precision"], logger=False)
        self.log("val_recall", scores["recall"], logger=False)


class QuestionAnswerer(FineTuner):
    """Validation as the test is scored: the best span over all windows of a question, SQuAD EM/F1."""

    VAL_METRICS = ("val_loss", "val_f1", "val_exact_match")

    def __init__(self, model, new_params: set[str], train_params: TrainParams, task, **kw):
        super().__init__(model, new_params, train_params, **kw)
        self.task = task
        self._logits: dict[int, tuple] = {}

    def training_loss(self, batch) -> torch.Tensor:
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
                               n_best=self.task.n_best, max_answer_length=self.task.max_answer_length,
                               allow_no_answer=self.task.allow_no_answer, null_threshold=self.task.null_threshold)
        self._logits = {}
        scores = squad_scores({r["id"]: a for r, a in zip(rows, answers)},
                              {r["id"]: r["answers"]["text"] for r in rows})
        self.log("val_f1", scores["f1"], prog_bar=True, logger=False)
        self.log("val_exact_match", scores["exact_match"], logger=False)


class MaskedLM(FineTuner):
    """Held-out perplexity: exp of the mean loss over every masked token of the split (fixed masks)."""

    VAL_METRICS = ("val_loss", "val_perplexity", "val_accuracy")

    def __init__(self, model, new_params: set[str], train_params: TrainParams, **kw):
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


def masked_lm_head(model):
    """The prediction head of a *ForMaskedLM model as a module from hidden states to vocabulary logits, for the
    families whose head is one such module (BERT and its kin: `cls`; RoBERTa, XLM-R, DeBERTa: `lm_head`); None
    for others (their own forward is used)."""
    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    return None


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX tiles), where bf16 autocast pays off."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def auto_precision(precision: str, accelerator: str = "auto") -> str:
    """`auto`: bf16-mixed on a GPU that supports it, and on a CPU with AMX (measured on MR: same accuracy, faster;
    docs/studies.md, cpu-precision-mr); 32-true otherwise."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_bf16_matmul() else "32-true"
