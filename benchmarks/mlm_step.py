"""Masked-LM training step on the packaged MiniLM: the model's own forward (every position through the vocabulary
projection) against bertops's `MaskedLM.masked_outputs` (only the masked positions through the head), in float32
and bf16 autocast, forward + backward, 4 interleaved repeats after a warm-up. Prints one line per precision.

    python benchmarks/mlm_step.py [--batch 32] [--length 32]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForMaskedLM

from bertops.config import TrainParams
from bertops.modeling import resolve_model_path
from bertops.tasks.masked_lm import MaskedLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_pretrained(resolve_model_path(args.model))
    module = MaskedLM(model, set(), TrainParams())
    model.train()
    ids = torch.randint(1000, 20000, (args.batch, args.length))
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(ids.shape) < 0.15
    labels[chosen] = ids[chosen]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    runners = {"full": lambda: model(**batch).loss.backward(),
               "masked-only": lambda: module.masked_outputs(batch)[0].backward()}
    for bf16 in (False, True):
        totals = dict.fromkeys(runners, 0.0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for fn in runners.values():
                fn()
            for _ in range(args.repeats):
                for name, fn in runners.items():
                    start = time.perf_counter()
                    fn()
                    totals[name] += time.perf_counter() - start
        ms = {k: round(v / args.repeats * 1000) for k, v in totals.items()}
        print(f"{'bf16' if bf16 else 'fp32'}: {ms} ms forward+backward, batch {args.batch} x {args.length}", flush=True)


if __name__ == "__main__":
    main()
