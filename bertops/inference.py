"""Batched inference with a saved model: length-sorted batches (least padding), bf16 on a GPU, original order
restored by each caller from the batch's indices."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch


def outputs_by_length(model, features: list[dict], collate, batch_size: int, bf16: bool | None = None):
    """Yields (indices into `features`, model output) over batches of features of similar length. `bf16`: autocast
    to bfloat16; None = on a GPU only, so that CPU evaluations stay in float32 and compare with earlier ones
    (`bertops predict` opts in on an AMX CPU: about 2x there, benchmarks/predict_throughput.py)."""
    device = next(model.parameters()).device
    bf16 = device.type == "cuda" if bf16 is None else bf16
    model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device, non_blocking=True) for k, v in collate([features[i] for i in idx]).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            yield idx, model(**batch)


def encoded(enc, n: int) -> list[dict]:
    return [{k: enc[k][i] for k in enc.keys()} for i in range(n)]


def top_labels(model, probs) -> list[tuple[str, float]]:
    """Each row's most probable label (by the model's id2label) and its probability."""
    id2label = {int(i): label for i, label in model.config.id2label.items()}
    return [(id2label[int(p.argmax())], float(p.max())) for p in probs]


LONG_TEXT_POLICIES = ("truncate", "head_tail")
HEAD_SHARE = 0.25  # head_tail: Sun et al. 2019 keep the first 128 and the last 382 of 510 tokens


def encode_texts(tokenizer, texts: list[str], pairs: list[str] | None = None, *, max_length: int,
                 long_text: str = "truncate"):
    """Token ids of texts (or text pairs) at most `max_length` long, special tokens included: what training,
    evaluation and the served model all feed the encoder.

    - truncate: the first tokens (a pair: the longer side cut first);
    - head_tail: a single text longer than that keeps its first quarter and its last three quarters of the
      budget (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification?": head 128 + tail 382 of 510
      beat the head or the tail alone on long reviews); pairs are cut as with truncate."""
    if long_text not in LONG_TEXT_POLICIES:
        raise ValueError(f"long_text: {long_text!r} (allowed: {', '.join(LONG_TEXT_POLICIES)})")
    if long_text == "truncate" or pairs is not None:
        return tokenizer(texts, pairs, truncation="longest_first", max_length=max_length)
    # cut the text itself at token boundaries (offsets), then encode it as any text: the tokenizer adds its own
    # special tokens (transformers 5 has no public way to wrap given ids), and a piece that began mid-word is
    # read as a word start; truncation keeps the result within max_length whatever the re-tokenization gives
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    head = int(budget * HEAD_SHARE)
    pieces = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    cut = []
    for text, ids, offsets in zip(texts, pieces["input_ids"], pieces["offset_mapping"]):
        if len(ids) <= budget:
            cut.append(text)
            continue
        head_end, tail_start = offsets[head - 1][1], offsets[len(ids) - (budget - head)][0]
        cut.append(text[:head_end] + " " + text[tail_start:])
    return tokenizer(cut, truncation=True, max_length=max_length)


@torch.inference_mode()
def sequence_logits(model, tokenizer, texts: list[str], pairs: list[str] | None = None, *, max_length: int,
                    batch_size: int = 128, bf16: bool | None = None, long_text: str = "truncate") -> np.ndarray:
    """One row of head outputs per text (or text pair), cut at `max_length` by the long-text policy, as in
    training (`encode_texts`)."""
    enc = encode_texts(tokenizer, texts, pairs, max_length=max_length, long_text=long_text)
    logits = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    pad = partial(tokenizer.pad, return_tensors="pt")
    for idx, out in outputs_by_length(model, encoded(enc, len(texts)), pad, batch_size, bf16):
        logits[idx] = out.logits.float().cpu().numpy()
    return logits


def predict_proba(model, tokenizer, texts: list[str], pairs: list[str] | None = None, *, max_length: int,
                  batch_size: int = 128, bf16: bool | None = None, long_text: str = "truncate") -> np.ndarray:
    logits = torch.from_numpy(sequence_logits(model, tokenizer, texts, pairs, max_length=max_length,
                                              batch_size=batch_size, bf16=bf16, long_text=long_text))
    return torch.softmax(logits, dim=-1).numpy()


def row_pairs(rows: list[dict]) -> list[str] | None:
    """The rows' second texts when every row has one (a sentence-pair model), else None."""
    pairs = [r.get("text_pair") for r in rows]
    return pairs if rows and all(isinstance(p, str) for p in pairs) else None


@torch.inference_mode()
def predict_word_tags(model, tokenizer, sentences: list[list[str]], *, max_length: int, batch_size: int = 128,
                      with_scores: bool = False):
    """Token classification: one tag per word, read at the word's first sub-token. Words past `max_length`
    (cut off by truncation) get "O", so every word of the input has a prediction. With `with_scores`, also each
    word's tag probability: returns (tags, scores)."""
    id2label = {int(i): label for i, label in model.config.id2label.items()}
    enc = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length)
    tags: list[list[str]] = [["O"] * len(words) for words in sentences]
    scores: list[list[float]] = [[1.0] * len(words) for words in sentences]
    pad = partial(tokenizer.pad, return_tensors="pt")
    for idx, out in outputs_by_length(model, encoded(enc, len(sentences)), pad, batch_size):
        best, labels = torch.softmax(out.logits.float(), dim=-1).max(-1)
        for row, probs, i in zip(labels.cpu().tolist(), best.cpu().tolist(), idx):
            previous = None
            for position, word in enumerate(enc.word_ids(i)):
                if word is not None and word != previous:
                    tags[i][word] = id2label[row[position]]
                    scores[i][word] = probs[position]
                previous = word
    return (tags, scores) if with_scores else tags
