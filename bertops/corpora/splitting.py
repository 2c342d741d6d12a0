"""What every family's prepare shares: dropping duplicates, seeded splits, writing the split files and stats."""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict

from sklearn.model_selection import train_test_split

from bertops.errors import CorpusError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def deduplicate(examples: list, key=lambda ex: (ex.text, ex.text_pair), target=lambda ex: ex.label):
    """Keep the first of exact duplicates (same input: text and pair, or tokens); drop every copy of an input
    whose copies disagree on the label (or tags), since no split could hold it honestly."""
    by_key: dict[tuple, list] = defaultdict(list)
    for ex in examples:
        by_key[key(ex)].append(ex)
    kept, duplicates, conflicting = [], 0, 0
    for group in by_key.values():
        if len({target(ex) for ex in group}) > 1:
            conflicting += len(group)
            continue
        kept.append(group[0])
        duplicates += len(group) - 1
    kept.sort(key=lambda ex: ex.line)
    return kept, {"duplicates_dropped": duplicates, "conflicting_label_rows_dropped": conflicting}


def stratified_splits(examples: list, strata: list, split, source: str) -> dict[str, list]:
    """Seeded train/val/test shares of `examples`, stratified by `strata` (one value per example)."""
    try:
        rest, test_part, rest_strata, _ = train_test_split(examples, strata, test_size=split.test,
                                                           random_state=split.seed, stratify=strata)
        train_part, val_part = train_test_split(rest, test_size=split.val / (1 - split.test),
                                                random_state=split.seed, stratify=rest_strata)
    except ValueError as exc:
        counts = dict(Counter(strata))
        raise CorpusError(source, None, f"cannot make stratified splits (counts per stratum {counts}): {exc}") from None
    return {"train": train_part, "val": val_part, "test": test_part}


def random_splits(items: list, split) -> dict[str, list]:
    """Seeded train/val/test shares of `items` (unstratified: sentences, paragraphs, texts)."""
    rest, test_part = train_test_split(items, test_size=split.test, random_state=split.seed)
    train_part, val_part = train_test_split(rest, test_size=split.val / (1 - split.test), random_state=split.seed)
    return {"train": train_part, "val": val_part, "test": test_part}


def write_splits(layout, splits: dict[str, list], row, order=lambda ex: ex.line) -> None:
    """One JSONL file per split, rows in corpus order; `row(example)` is the prepared row."""
    layout.prepared_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        with layout.split(name).open("w") as out:
            for ex in sorted(splits[name], key=order):
                out.write(json.dumps(row(ex), ensure_ascii=False) + "\n")


def write_labels(layout, labels: list[str]) -> None:
    layout.labels_file.write_text(json.dumps(labels, indent=1) + "\n")


def write_stats(layout, stats: dict) -> dict:
    (layout.prepared_dir / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    log.info("prepared %s", json.dumps(stats))
    return stats
