"""How much the feature a frozen-encoder head reads varies between sentences: the mean pairwise cosine similarity
of the pooled [CLS] vectors (and their per-dimension standard deviation over the batch) for
`finetune.layer_features: last` vs `scalar_mix` at its initialisation (equal weights on every layer).

    python benchmarks/feature_spread.py [--sentences 64]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bertops.config import FinetuneParams
from bertops.modeling import load_classifier, load_tokenizer
from bertops.training.strategies import apply_strategy


def mean_cosine(x: torch.Tensor) -> float:
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    sim = x @ x.T
    return float(sim[~torch.eye(len(x), dtype=torch.bool)].mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--train", type=Path, default=Path("data/prepared/train.jsonl"))
    ap.add_argument("--sentences", type=int, default=64)
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.train.open()][:args.sentences]
    labels = sorted({r["label"] for r in rows})
    tokenizer = load_tokenizer(args.model, None)
    enc = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
    out = []
    for features in ("last", "scalar_mix"):
        model, new = load_classifier(args.model, labels, None, "sequence_classification")
        model, _ = apply_strategy(model, new, FinetuneParams(encoder="frozen", layer_features=features),
                                  "sequence_classification")
        with torch.no_grad():
            hidden = model.base_model.eval()(**enc)
        out.append({"layer_features": features, "pooled_mean_cosine": round(mean_cosine(hidden.pooler_output), 4),
                    "cls_mean_cosine": round(mean_cosine(hidden.last_hidden_state[:, 0]), 4),
                    "pooled_std_over_batch": round(float(hidden.pooler_output.float().std(0).mean()), 4)})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
