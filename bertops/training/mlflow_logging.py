"""Per-step metrics for MLflow without per-step blocking I/O: values stay on the device until a flush (every
`flush_every_n_steps` steps and at each validation), which copies them to the host at once and hands them to the
run's spool (bertops/training/spool.py), which ships them to MLflow in the background."""

from __future__ import annotations

import time

import lightning as L
import torch


class MlflowMetricsLogger(L.Callback):
    def __init__(self, spool, *, log_every_n_steps: int, flush_every_n_steps: int):
        self.spool = spool
        self.log_every, self.flush_every = log_every_n_steps, flush_every_n_steps
        self.pending: list[tuple[str, torch.Tensor | float, int, int]] = []
        self.loss_sum, self.loss_count = None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        loss = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach()
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss  # stays on the device
        self.loss_count += 1
        if step % self.log_every == 0:
            now = int(time.time() * 1000)
            # the mean over the steps since the last point, not one noisy batch
            self.pending.append(("train_loss", self.loss_sum / self.loss_count, step, now))
            self.loss_sum, self.loss_count = None, 0
            for i, group in enumerate(trainer.optimizers[0].param_groups):
                self.pending.append((f"lr_{group.get('name', i)}", float(group["lr"]), step, now))
            self.pending.append(("epoch", float(trainer.current_epoch), step, now))
        if step % self.flush_every == 0:
            self.flush()

    def on_validation_end(self, trainer, pl_module):
        # not on_validation_epoch_end: callbacks run before the module's hook, which computes the epoch metrics
        if trainer.sanity_checking:
            return
        now = int(time.time() * 1000)
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val_"):
                self.pending.append((key, value.detach(), trainer.global_step, now))
        self.flush()

    def on_train_end(self, trainer, pl_module):
        self.flush()

    def flush(self):
        if not self.pending:
            return
        tensors = [v for _, v, _, _ in self.pending if isinstance(v, torch.Tensor)]
        # one device->host copy for all buffered tensors
        values = iter(torch.stack([t.float().reshape(()) for t in tensors]).cpu().tolist()) if tensors else iter(())
        rows = [(key, next(values) if isinstance(v, torch.Tensor) else float(v), ts, step)
                for key, v, step, ts in self.pending]
        self.pending.clear()
        self.spool.metrics(rows)  # a local append: never waits on the tracking server
