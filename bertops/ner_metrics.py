"""Entity-level precision/recall/F1 (seqeval, strict span matching: type and both boundaries must agree)."""

from __future__ import annotations

import warnings

from seqeval.metrics import classification_report
from seqeval.scheme import BILOU, IOB2, IOBES, Entities

SCHEMES = {"BIO": IOB2, "BIOES": IOBES, "BMES": IOBES, "BILOU": BILOU}


def _seqeval_tags(sequences: list[list[str]], scheme: str) -> list[list[str]]:
    """BMES is BIOES with M for I: seqeval reads it as IOBES once M- is spelled I-."""
    if scheme != "BMES":
        return sequences
    return [["I" + t[1:] if t.startswith("M-") else t for t in tags] for tags in sequences]


def entity_scores(gold: list[list[str]], pred: list[list[str]], scheme: str = "BIO") -> dict:
    """Overall micro precision/recall/F1 over entities, and the same per entity type with its support."""
    with warnings.catch_warnings():  # seqeval warns about types with no predictions; those score 0
        warnings.simplefilter("ignore")
        report = classification_report(_seqeval_tags(gold, scheme), _seqeval_tags(pred, scheme), mode="strict",
                                       scheme=SCHEMES[scheme], output_dict=True,
                                       zero_division=0)
    micro = report.pop("micro avg")
    for key in ("macro avg", "weighted avg"):
        report.pop(key, None)
    per_type = {name: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                       "f1": float(v["f1-score"]), "support": int(v["support"])}
                for name, v in sorted(report.items())}
    return {"precision": float(micro["precision"]), "recall": float(micro["recall"]),
            "f1": float(micro["f1-score"]), "entities": int(micro["support"]), "per_type": per_type}


def entity_spans(tags: list[str], scheme: str = "BIO") -> set[tuple[str, int, int]]:
    """The entities a tag sequence marks under strict matching, as (type, start word, end word exclusive)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {entity.to_tuple()[1:] for entity in Entities(_seqeval_tags([tags], scheme), SCHEMES[scheme]).entities[0]}
