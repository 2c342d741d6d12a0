"""BERT's masking: select ~`probability` of the (non-special) tokens, then replace 80% of them with [MASK], 10%
with a random token and keep 10% (the default proportions). Units of selection: single tokens, whole words (all
sub-tokens of a word together) or spans of whole words with geometric lengths (SpanBERT: mean ~3.8, at most 10).
Labels hold the original ids at selected positions and IGNORE_INDEX elsewhere."""

from __future__ import annotations

import hashlib
import random

from bertops.modeling import IGNORE_INDEX

MAX_SPAN_WORDS = 10


def _units(word_ids: list[int | None], special: list[int], masking: str) -> list[list[int]]:
    """Groups of positions that are masked together (token: one position; word/span: a word's positions)."""
    if masking == "token":
        return [[i] for i, s in enumerate(special) if not s]
    words: dict[int, list[int]] = {}
    for i, (w, s) in enumerate(zip(word_ids, special)):
        if not s and w is not None:
            words.setdefault(w, []).append(i)
    return [words[w] for w in sorted(words)]


def select_positions(word_ids: list[int | None], special: list[int], rng: random.Random, *, probability: float,
                     masking: str, span_mean: float = 3.0) -> list[int]:
    units = _units(word_ids, special, masking)
    n_tokens = sum(len(u) for u in units)
    if n_tokens == 0:
        return []
    budget = max(1, round(n_tokens * probability))
    chosen: set[int] = set()
    if masking == "span":
        p = 1.0 / span_mean
        tries = 0
        while len(chosen) < budget and tries < 100:
            tries += 1
            length = 1
            while rng.random() > p and length < MAX_SPAN_WORDS:  # geometric, clipped
                length += 1
            start = rng.randrange(len(units))
            for unit in units[start:start + length]:
                if len(chosen) >= budget:
                    break
                chosen.update(unit)
        return sorted(chosen)
    order = list(range(len(units)))
    rng.shuffle(order)
    for u in order:
        if len(chosen) >= budget:
            break
        chosen.update(units[u])
    return sorted(chosen)


def mask_example(input_ids: list[int], word_ids: list[int | None], special: list[int], rng: random.Random, *,
                 probability: float, masking: str, mask_id: int, vocab_size: int, replace_prob: float = 0.8,
                 random_prob: float = 0.1, span_mean: float = 3.0, random_pool: list[int] | None = None):
    """Returns (masked input ids, labels)."""
    ids, labels = list(input_ids), [IGNORE_INDEX] * len(input_ids)
    for i in select_positions(word_ids, special, rng, probability=probability, masking=masking,
                              span_mean=span_mean):
        labels[i] = input_ids[i]
        r = rng.random()
        if r < replace_prob:
            ids[i] = mask_id
        elif r < replace_prob + random_prob:
            ids[i] = rng.choice(random_pool) if random_pool else rng.randrange(vocab_size)
        # else: kept as is, but still predicted
    return ids, labels


class MaskingCollator:
    """Masks each example when its batch is formed: a fresh draw every time for training (dynamic masking), or
    the same draw for an example every time (`fixed`: seeded by the masking seed and the example's own text, not
    its position or the training seed) so that validation and test perplexities compare across epochs, model
    versions and growing corpora."""

    def __init__(self, tokenizer, *, probability: float, masking: str, replace_prob: float, random_prob: float,
                 span_mean: float, seed: int, fixed: bool = False, pad_to_multiple_of: int | None = 8):
        self.tokenizer, self.fixed, self.seed, self.multiple = tokenizer, fixed, seed, pad_to_multiple_of or 1
        self.options = dict(probability=probability, masking=masking, replace_prob=replace_prob,
                            random_prob=random_prob, span_mean=span_mean, mask_id=tokenizer.mask_token_id,
                            vocab_size=len(tokenizer))
        special = set(tokenizer.all_special_ids)
        self.random_pool = [i for i in range(len(tokenizer)) if i not in special]
        self.rng = random.Random(seed)

    def __call__(self, features):
        import torch

        rows = []
        for f in features:
            rng = random.Random(f"{self.seed}:{f['text_key']}") if self.fixed else self.rng
            ids, labels = mask_example(f["input_ids"], f["word_ids"], f["special_tokens_mask"], rng,
                                       random_pool=self.random_pool, **self.options)
            rows.append((ids, labels, f))
        width = -(-max(len(r[0]) for r in rows) // self.multiple) * self.multiple
        pad = self.tokenizer.pad_token_id
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        has_types = "token_type_ids" in features[0]
        if has_types:
            batch["token_type_ids"] = []
        for ids, labels, f in rows:
            extra = width - len(ids)
            batch["input_ids"].append(ids + [pad] * extra)
            batch["attention_mask"].append([1] * len(ids) + [0] * extra)
            batch["labels"].append(labels + [IGNORE_INDEX] * extra)
            if has_types:
                batch["token_type_ids"].append(f["token_type_ids"] + [0] * extra)
        return {k: torch.tensor(v) for k, v in batch.items()}


def encode_texts(rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length,
                    return_special_tokens_mask=True)
    features = []
    for i in range(len(rows)):
        feature = {k: enc[k][i] for k in ("input_ids", "token_type_ids", "special_tokens_mask") if k in enc}
        feature["word_ids"] = enc.word_ids(i)
        feature["example_index"] = i
        feature["text_key"] = hashlib.sha256(rows[i]["text"].encode()).hexdigest()[:16]  # what fixes its masks
        features.append(feature)
    return features
