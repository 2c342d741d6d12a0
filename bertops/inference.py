"""Batched inference with a saved classifier: length-sorted batches, original order restored."""

from __future__ import annotations

import numpy as np
import torch


@torch.inference_mode()
def predict_proba(model, tokenizer, texts: list[str], pairs: list[str] | None = None, *, max_length: int,
                  batch_size: int = 128) -> np.ndarray:
    device = next(model.parameters()).device
    model.eval()
    enc = tokenizer(texts, pairs, truncation="longest_first", max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: len(enc["input_ids"][i]))
    probs = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer.pad([{k: enc[k][i] for k in enc.keys()} for i in idx], return_tensors="pt")
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(**batch).logits
        probs[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return probs
