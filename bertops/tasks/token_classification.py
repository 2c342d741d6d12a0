"""Token classification (NER): one tag per word, learned and predicted on each word's first sub-token, scored on
entity spans (seqeval, strict). Served as the bertops model from code (bertops/tasks/pyfunc.py): a row's words
(or its text cut at whitespace) in, one tag per word and the entity spans out, read at each word's first sub-token
as evaluation read them."""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Literal

import numpy as np
from pydantic import Field
from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

from bertops.tasks.base import Collators, Scored, TaskFamily, TaskParamsBase, class_table_markdown
from bertops.modeling import IGNORE_INDEX

log = logging.getLogger(__name__)


class TokenClassificationTask(TaskParamsBase):
    """One tag per word (NER): labels on each word's first sub-token, entity-level metrics."""

    type: Literal["token_classification"]
    metric: Literal["f1"] = Field("f1", description="entity-level F1 (seqeval, strict span matching)")
    tag_scheme: Literal["BIO", "BIOES", "BMES", "BILOU"] = Field(
        "BIO", description="how tags mark entity spans: BIO; BIOES (E = end, S = single); BMES (M = inside, "
                           "common for Chinese NER); BILOU (L = last, U = unit). Tags are learned and served as "
                           "the corpus writes them")
    unk_warn_ratio: float = Field(
        0.01, ge=0, le=1, description="prepare warns when more than this share of words contain [UNK] pieces")
    add_unknown_tokens: bool = Field(
        False, description="add words the tokenizer maps to [UNK] to the vocabulary and resize the embeddings")


def first_subtoken_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    out, previous = [], None
    for word in word_ids:
        out.append(word_labels[word] if word is not None and word != previous else IGNORE_INDEX)
        previous = word
    return out


def encode_words(rows: list[dict], tokenizer, labels: list[str], max_length: int) -> list[dict]:
    """Each word's tag on its first sub-token, IGNORE_INDEX on the rest. Words cut off by truncation get no
    label (evaluation maps predictions back to all words)."""
    label_ids = {label: i for i, label in enumerate(labels)}
    enc = tokenizer([list(row["tokens"]) for row in rows], is_split_into_words=True, truncation=True,
                    max_length=max_length)
    features = []
    for i, row in enumerate(rows):
        feature = {k: enc[k][i] for k in enc.keys()}
        feature["labels"] = first_subtoken_labels(enc.word_ids(i), [label_ids[t] for t in row["tags"]])
        features.append(feature)
    return features


def tag_order(tags) -> list[str]:
    """O first, then each entity type's tags in span order (B, I/M, E/L, S/U)."""
    rank = {"B": 0, "I": 1, "M": 1, "E": 2, "L": 2, "S": 3, "U": 3}
    others = sorted({t for t in tags if t != "O"}, key=lambda t: (t[2:], rank.get(t[0], 9)))
    return ["O", *others]


def _entity_type(tag: str) -> str:
    return tag if tag == "O" else tag[2:]


def entities_from_tags(text: str, words: list[str], tags: list[str], scores: list[float], scheme: str) -> list[dict]:
    """Entity spans of whitespace-split `words` as character offsets in `text`, with the mean word probability."""
    from bertops.ner_metrics import entity_spans

    starts, cursor = [], 0
    for word in words:
        cursor = text.index(word, cursor)
        starts.append(cursor)
        cursor += len(word)
    out = []
    for kind, first, end in sorted(entity_spans(tags, scheme), key=lambda e: e[1]):
        start, stop = starts[first], starts[end - 1] + len(words[end - 1])
        out.append({"type": kind, "text": text[start:stop], "start": start, "end": stop,
                    "probability": round(sum(scores[first:end]) / (end - first), 4)})
    return out


class TokenClassification(TaskFamily):
    name = "token_classification"
    params = TokenClassificationTask
    auto_model = AutoModelForTokenClassification
    pipeline_task = "token-classification"
    peft_task_type = "TOKEN_CLS"
    class_table_key = "per_type"
    class_kind = "entity type"
    served_packages = ("seqeval",)  # entity spans (bertops.ner_metrics)
    # pipelines/wnut-ner: 3 epochs left entity F1 at 0.10-0.19; 15 let the linear decay finish (README "Measured",
    # benchmarks/results/wnut-schedule-cpu-2026-11-23.json)
    train_defaults = {"epochs": 15, "lr": 1e-4, "head_lr": 1e-3, "warmup_ratio": 0.1, "early_stopping_patience": 5}
    train_defaults_note = "measured on WNUT-16 NER (pipelines/wnut-ner)"
    intended_use = ("Tags every word of a sentence with an entity type (whole-word entities, read at each word's "
                    "first sub-token).")

    def raw_suffix(self, source, corpus):
        from bertops.corpora.token_readers import detect_token_format

        return detect_token_format(source, corpus.format)

    def prepare(self, params, layout):
        from bertops.corpora.splitting import (deduplicate, hash_splits, normalised, write_labels, write_splits,
                                               write_stats)
        from bertops.corpora.token_readers import read_token_examples
        from bertops.errors import CorpusError
        from bertops.modeling import load_tokenizer
        from bertops.vocab_coverage import vocab_coverage

        corpus, task = params.corpus, params.task
        raw, fixed = layout.raw_corpus(), layout.raw_test()

        def read(path):
            sentences = read_token_examples(path, fmt="auto", encoding=corpus.encoding,
                                            tokens_column=corpus.tokens_column, tags_column=corpus.tags_column,
                                            scheme=task.tag_scheme, labels=corpus.labels)
            return sentences, *deduplicate(sentences, key=lambda ex: ex.tokens, target=lambda ex: ex.tags)

        sentences, kept, dedup_stats = read(raw)
        if len(kept) < 3:
            raise CorpusError(raw, None, f"need at least 3 sentences to split, found {len(kept)}")
        # by sentence: its words, normalised
        splits, split_info = hash_splits(kept, lambda ex: normalised(" ".join(ex.tokens)), corpus.split,
                                         read(fixed)[1] if fixed else None)
        label_names = list(corpus.labels) if corpus.labels else tag_order(t for part in splits.values() for ex in part for t in ex.tags)
        if "O" not in label_names:
            raise CorpusError(raw, None, f"corpus.labels must include 'O' for token classification, got {label_names}")
        write_splits(layout, splits, lambda ex: {"tokens": ex.tokens, "tags": ex.tags, "line": ex.line})
        write_labels(layout, label_names)

        tokenizer = load_tokenizer(params.model.name_or_path, params.model.revision)
        coverage = vocab_coverage(tokenizer, [list(ex.tokens) for ex in kept])
        layout.vocab_coverage_file.write_text(json.dumps(coverage, indent=1, ensure_ascii=False) + "\n")
        if coverage["unk_word_ratio"] > task.unk_warn_ratio:
            log.warning("%.2f%% of words in %s contain pieces the tokenizer maps to [UNK] (task.unk_warn_ratio is "
                        "%.2f%%); most frequent: %s. Set task.add_unknown_tokens: true to add the uncovered "
                        "characters %s to the vocabulary.", 100 * coverage["unk_word_ratio"], raw,
                        100 * task.unk_warn_ratio, list(coverage["top_unk_words"])[:10],
                        "".join(list(coverage["uncovered_characters"])[:20]))

        def entity_counts(part):
            return dict(sorted(Counter(t[2:] for ex in part for t in ex.tags if t[:1] in ("B", "S")).items()))

        return write_stats(layout, {
            "source": raw.name,
            "sentences": len(sentences),
            "duplicates_dropped": dedup_stats["duplicates_dropped"],
            "conflicting_tag_rows_dropped": dedup_stats["conflicting_label_rows_dropped"], **split_info,
            "splits": {name: {"sentences": len(part), "tokens": sum(len(ex.tokens) for ex in part),
                              "entities": entity_counts(part)} for name, part in splits.items()},
            "unk_word_ratio": coverage["unk_word_ratio"],
        })

    def load_model(self, params, labels, tokenizer, layout):
        from bertops.modeling import add_tokens

        model, new_params = super().load_model(params, labels, tokenizer, layout)
        if params.task.add_unknown_tokens:
            uncovered = json.loads(layout.vocab_coverage_file.read_text())["uncovered_characters"]
            add_tokens(model, tokenizer, list(uncovered))  # new rows start at the mean embedding, train at lr
        return model, new_params

    def encode(self, rows, tokenizer, labels, params):
        return encode_words(rows, tokenizer, labels, params.model.max_length)

    def collators(self, tokenizer, params):
        from bertops.training.module import auto_pad_multiple

        return Collators(DataCollatorForTokenClassification(tokenizer,
                                                            pad_to_multiple_of=auto_pad_multiple(params.train)))

    def build_module(self, model, new_params, params):
        from bertops.training.heads.token_classification import TokenClassifier

        return TokenClassifier(model, new_params, params.train, params.task.tag_scheme, finetune=params.finetune)

    def score(self, params, layout, labels, rows):
        from sklearn.metrics import confusion_matrix

        from bertops.inference import predict_word_tags
        from bertops.ner_metrics import entity_scores, entity_spans

        model, tokenizer = self.load_for_scoring(layout)
        scheme = params.task.tag_scheme
        gold = [list(r["tags"]) for r in rows]
        pred = predict_word_tags(model, tokenizer, [list(r["tokens"]) for r in rows],
                                 max_length=params.model.max_length, batch_size=params.train.eval_batch_size)
        metrics = entity_scores(gold, pred, scheme)
        metrics["sentences"] = len(rows)
        metrics["word_accuracy"] = float(np.mean([g == p for gs, ps in zip(gold, pred) for g, p in zip(gs, ps)]))
        # per sentence: enough to recompute entity F1 on a bootstrap resample of sentences
        predictions = []
        for row, gs, ps in zip(rows, gold, pred):
            gold_spans, pred_spans = entity_spans(gs, scheme), entity_spans(ps, scheme)
            predictions.append({"line": row["line"], "predicted": ps, "gold_entities": len(gold_spans),
                                "predicted_entities": len(pred_spans),
                                "correct_entities": len(gold_spans & pred_spans), "correct": ps == gs})
        types = ["O", *sorted({_entity_type(t) for t in labels} - {"O"})]
        type_ids = {t: i for i, t in enumerate(types)}
        flat_gold = [type_ids[_entity_type(t)] for gs in gold for t in gs]
        flat_pred = [type_ids[_entity_type(t)] for ps in pred for t in ps]
        return Scored(metrics, predictions, confusion_matrix(flat_gold, flat_pred, labels=list(range(len(types)))),
                      types, title="test confusion matrix (words, by entity type)")

    def statistic(self, metric, rows):
        """Entity F1: micro over entities, from per-sentence counts."""
        gold, pred, correct = (np.array([r[k] for r in rows], dtype=float)
                               for k in ("gold_entities", "predicted_entities", "correct_entities"))

        def entity_f1(idx):
            denominator = gold[idx].sum(axis=1) + pred[idx].sum(axis=1)
            return np.where(denominator > 0, 2 * correct[idx].sum(axis=1) / np.maximum(denominator, 1e-12), 0.0)
        return entity_f1

    def baseline(self, metric, rows):
        return 0.0  # all "O": no entity found, F1 0

    # ---- registering, serving, predicting ---------------------------------------------------------------------
    def example_input(self, row):
        return {"words": list(row["tokens"])}

    def input_columns(self, params):
        # a row gives its words (what evaluation scored: the corpus's own tokens) or a text cut at whitespace
        return {"words": False, "text": False}

    def input_schema(self, params):
        from mlflow.types import ColSpec, DataType, Schema
        from mlflow.types.schema import Array

        return Schema([ColSpec(Array(DataType.string), "words", required=False),
                       ColSpec(DataType.string, "text", required=False)])

    def serve_config(self, params):
        return {**super().serve_config(params), "tag_scheme": params.task.tag_scheme}

    def validate_rows(self, rows, config):
        """Each row: `words`, a list of non-blank strings without whitespace (the tokens evaluation scored), or
        `text`, cut at whitespace into words."""
        out = []
        for i, row in enumerate(rows):
            row = {"text": row} if isinstance(row, str) else row
            if not isinstance(row, dict):
                raise ValueError(f"row {i}: expected an object with 'words' (a list of strings) or 'text'")
            words, text = row.get("words"), row.get("text")
            if words is not None:
                words = list(words) if not isinstance(words, str) else None
                if not words or not all(isinstance(w, str) and w.strip() and not any(c.isspace() for c in w)
                                        for w in words):
                    raise ValueError(f"row {i}: 'words' must be a non-empty list of words (strings without "
                                     f"whitespace)")
                out.append({"words": words, "text": " ".join(words)})
            elif isinstance(text, str) and text.strip():
                out.append({"words": text.split(), "text": text})
            else:
                raise ValueError(f"row {i}: give 'words' (a list of strings) or a non-empty 'text'")
        if not out:
            raise ValueError("the request has no rows")
        return out

    def serve(self, model, tokenizer, rows, config):
        """One tag per word, read at the word's first sub-token (as `score` reads the test split's words), and
        the entity spans, with character offsets in the text (the words joined by single spaces)."""
        import pandas as pd

        from bertops.inference import predict_word_tags

        sentences = [r["words"] for r in rows]
        tags, scores = predict_word_tags(model, tokenizer, sentences, max_length=config["max_length"],
                                         with_scores=True)
        scheme = config.get("tag_scheme", "BIO")
        return pd.DataFrame({"tags": tags, "entities": [entities_from_tags(r["text"], w, g, s, scheme)
                                                        for r, w, g, s in zip(rows, sentences, tags, scores)]})

    def predict_inputs(self, texts, pairs):
        from bertops.errors import BertopsError

        if pairs:
            raise BertopsError("predict --pairs: this is a token-classification model; give one text per input")
        return [{"text": t} for t in texts]

    def predict(self, loaded, inputs, params):
        if hasattr(loaded, "tokenizer"):  # a version registered as a transformers pipeline (before 2026-12-02)
            texts = [x["text"] for x in inputs]
            outputs = loaded(texts, batch_size=64, aggregation_strategy="first")
            return [{"text": t, "entities": [{"type": e["entity_group"], "text": t[e["start"]:e["end"]],
                                              "start": int(e["start"]), "end": int(e["end"]),
                                              "probability": round(float(e["score"]), 4)} for e in entities]}
                    for t, entities in zip(texts, outputs)]
        return [{"text": x["text"], "entities": list(r["entities"])}
                for x, r in zip(inputs, super().predict(loaded, inputs, params))]

    def format_row(self, row):
        found = "  ".join(f"[{e['type']}: {e['text']} {e['probability']:.2f}]" for e in row["entities"])
        return f"{row['text']}\n    {found or '(no entities)'}"

    # ---- model card -----------------------------------------------------------------------------------------
    def example_count(self, metrics):
        return metrics.get("sentences")

    def metrics_markdown(self, metrics):
        head = (f"entity F1 {metrics['f1']:.4f} (precision {metrics['precision']:.4f}, recall "
                f"{metrics['recall']:.4f}, {metrics['entities']} entities)")
        return f"{head}\n\n{class_table_markdown(self.class_kind, metrics['per_type'])}"

    def limitations(self, params, layout, metrics):
        notes = super().limitations(params, layout, metrics)
        if layout.vocab_coverage_file.is_file():
            share = json.loads(layout.vocab_coverage_file.read_text()).get("unk_word_ratio")
            if share is not None:
                notes.append(f"{share:.2%} of the training words map to [UNK] in this tokenizer.")
        return notes
