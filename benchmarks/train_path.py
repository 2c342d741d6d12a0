"""Run bertops's own Lightning training path (SequenceClassifier + FineTuneData + Trainer, the code the
train stage uses) on the prepared splits, without MLflow, and report what it chose and how fast it went.

    python benchmarks/train_path.py --prepared data/prepared --model PATH_OR_NAME [--random-init] [--epochs 1]

Prints one JSON line: precision, fused optimizer, samples/s, real (non-pad) tokens/s, peak GPU memory,
validation accuracy. Used to check the GPU path (bf16 chosen automatically, fused AdamW on CUDA).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from bertops.config import TrainParams
from transformers import DataCollatorWithPadding

from bertops.tasks.sequence_classification import encode_sequences
from bertops.training.heads.sequence_classification import SequenceClassifier
from bertops.training.data import FineTuneData
from bertops.training.module import auto_precision


class Throughput(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--model", required=True, help="a model dir or name (tokenizer + config)")
    ap.add_argument("--random-init", action="store_true", help="initialise weights from the config")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--precision", default="auto", help="auto (what the train stage picks) | 32-true | bf16-mixed")
    ap.add_argument("--steps", type=int, default=None, help="time only this many training steps (no validation)")
    args = ap.parse_args()

    labels = json.loads((args.prepared / "labels.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    kwargs = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                  label2id={label: i for i, label in enumerate(labels)})
    if args.random_init:
        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(args.model, **kwargs))
        new = {n for n, _ in model.named_parameters()}
    else:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            args.model, dtype=torch.float32, output_loading_info=True, **kwargs)
        new = set(info["missing_keys"])
    hp = TrainParams(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, early_stopping_patience=None)
    data = FineTuneData({s: args.prepared / f"{s}.jsonl" for s in ("train", "val")}, tokenizer, labels,
                        encode=lambda rows, tok, labels: encode_sequences(rows, tok, labels, 128),
                        collate=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8),
                        max_length=128, batch_size=hp.batch_size, eval_batch_size=hp.eval_batch_size,
                        length_grouping=True, num_workers=2, seed=0)
    module = SequenceClassifier(model, new, hp)
    timer = Throughput()
    limits = {"limit_train_batches": args.steps, "limit_val_batches": 0} if args.steps else {}
    trainer = L.Trainer(max_epochs=hp.epochs, precision=auto_precision(args.precision), logger=False, callbacks=[timer],
                        enable_checkpointing=False, num_sanity_val_steps=0, enable_progress_bar=False, **limits)
    trainer.fit(module, datamodule=data)
    split = data.splits["train"]
    samples = min(len(split), args.steps * hp.batch_size) if args.steps else len(split)
    opt = trainer.optimizers[0]
    print(json.dumps({
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "precision": trainer.precision, "optimizer": type(opt).__name__, "fused": opt.defaults.get("fused"),
        "bias_correction": "torch AdamW (always bias-corrected)",
        "last_epoch_seconds": round(timer.seconds, 2), "samples_per_s": round(samples / timer.seconds, 1),
        "real_tokens_per_s": None if args.steps else round(split.real_tokens() / timer.seconds, 1),
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "val_accuracy": None if args.steps else round(float(trainer.callback_metrics["val_accuracy"]), 4),
        "versions": {"torch": torch.__version__, "lightning": L.__version__},
    }))


if __name__ == "__main__":
    main()
