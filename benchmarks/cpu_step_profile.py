"""Where a MiniLM fine-tuning step spends its time on the CPU: forward + backward, clipping, AdamW, zeroing, and
the top operators (torch.profiler). MR batches of 16 in corpus order, bf16 autocast as `precision: auto` picks on
an AMX CPU, fast dropout, the word-embedding gradient by rows (train.row_embedding_grad) and fused AdamW, as the
train stage builds them on a CPU.

    python benchmarks/cpu_step_profile.py [--no-attention-dropout] [--torch-dropout] [--dense-embedding-grad]
        [--steps 60] [--shapes N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from bertops.modeling import resolve_model_path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--train", type=Path, default=Path("data/prepared/train.jsonl"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--no-attention-dropout", action="store_true",
                    help="attention_probs_dropout_prob 0 (SDPA may then pick its fused CPU kernel)")
    ap.add_argument("--torch-dropout", action="store_true",
                    help="torch's own dropout (the train stage's default on a CPU is fast_dropout)")
    ap.add_argument("--dense-embedding-grad", action="store_true",
                    help="the dense word-embedding gradient (the train stage's default on a CPU is row_embedding_grad)")
    ap.add_argument("--shapes", type=int, default=0, help="also list the N costliest operators by input shape")
    args = ap.parse_args()

    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = [json.loads(line) for line in args.train.open()][:16 * args.steps]
    labels = sorted({r["label"] for r in rows})
    extra = {"attention_probs_dropout_prob": 0.0} if args.no_attention_dropout else {}
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels), **extra).train()
    if not args.torch_dropout:
        from bertops.training import fast_dropout

        fast_dropout.install(model)
    from bertops.training import embedding_grad

    rows_grad = None if args.dense_embedding_grad else embedding_grad.install(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-5, fused=True)
    collate = DataCollatorWithPadding(tokenizer)  # to the longest: the CPU default
    batches = []
    for i in range(0, len(rows), 16):
        chunk = rows[i:i + 16]
        enc = tokenizer([r["text"] for r in chunk], truncation=True, max_length=128)
        batches.append(collate([{k: enc[k][j] for k in enc} | {"labels": labels.index(r["label"])}
                                for j, r in enumerate(chunk)]))

    def step(batch, times=None):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        t1 = time.perf_counter()
        embedding_grad.clip_and_densify(params, 1.0, rows_grad)  # the train stage's clipping
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if times is not None:
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[key] += value

    warmup = 10
    for batch in batches[:warmup]:
        step(batch)
    times = dict.fromkeys(("forward_backward", "clip", "adamw", "zero_grad"), 0.0)
    for batch in batches[warmup:]:
        step(batch, times)
    n = len(batches) - warmup
    print(json.dumps({"attention_dropout": not args.no_attention_dropout, "fast_dropout": not args.torch_dropout,
                      "row_embedding_grad": rows_grad is not None, "steps": n, "threads": torch.get_num_threads(),
                      "ms_per_step": {k: round(1000 * v / n, 1) for k, v in times.items()},
                      "total_ms_per_step": round(1000 * sum(times.values()) / n, 1)}))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=bool(args.shapes)) as prof:
        for batch in batches[warmup:warmup + 10]:
            step(batch)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    if args.shapes:
        for e in sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)[:args.shapes]:
            print(f"{e.key:28} {e.count:6} {e.self_cpu_time_total / 1000:9.1f} ms  {e.input_shapes}")


if __name__ == "__main__":
    main()
