"""Stage 2, prepare: validate every row, drop duplicates, seeded train/val/test splits (stratified by label for
sequence classification)."""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict

from sklearn.model_selection import train_test_split

from bertops.config import Params
from bertops.corpora.readers import Example, _decode, _field, _records, detect_format, read_examples
from bertops.corpora.token_readers import read_token_examples
from bertops.errors import CorpusError
from bertops.layout import Layout
from bertops.qa.squad import read_squad
from bertops.modeling import load_tokenizer
from bertops.vocab_coverage import vocab_coverage

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


def random_splits(items: list, split) -> dict[str, list]:
    """Seeded train/val/test shares of `items` (unstratified: sentences, paragraphs, texts)."""
    rest, test_part = train_test_split(items, test_size=split.test, random_state=split.seed)
    train_part, val_part = train_test_split(rest, test_size=split.val / (1 - split.test), random_state=split.seed)
    return {"train": train_part, "val": val_part, "test": test_part}


def prepare(params: Params, layout: Layout) -> dict:
    if params.task.type == "token_classification":
        return prepare_tokens(params, layout)
    if params.task.type == "question_answering":
        return prepare_questions(params, layout)
    if params.task.type == "masked_lm":
        return prepare_texts(params, layout)
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


def tag_order(tags) -> list[str]:
    """O first, then each entity type's tags in scheme order (B, I, E, S)."""
    rank = {"B": 0, "I": 1, "E": 2, "S": 3}
    others = sorted({t for t in tags if t != "O"}, key=lambda t: (t[2:], rank.get(t[0], 9)))
    return ["O", *others]


def prepare_tokens(params: Params, layout: Layout) -> dict:
    corpus, task = params.corpus, params.task
    raw = layout.raw_corpus()
    sentences = read_token_examples(raw, fmt="auto", encoding=corpus.encoding, tokens_column=corpus.tokens_column,
                                    tags_column=corpus.tags_column, scheme=task.tag_scheme, labels=corpus.labels)
    kept, dedup_stats = deduplicate(sentences, key=lambda ex: ex.tokens, target=lambda ex: ex.tags)
    if len(kept) < 3:
        raise CorpusError(raw, None, f"need at least 3 sentences to split, found {len(kept)}")
    splits = random_splits(kept, corpus.split)
    label_names = list(corpus.labels) if corpus.labels else tag_order(t for ex in kept for t in ex.tags)
    if "O" not in label_names:
        raise CorpusError(raw, None, f"corpus.labels must include 'O' for token classification, got {label_names}")

    layout.prepared_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        with layout.split(name).open("w") as out:
            for ex in sorted(splits[name], key=lambda e: e.line):
                out.write(json.dumps({"tokens": ex.tokens, "tags": ex.tags, "line": ex.line},
                                     ensure_ascii=False) + "\n")
    layout.labels_file.write_text(json.dumps(label_names, indent=1) + "\n")

    tokenizer = load_tokenizer(params.model.name_or_path, params.model.revision)
    coverage = vocab_coverage(tokenizer, [list(ex.tokens) for ex in kept])
    layout.vocab_coverage_file.write_text(json.dumps(coverage, indent=1, ensure_ascii=False) + "\n")
    if coverage["unk_word_ratio"] > task.unk_warn_ratio:
        log.warning("%.2f%% of words in %s contain pieces the tokenizer maps to [UNK] (task.unk_warn_ratio is "
                    "%.2f%%); most frequent: %s. Set task.add_unknown_tokens: true to add the uncovered characters "
                    "%s to the vocabulary.", 100 * coverage["unk_word_ratio"], raw,
                    100 * task.unk_warn_ratio, list(coverage["top_unk_words"])[:10],
                    "".join(list(coverage["uncovered_characters"])[:20]))

    def entity_counts(part):
        return dict(sorted(Counter(t[2:] for ex in part for t in ex.tags if t[:1] in ("B", "S")).items()))

    stats = {
        "source": raw.name,
        "sentences": len(sentences),
        "duplicates_dropped": dedup_stats["duplicates_dropped"],
        "conflicting_tag_rows_dropped": dedup_stats["conflicting_label_rows_dropped"],
        "splits": {name: {"sentences": len(part), "tokens": sum(len(ex.tokens) for ex in part),
                          "entities": entity_counts(part)} for name, part in splits.items()},
        "unk_word_ratio": coverage["unk_word_ratio"],
    }
    (layout.prepared_dir / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    log.info("prepared %s", json.dumps(stats))
    return stats


def prepare_questions(params: Params, layout: Layout) -> dict:
    """SQuAD questions, split by paragraph (questions on one context never straddle splits)."""
    corpus = params.corpus
    raw = layout.raw_corpus()
    questions = read_squad(raw, corpus.encoding)
    paragraphs = sorted({q.paragraph for q in questions})
    if len(paragraphs) < 3:
        raise CorpusError(raw, None, f"need at least 3 paragraphs to split by paragraph, found {len(paragraphs)}")
    where = {p: name for name, part in random_splits(paragraphs, corpus.split).items() for p in part}
    layout.prepared_dir.mkdir(parents=True, exist_ok=True)
    outs = {name: layout.split(name).open("w") for name in SPLITS}
    counts = {name: Counter() for name in SPLITS}
    for q in questions:
        name = where[q.paragraph]
        outs[name].write(json.dumps(q.as_row(), ensure_ascii=False) + "\n")
        counts[name]["has_answer" if q.answers else "no_answer"] += 1
    for out in outs.values():
        out.close()
    layout.labels_file.write_text("[]\n")  # extractive QA has no label set
    stats = {"source": raw.name, "questions": len(questions), "paragraphs": len(paragraphs),
             "splits": {name: {"paragraphs": sum(1 for p in where.values() if p == name), **counts[name]}
                        for name in SPLITS}}
    (layout.prepared_dir / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    log.info("prepared %s", json.dumps(stats))
    return stats


def read_texts(path, corpus) -> list[tuple[int, str]]:
    """Unlabelled text: one document or sentence per line (.txt), or the text column of a CSV/TSV/JSONL corpus."""
    if path.suffix == ".txt":
        lines = _decode(path, corpus.encoding).splitlines()
        texts = [(i, line.strip()) for i, line in enumerate(lines, start=1) if line.strip()]
    else:
        texts = []
        for lineno, record in _records(path, detect_format(path), corpus.encoding):
            text = (_field(record, corpus.text_column, path, lineno) or "").strip()
            if not text:
                raise CorpusError(path, lineno, f"empty text in field {corpus.text_column!r}")
            texts.append((lineno, text))
    if not texts:
        raise CorpusError(path, None, "no text: the file is empty")
    return texts


def prepare_texts(params: Params, layout: Layout) -> dict:
    corpus = params.corpus
    raw = layout.raw_corpus()
    texts = read_texts(raw, corpus)
    seen, kept = set(), []
    for line, text in texts:
        if text not in seen:
            seen.add(text)
            kept.append((line, text))
    if len(kept) < 3:
        raise CorpusError(raw, None, f"need at least 3 distinct texts to split, found {len(kept)}")
    splits = random_splits(kept, corpus.split)
    layout.prepared_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        with layout.split(name).open("w") as out:
            for line, text in sorted(splits[name]):
                out.write(json.dumps({"text": text, "line": line}, ensure_ascii=False) + "\n")
    layout.labels_file.write_text("[]\n")  # masked LM: the vocabulary is the label set
    stats = {"source": raw.name, "texts": len(texts), "duplicates_dropped": len(texts) - len(kept),
             "splits": {name: {"texts": len(part), "words": sum(len(t.split()) for _, t in part)}
                        for name, part in splits.items()}}
    (layout.prepared_dir / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    log.info("prepared %s", json.dumps(stats))
    return stats
