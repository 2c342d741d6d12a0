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


@torch.inference_mode()
def predict_word_tags(model, tokenizer, sentences: list[list[str]], *, max_length: int,
                      batch_size: int = 128) -> list[list[str]]:
    """Token classification: one tag per word, read at the word's first sub-token. Words past `max_length`
    (cut off by truncation) get "O", so every word of the input has a prediction."""
    device = next(model.parameters()).device
    model.eval()
    id2label = {int(i): label for i, label in model.config.id2label.items()}
    enc = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length)
    order = sorted(range(len(sentences)), key=lambda i: len(enc["input_ids"][i]))
    tags: list[list[str]] = [["O"] * len(words) for words in sentences]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer.pad([{k: enc[k][i] for k in enc.keys()} for i in idx], return_tensors="pt")
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            predicted = model(**batch).logits.argmax(-1).cpu().tolist()
        for row, i in zip(predicted, idx):
            previous = None
            for position, word in enumerate(enc.word_ids(i)):
                if word is not None and word != previous:
                    tags[i][word] = id2label[row[position]]
                previous = word
    return tags


@torch.inference_mode()
def answer_questions(model, tokenizer, rows: list[dict], *, max_length: int, doc_stride: int, batch_size: int = 64,
                     **decode) -> list[str]:
    """Extractive QA: the best answer per {question, context} row over all its windows ("" = no answer)."""
    from bertops.qa.windows import best_answers, encode_questions
    from bertops.training.data import QuestionCollator

    device = next(model.parameters()).device
    model.eval()
    features = encode_questions([{"answers": {"text": []}, **r} for r in rows], tokenizer, max_length, doc_stride)
    collate = QuestionCollator(tokenizer)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    starts, ends = [None] * len(features), [None] * len(features)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([features[i] for i in idx])
        for key in ("feature_index", "start_positions", "end_positions"):
            batch.pop(key, None)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(**batch)
        s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        for row, i in enumerate(idx):
            starts[i], ends[i] = s[row], e[row]
    return best_answers(features, starts, ends, [r["context"] for r in rows], **decode)
