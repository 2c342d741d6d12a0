"""A/B of one lever on the CPU, with the noise of a shared host taken out: training steps (forward, backward, fused
AdamW) of the packaged MiniLM on the same MR batches (length-grouped, batch 16, as the train stage forms them),
padded to the batch's longest vs up to a multiple of 8, alternating A and B step by step. Reports the median
step time of each and the padded tokens each computes.

    python benchmarks/pad_multiple.py --steps 40
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_speed import length_grouped_mr_batches
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    from bertops.modeling import resolve_model_path
    from bertops.training.optim import build_optimizer

    # length grouping as the train stage does it: a shuffled pool sorted by length, cut into batches of 16
    params, tokenizer, labels, batches = length_grouped_mr_batches(REPO / "params.yaml", args.steps)
    collate = {"none": DataCollatorWithPadding(tokenizer), "8": DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)}
    torch.manual_seed(0)  # the new classifier head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(params.model.name_or_path),
                                                               num_labels=len(labels), dtype=torch.float32)
    model.train()
    opt = build_optimizer([{"params": list(model.parameters()), "lr": 1e-5, "weight_decay": 0.0}],
                          betas=(0.9, 0.999), eps=1e-8)
    times = {k: [] for k in collate}
    tokens = {k: 0 for k in collate}
    for rep, batch in enumerate(batches * 2):
        for name in (("none", "8") if rep % 2 else ("8", "none")):
            inputs = collate[name](batch)
            tokens[name] += inputs["input_ids"].numel()
            start = time.perf_counter()
            model(**inputs).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - start)
    real = sum(len(f["input_ids"]) for b in batches for f in b) * 2
    row = {"steps_each": len(times["none"]), "threads": torch.get_num_threads(), "torch": torch.__version__,
           **{f"median_step_ms_pad_{k}": round(1000 * statistics.median(v), 1) for k, v in times.items()},
           **{f"computed_tokens_pad_{k}": v for k, v in tokens.items()}, "real_tokens": real}
    row["time_ratio_8_vs_none"] = round(row["median_step_ms_pad_8"] / row["median_step_ms_pad_none"], 3)
    print(json.dumps(row))
    if args.out:
        args.out.write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
