"""Stage 2, prepare: validate every row, drop duplicates, stratified train/val/test splits."""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict

from sklearn.model_selection import train_test_split

from bertops.config import Params
from bertops.corpora.readers import Example, read_examples
from bertops.errors import CorpusError
from bertops.layout import Layout

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def deduplicate(examples: list[Example]) -> tuple[list[Example], dict]:
    """Keep the first of exact duplicates (same text and pair); drop every copy of a text whose copies
    disagree on the label, since no split could hold it honestly."""
    by_key: dict[tuple, list[Example]] = defaultdict(list)
    for ex in examples:
        by_key[(ex.text, ex.text_pair)].append(ex)
    kept, duplicates, conflicting = [], 0, 0
    for group in by_key.values():
        if len({ex.label for ex in group}) > 1:
            conflicting += len(group)
            continue
        kept.append(group[0])
        duplicates += len(group) - 1
    kept.sort(key=lambda ex: ex.line)
    return kept, {"duplicates_dropped": duplicates, "conflicting_label_rows_dropped": conflicting}


def split_examples(examples: list[Example], val: float, test: float, seed: int, source: str):
    labels = [ex.label for ex in examples]
    try:
        rest, test_part = train_test_split(examples, test_size=test, random_state=seed, stratify=labels)
        train_part, val_part = train_test_split(
            rest, test_size=val / (1 - test), random_state=seed, stratify=[ex.label for ex in rest])
    except ValueError as exc:
        counts = dict(Counter(labels))
        raise CorpusError(source, None, f"cannot make stratified splits (label counts {counts}): {exc}") from None
    return {"train": train_part, "val": val_part, "test": test_part}


def prepare(params: Params, layout: Layout) -> dict:
    corpus = params.corpus
    raw = layout.raw_corpus()
    # import named the raw file corpus.<format>, so its suffix says the format
    examples = read_examples(raw, fmt="auto", encoding=corpus.encoding, text_column=corpus.text_column,
                             label_column=corpus.label_column, text_pair_column=corpus.text_pair_column,
                             labels=corpus.labels)
    examples, dedup_stats = deduplicate(examples)
    seen = sorted({ex.label for ex in examples})
    label_names = list(corpus.labels) if corpus.labels else seen
    if len(seen) < 2:
        raise CorpusError(raw, None, f"need at least 2 distinct labels, found {seen}")
    splits = split_examples(examples, corpus.split.val, corpus.split.test, corpus.split.seed, str(raw))

    layout.prepared_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        with layout.split(name).open("w") as out:
            for ex in sorted(splits[name], key=lambda e: e.line):
                row = {"text": ex.text, "label": ex.label, "line": ex.line}
                if ex.text_pair is not None:
                    row["text_pair"] = ex.text_pair
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    layout.labels_file.write_text(json.dumps(label_names, indent=1) + "\n")
    stats = {
        "source": raw.name,
        "rows": len(examples) + dedup_stats["duplicates_dropped"] + dedup_stats["conflicting_label_rows_dropped"],
        **dedup_stats,
        "splits": {name: dict(sorted(Counter(ex.label for ex in splits[name]).items())) for name in SPLITS},
    }
    (layout.prepared_dir / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    log.info("prepared %s", json.dumps(stats))
    return stats
