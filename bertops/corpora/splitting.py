"""What every family's prepare shares: dropping duplicates, content-hash splits (an example's split depends on
its own content only, so that a growing corpus never moves it), writing the split files and stats."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def read_split(path: Path) -> list[dict]:
    """A prepared split (data/prepared/<split>.jsonl): one row per line."""
    with Path(path).open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


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


def normalised(text: str) -> str:
    """What makes two texts the same example for splitting: Unicode NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_key(ex) -> str:
    """The split key of a text row: its `corpus.group_column` value when the corpus has one (rows of one group
    stay together), else its normalised text (and pair)."""
    group = getattr(ex, "group", None)
    if group is not None:
        return "group:" + group
    pair = getattr(ex, "text_pair", None)
    return normalised(ex.text) + ("\t" + normalised(pair) if pair is not None else "")


def hash_share(key: str, salt: int) -> float:
    """A uniform number in [0, 1) that depends on the key and the salt only."""
    digest = hashlib.sha256(f"bertops-split\x00{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def split_of(key: str, split, fixed_test: bool = False) -> str:
    """The split of an example with this key: a function of the key, the shares and the salt (`split.seed`)
    only, so that adding, removing or reordering other rows never moves it. With a fixed test file, the corpus
    fills train and val only, in the same val : train proportion."""
    u = hash_share(key, split.seed)
    if fixed_test:
        return "val" if u < split.val / (1 - split.test) else "train"
    return "test" if u < split.test else "val" if u < split.test + split.val else "train"


def hash_splits(items: list, key, split, fixed_test: list | None = None) -> tuple[dict[str, list], dict]:
    """train/val/test of `items` by the hash of `key(item)` (`split_of`). `fixed_test`: the items of the user's
    own test file (corpus.test_source): they are the test split as they are, and corpus items with a key among
    theirs are kept out of train and val. Returns the splits and what was dropped."""
    splits: dict[str, list] = {name: [] for name in SPLITS}
    info = {}
    if fixed_test is None:
        for item in items:
            splits[split_of(key(item), split)].append(item)
        return splits, info
    held = {key(item) for item in fixed_test}
    splits["test"] = list(fixed_test)
    dropped = 0
    for item in items:
        k = key(item)
        if k in held:
            dropped += 1
            continue
        splits[split_of(k, split, fixed_test=True)].append(item)
    info["rows_in_test_source_dropped"] = dropped
    return splits, info


def share_report(splits: dict[str, list], strata, source, what: str = "label") -> dict:
    """Each split's share of every stratum (label, target bin) next to the corpus's, warning when a split is
    far off: hash splits are stratified only in expectation. `strata(item)` -> the item's strata (one or more)."""
    counts = {name: Counter(s for item in part for s in strata(item)) for name, part in splits.items()}
    total = Counter()
    for c in counts.values():
        total.update(c)
    sizes = {name: len(part) for name, part in splits.items()}
    n_all = sum(sizes.values())
    shares, warnings = {}, []
    for name in SPLITS:
        n = sizes[name]
        shares[name] = {s: round(counts[name][s] / n, 4) if n else 0.0 for s in sorted(total, key=str)}
        if n < 20:
            continue  # too few examples for a share to mean anything
        for s in total:
            p = total[s] / n_all
            # three standard errors of a share of n examples, plus one example's worth of rounding
            if abs(counts[name][s] / n - p) > 3 * math.sqrt(p * (1 - p) / n) + 1 / n:
                warnings.append(f"{name} has {counts[name][s] / n:.1%} {what} {s!r} against {p:.1%} in the "
                                f"corpus ({n} examples)")
    for warning in warnings:
        log.warning("%s: %s (splits are by content hash; a fixed corpus.test_source or another "
                    "corpus.split.seed gives other shares)", source, warning)
    return {"shares": shares, "overall": {s: round(total[s] / n_all, 4) for s in sorted(total, key=str)},
            "share_warnings": warnings}


def text_row(ex, **target) -> dict:
    """A prepared row of a text task: the text (and pair), the family's target fields and the source line."""
    out = {"text": ex.text, **target, "line": ex.line}
    if getattr(ex, "text_pair", None) is not None:
        out["text_pair"] = ex.text_pair
    return out


def write_splits(layout, splits: dict[str, list], row, order=lambda ex: ex.line) -> None:
    """One JSONL file per split, rows in corpus order; `row(example)` is the prepared row."""
    from bertops.errors import CorpusError

    empty = [name for name in SPLITS if not splits[name]]
    if empty:
        sizes = ", ".join(f"{name} {len(splits[name])}" for name in SPLITS)
        raise CorpusError(layout.raw_dir, None, f"the {' and '.join(empty)} split would be empty ({sizes} examples "
                                                "by content hash): the corpus has too few examples or groups for "
                                                "corpus.split's shares; add rows, raise the shares, or try another "
                                                "corpus.split.seed")
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
