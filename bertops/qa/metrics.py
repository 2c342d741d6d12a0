"""Exact match and F1 with the official SQuAD answer normalisation (lower case, no punctuation, no articles,
single spaces); the score of a question is its best over the gold answers; an unanswerable question's only
gold answer is the empty string."""

from __future__ import annotations

import collections
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:  # no-answer: right only if both are empty
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def question_scores(prediction: str, golds: list[str]) -> tuple[float, float]:
    golds = golds or [""]
    return max(exact_match(prediction, g) for g in golds), max(f1(prediction, g) for g in golds)


def squad_scores(predictions: dict[str, str], gold: dict[str, list[str]]) -> dict:
    """Percent-free (0..1) EM and F1 overall, and split by answerable / unanswerable questions."""
    per_question = {qid: question_scores(predictions.get(qid, ""), answers) for qid, answers in gold.items()}
    out = {"exact_match": _mean(s[0] for s in per_question.values()),
           "f1": _mean(s[1] for s in per_question.values()), "questions": len(per_question)}
    for name, keep in (("has_answer", True), ("no_answer", False)):
        subset = [per_question[q] for q, answers in gold.items() if bool(answers) == keep]
        if subset:
            out[f"{name}_exact_match"] = _mean(s[0] for s in subset)
            out[f"{name}_f1"] = _mean(s[1] for s in subset)
            out[f"{name}_questions"] = len(subset)
    return out


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0
