"""Contexts longer than the max length become overlapping windows (`doc_stride` tokens of overlap); answers are
mapped to token positions through the offsets, and predictions are decoded back to context characters by taking
the best start/end over every window of a question."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from bertops.errors import BertopsError

CLS_INDEX = 0  # the no-answer position: a window that does not hold the answer points both ends here


def encode_questions(rows: list[dict], tokenizer, max_length: int, doc_stride: int) -> list[dict]:
    """One feature per window. Model inputs plus `start_positions`/`end_positions`, and for decoding:
    `feature_index` (travels with the batch), `example_index` and `offset_mapping` (character spans for context
    tokens, None elsewhere)."""
    if not getattr(tokenizer, "is_fast", False):
        raise BertopsError("question answering needs a fast tokenizer (offsets); this model's tokenizer is slow")
    enc = tokenizer([r["question"].lstrip() for r in rows], [r["context"] for r in rows],
                    truncation="only_second", max_length=max_length, stride=doc_stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    features = []
    for i, example_index in enumerate(enc["overflow_to_sample_mapping"]):
        sequence_ids = enc.sequence_ids(i)
        offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], sequence_ids)]
        feature = {k: enc[k][i] for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}
        answers = rows[example_index]["answers"]
        start_pos = end_pos = CLS_INDEX
        if answers["text"]:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            context_tokens = [t for t, o in enumerate(offsets) if o is not None]
            first, last = context_tokens[0], context_tokens[-1]
            if offsets[first][0] <= start_char and offsets[last][1] >= end_char:  # answer inside this window
                start_pos = next(t for t in context_tokens if offsets[t][1] > start_char)
                end_pos = next(t for t in reversed(context_tokens) if offsets[t][0] < end_char)
        feature.update(start_positions=start_pos, end_positions=end_pos, feature_index=i,
                       example_index=int(example_index), offset_mapping=offsets)
        features.append(feature)
    return features


def best_answers(features: list[dict], start_logits: list[np.ndarray], end_logits: list[np.ndarray],
                 contexts: list[str], *, n_best: int = 20, max_answer_length: int = 30,
                 allow_no_answer: bool = False, null_threshold: float = 0.0) -> list[str]:
    """The best answer text per question (index = example_index); "" = no answer. A span is valid when both ends
    are context tokens of the same window, end >= start, and it is at most `max_answer_length` tokens long."""
    by_example = defaultdict(list)
    for i, feature in enumerate(features):
        by_example[feature["example_index"]].append(i)
    answers = [""] * len(contexts)
    for example, indices in by_example.items():
        best_score, best_span, null_score = -np.inf, None, np.inf
        for i in indices:
            starts, ends, offsets = start_logits[i], end_logits[i], features[i]["offset_mapping"]
            null_score = min(null_score, float(starts[CLS_INDEX] + ends[CLS_INDEX]))
            for s in np.argsort(starts)[::-1][:n_best]:
                if s >= len(offsets) or offsets[s] is None:
                    continue
                for e in np.argsort(ends)[::-1][:n_best]:
                    if e >= len(offsets) or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(starts[s] + ends[e])
                    if score > best_score:
                        best_score, best_span = score, (offsets[s][0], offsets[e][1])
        if best_span is not None:
            answers[example] = contexts[example][best_span[0]:best_span[1]]
        if allow_no_answer and (best_span is None or null_score > best_score + null_threshold):
            answers[example] = ""
    return answers
