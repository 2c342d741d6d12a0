"""Batch prediction throughput: bertops's inference path (length-sorted batches, bf16 autocast where the hardware
has it) against the transformers pipeline that `bertops predict` called before, on the same model and texts.

    python benchmarks/predict_throughput.py --model models/best --texts data/prepared/test.jsonl \
        --out benchmarks/results/predict-cpu-$(date +%F).json

Runners: `hf-pipeline` (transformers `pipeline("text-classification")`, batch 64, truncation to the
tokenizer's max length, inputs in file order), `bertops-fp32` and `bertops-bf16` (bertops.inference.predict_proba,
batch 64, max_length from --max-length). Each runner predicts every text --repeat times after one warm-up
pass; rows report texts/s and the share of labels that agree with `hf-pipeline`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from bertops.inference import predict_proba


def _timed(fn, repeat: int):
    fn()  # warm-up: kernels, allocator, tokenizer caches
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return out, (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved sequence-classification model directory")
    parser.add_argument("--texts", type=Path, required=True, help="JSONL with a `text` field (e.g. a prepared split)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    texts = [json.loads(line)["text"] for line in args.texts.open() if line.strip()]
    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device=device)

    def hf():
        return [o["label"] for o in classify(texts, batch_size=args.batch_size, truncation=True)]

    def ours(bf16: bool):
        def run():
            probs = predict_proba(model, tokenizer, texts, max_length=args.max_length, batch_size=args.batch_size,
                                  bf16=bf16)
            return [id2label[int(i)] for i in probs.argmax(-1)]
        return run

    reference, rows = None, []
    for runner, fn in (("hf-pipeline", hf), ("bertops-fp32", ours(False)), ("bertops-bf16", ours(True))):
        labels, seconds = _timed(fn, args.repeat)
        reference = reference or labels
        row = {"runner": runner, "texts": len(texts), "batch_size": args.batch_size, "device": device,
               "threads": torch.get_num_threads(), "seconds": round(seconds, 3),
               "texts_per_s": round(len(texts) / seconds, 1),
               "agreement_with_hf_pipeline": round(sum(a == b for a, b in zip(labels, reference)) / len(texts), 5)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    meta = {"model": str(args.model), "texts_file": str(args.texts), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([{**meta, **r} for r in rows], indent=1) + "\n")


if __name__ == "__main__":
    main()
