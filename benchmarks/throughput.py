"""Training throughput on one GPU, side by side: bertops's own Lightning path (SequenceClassifier +
FineTuneData's loader + Trainer, as the train stage builds them), Hugging Face Trainer with bf16, and a
plain PyTorch loop. Random-init weights, fixed-length synthetic batches.

    python benchmarks/throughput.py --out benchmarks/results/<gpu>-<date>.json \
        [--models bert-base minilm] [--batch-sizes 32 128] [--runners bertops hf-trainer plain]

Each row: model, batch_size, seq_len, runner, samples_per_s, mfu (training FLOPs per sequence
(6N + 12 L d s) s, N = non-embedding weights, against 989 TFLOP/s bf16 for an H100), peak GPU memory.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

SHAPES = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}


def make_model(shape: str) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=30522, num_labels=2, **SHAPES[shape]))


def flops_per_sequence(model, seq_len: int) -> float:
    cfg = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)
    return (6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len) * seq_len


def synthetic_features(n: int, seq_len: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (n, seq_len), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    return [{"input_ids": ids[i].tolist(), "token_type_ids": [0] * seq_len, "attention_mask": [1] * seq_len,
             "labels": int(labels[i])} for i in range(n)]


def run_bertops(model, feats, batch_size, warmup, steps) -> float:
    import lightning as L

    from bertops.config import TrainParams
    from transformers import DataCollatorWithPadding

    from bertops.training.heads.sequence_classification import SequenceClassifier
    from bertops.training.data import EncodedSplit, FineTuneData
    from bertops.training.module import auto_precision

    class Tok:  # fixed-length data never pads; DataCollatorWithPadding only needs pad()
        padding_side, pad_token_id, model_input_names = "right", 0, ["input_ids", "token_type_ids", "attention_mask"]

        def pad(self, features, **kw):
            return {k: torch.tensor([f[k] for f in features]) for k in features[0]}

    hp = TrainParams(epochs=1, batch_size=batch_size, lr=1e-4, early_stopping_patience=None)
    data = FineTuneData({}, Tok(), ["0", "1"], encode=None, collate=DataCollatorWithPadding(Tok()),
                        max_length=len(feats[0]["input_ids"]), batch_size=batch_size,
                        eval_batch_size=batch_size, length_grouping=True, num_workers=4, seed=0)
    data.splits["train"] = EncodedSplit(feats)
    module = SequenceClassifier(model, {"classifier.weight", "classifier.bias"}, hp)
    marks = {}

    class Mark(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step in (warmup, warmup + steps):
                torch.cuda.synchronize()
                marks[trainer.global_step] = time.perf_counter()

    trainer = L.Trainer(max_steps=warmup + steps, precision=auto_precision("auto"), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        callbacks=[Mark()], enable_model_summary=False)
    trainer.fit(module, train_dataloaders=data.train_dataloader())
    return (marks[warmup + steps] - marks[warmup]) / steps


def run_hf_trainer(model, feats, batch_size, warmup, steps) -> float:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    marks = {}

    class Mark(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (warmup, warmup + steps):
                torch.cuda.synchronize()
                marks[state.global_step] = time.perf_counter()

    args = TrainingArguments(output_dir="/tmp/hf-bench", per_device_train_batch_size=batch_size, bf16=True,
                             max_steps=warmup + steps, report_to=[], save_strategy="no", logging_steps=10_000,
                             dataloader_num_workers=4, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=feats, callbacks=[Mark()]).train()
    return (marks[warmup + steps] - marks[warmup]) / steps


def run_plain(model, feats, batch_size, warmup, steps) -> float:
    model.cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = {k: torch.tensor([f[k] for f in feats[:batch_size]]).cuda() for k in feats[0]}
    for step in range(1, warmup + steps + 1):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


RUNNERS = {"bertops": run_bertops, "hf-trainer": run_hf_trainer, "plain": run_plain}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", nargs="+", default=["bert-base", "minilm"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128])
    ap.add_argument("--runners", nargs="+", default=list(RUNNERS))
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    gpu = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    rows = []
    for shape in args.models:
        for batch_size in args.batch_sizes:
            feats = synthetic_features(batch_size * (args.warmup + args.steps + 1), args.seq_len)
            for runner in args.runners:
                model = make_model(shape)
                flops = flops_per_sequence(model, args.seq_len)
                torch.cuda.reset_peak_memory_stats()
                seconds = RUNNERS[runner](model, feats, batch_size, args.warmup, args.steps)
                sps = batch_size / seconds
                row = {"model": shape, "batch_size": batch_size, "seq_len": args.seq_len, "runner": runner,
                       "samples_per_s": round(sps, 1), "mfu": round(sps * flops / peak, 4) if peak else None,
                       "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "gpu": gpu,
                       "date": datetime.date.today().isoformat(), "torch": torch.__version__}
                print(json.dumps(row), flush=True)
                rows.append(row)
                del model
                gc.collect()
                torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
