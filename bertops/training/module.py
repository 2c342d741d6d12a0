"""The fine-tuning core every task's LightningModule shares (loss, clipping, AdamW + schedule, the token mean
under DDP) and the precision choice. Each task family's module (head, loss, validation metrics) subclasses
FineTuner in bertops/tasks/<family>.py."""

from __future__ import annotations

import lightning as L
import torch

from bertops.config import FinetuneParams, TrainParams
from bertops.training import (attention_probs, cls_top_layer, dropout_add_norm, embedding_grad, fast_dropout,
                              lazy_embedding_decay, working_weights)
from bertops.training.optim import build_optimizer, build_schedule, param_groups
from bertops.training.encoder_parts import encoder_parts


class FineTuner(L.LightningModule):
    """The training side shared by every task: the model's own loss, clipping, optimizer and schedule."""

    # the task's head reads the top block's [CLS] output and nothing else (the pooler / [CLS] classifiers)
    READS_CLS_ONLY = False

    def __init__(self, model, new_params: set[str], train_params: TrainParams,
                 finetune: FinetuneParams = FinetuneParams()):
        super().__init__()
        self.model, self.new_params, self.hp, self.finetune = model, new_params, train_params, finetune
        # from_pretrained returns the model in eval mode (dropout off); Lightning keeps modules' modes as found
        self.model.train()
        if finetune.encoder == "frozen":  # a fixed feature extractor: no dropout inside the encoder either
            self.model.base_model.eval()  # Lightning keeps these modes (it restores them after validation)
        if auto_fast_dropout(train_params):
            fast_dropout.install(self.model)  # no weights: checkpoints and the eval-mode model are unchanged
            if auto_fused_attention_probs(train_params):
                attention_probs.install(self.model)  # builds the CPU kernels once per machine (cached)
            if auto_fused_dropout_add_norm(train_params):
                dropout_add_norm.install(self.model)
        self.rows_grad = None
        self.cls_top = None
        self.lazy_decay = None
        self.working = None

    def setup(self, stage):
        if stage == "fit" and auto_lazy_embedding_decay(self.hp) and self.lazy_decay is None:
            read_ids = getattr(self.trainer.datamodule, "train_token_ids", lambda: None)()
            self.lazy_decay = lazy_embedding_decay.install(self.model, read_ids, processes=self.trainer.world_size,
                                                           precision=str(self.trainer.precision))
        if stage == "fit" and auto_row_embedding_grad(self.hp) and self.rows_grad is None:
            self.rows_grad = embedding_grad.install(self.model, processes=self.trainer.world_size)
        if (stage == "fit" and self.READS_CLS_ONLY and self.finetune.layer_features == "last"
                and auto_cls_top_layer(self.hp) and self.cls_top is None):
            self.cls_top = cls_top_layer.install(self.model)
        if auto_compile(self.hp) and not getattr(self.model, "_compiled_call_impl", None):
            # in place: the state dict keeps its keys, so checkpoints and save_pretrained are unchanged
            self.model.compile(dynamic=True)

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
        embedding_grad.clip_and_densify(self.parameters(), self.hp.max_grad_norm, self.rows_grad, self.working)
        if self.lazy_decay is not None:
            self.lazy_decay.before_step(optimizer)

    def on_train_start(self):
        if self.working is not None:  # the masters as they are now (a resume loaded them)
            self.working.refresh()

    def on_fit_end(self):
        if self.working is not None:  # first: the Linears' parameters get their own storage back
            self.working.release()
            self.working = None
        if self.rows_grad is not None:
            self.rows_grad.release()
            self.rows_grad = None
        if self.cls_top is not None:
            self.cls_top.release()
            self.cls_top = None
        if self.lazy_decay is not None:  # after the sparse gradient's release: the stock table comes back
            self.lazy_decay.release()
            self.lazy_decay = None

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
        if self.working is not None:  # a second fit of this module
            self.working.release()
            self.working = None
        if (auto_bf16_working_weights(hp, str(self.trainer.precision)) and self.trainer.world_size == 1
                and self.trainer.accumulate_grad_batches == 1):
            self.working = working_weights.install(self.model, optimizer)
        schedule = build_schedule(optimizer, total_steps=int(self.trainer.estimated_stepping_batches),
                                  warmup_ratio=hp.warmup_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware, where bf16 autocast pays off: Intel's AMX tiles, or
    AVX-512 BF16's dot-product instructions (AMD Zen 4 has them and no AMX). Measured on a 2-core AMD EPYC with
    AVX-512 BF16: torch's bf16 products of MiniLM's shapes 2.2x the fp32 ones, training steps about 1.7x, the same
    accuracy (docs/performance.md). Without either, bf16 is emulated and many times slower than fp32."""
    return cpu_has_amx() or _cpu_probe("_is_avx512_bf16_supported")


def on_gpu(accelerator: str = "auto") -> bool:
    return accelerator in ("auto", "gpu") and torch.cuda.is_available()


def auto_pad_multiple(train: TrainParams) -> int | None:
    """What training batches are padded up to a multiple of (None = the batch's longest): `auto` = 8 on a GPU,
    where tensor cores want it, none on a CPU, where the extra pad tokens are only extra work (measured:
    docs/performance.md)."""
    setting = train.pad_to_multiple_of
    if setting == "auto":
        return 8 if on_gpu(train.accelerator) else None
    return setting if setting > 1 else None


def auto_compile(train: TrainParams) -> bool:
    """Whether training runs the model through torch.compile; `auto` = off (docs/performance.md: the A/B rows)."""
    return train.compile is True


def auto_fast_dropout(train: TrainParams) -> bool:
    """Whether training uses bertops.training.fast_dropout: `auto` = on a CPU, where torch draws a 32-bit number
    per dropped-or-kept element (measured: docs/performance.md); off on a GPU, whose dropout is one fused kernel."""
    if train.fast_dropout == "auto":
        return not on_gpu(train.accelerator)
    return train.fast_dropout


def auto_row_embedding_grad(train: TrainParams) -> bool:
    """Whether the word embedding's gradient is formed over the rows a batch read (bertops.training.embedding_grad):
    `auto` = on a CPU, where zeroing, norming and scaling the whole table each step was measured (docs/performance.md);
    off on a GPU, where those are a few fast kernels."""
    if train.row_embedding_grad == "auto":
        return not on_gpu(train.accelerator)
    return train.row_embedding_grad


def auto_lazy_embedding_decay(train: TrainParams) -> bool:
    """Whether the word-embedding rows no training sentence reads are decayed lazily (bertops.training.
    lazy_embedding_decay): `auto` = on a CPU, where AdamW's pass over them was measured (docs/performance.md); off on
    a GPU, where that pass is one fast kernel."""
    if train.lazy_embedding_decay == "auto":
        return not on_gpu(train.accelerator)
    return train.lazy_embedding_decay


def auto_cls_top_layer(train: TrainParams) -> bool:
    """Whether a [CLS]-head task's top block computes [CLS] only in training (bertops.training.cls_top_layer):
    `auto` = on a CPU, where the paired step A/B measured it (docs/performance.md); off on a GPU, unmeasured there."""
    if train.cls_top_layer == "auto":
        return not on_gpu(train.accelerator)
    return train.cls_top_layer


def auto_fused_attention_probs(train: TrainParams) -> bool:
    """Whether fast dropout's training attention runs its softmax and dropout as one C++ kernel each way
    (bertops.training.attention_probs); see `_cpu_kernel`."""
    return _cpu_kernel(train, train.fused_attention_probs)


def auto_fused_dropout_add_norm(train: TrainParams) -> bool:
    """Whether each block's dropout, residual add and LayerNorm run as one C++ kernel each way
    (bertops.training.dropout_add_norm); see `_cpu_kernel`."""
    return _cpu_kernel(train, train.fused_dropout_add_norm)


def _cpu_kernel(train: TrainParams, knob: bool | str) -> bool:
    """A CPU-kernel lever's knob resolved: only with fast dropout under bf16-mixed on a CPU, in eager mode
    (torch.compile would trace into the extension's calls); `auto` = there on a CPU with AMX, where the paired step
    A/Bs measured them (docs/performance.md), when a C++ compiler is found."""
    if not (auto_fast_dropout(train) and not on_gpu(train.accelerator) and not auto_compile(train)
            and auto_precision(train.precision, train.accelerator) == "bf16-mixed"):
        return False
    if knob == "auto":
        return cpu_has_amx() and working_weights.have_compiler()
    return knob


def auto_bf16_working_weights(train: TrainParams, precision: str) -> bool:
    """Whether the trainable Linears train on bf16 working copies stepped in one fused pass with their fp32 masters
    (bertops.training.working_weights): only under bf16-mixed on a CPU with torch's AdamW, and not with
    `train.compile`; `auto` = there on a CPU with AMX, where the paired step A/B and the runners measured it
    (docs/performance.md), when inductor finds a C++ compiler; not yet measured on AVX-512 BF16 without AMX, so off
    there unless set true. The train stage's module also needs one process and one micro-batch a step."""
    if precision != "bf16-mixed" or on_gpu(train.accelerator) or train.optimizer != "adamw" or auto_compile(train):
        return False
    if train.bf16_working_weights == "auto":
        return cpu_has_amx() and working_weights.have_compiler()
    return train.bf16_working_weights


def cpu_has_amx() -> bool:
    """Whether this CPU has Intel's AMX tiles."""
    return _cpu_probe("_is_amx_tile_supported")


def _cpu_probe(name: str) -> bool:
    """torch.cpu's private feature probe `name`, False where this torch has none."""
    probe = getattr(torch.cpu, name, None)
    return bool(probe and probe())


def auto_precision(precision: str, accelerator: str = "auto") -> str:
    """`auto`: bf16-mixed on a GPU that supports it, and on a CPU with AMX or AVX-512 BF16 (measured on MR: same
    accuracy, faster; docs/studies.md, cpu-precision-mr, and docs/performance.md); 32-true otherwise."""
    if precision != "auto":
        return precision
    if on_gpu(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_bf16_matmul() else "32-true"
