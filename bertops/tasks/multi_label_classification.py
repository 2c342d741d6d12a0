"""Multi-label classification: any number of labels per text (or text pair), a sigmoid per label and a binary
cross-entropy loss. One decision threshold per label is chosen on the validation split (or `task.threshold` for
all); micro/macro F1, per-label precision/recall/F1 and subset accuracy are reported. The label column holds a
list (JSONL) or a cell split by `corpus.label_separator` (CSV/TSV). Registered as a bertops pyfunc model."""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from transformers import AutoModelForSequenceClassification

from bertops.tasks.base import Scored, TaskFamily, TaskParamsBase, class_table_markdown, mean_statistic

THRESHOLDS_KEY = "bertops_thresholds"  # in the checkpoint's config.json: label -> decision threshold
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


class MultiLabelTask(TaskParamsBase):
    """Any number of labels per text: a sigmoid per label, BCE loss, per-label thresholds."""

    type: Literal["multi_label_classification"]
    metric: Literal["micro_f1", "macro_f1", "subset_accuracy"] = Field(
        "micro_f1", description="selects the best epoch, stops early and gates promotion")
    threshold: float | None = Field(
        None, gt=0, lt=1, description="one decision threshold for every label; null = one per label, chosen on "
                                      "the validation split to maximise its F1")


def f1_counts(gold: np.ndarray, pred: np.ndarray) -> dict:
    """gold, pred: (examples x labels) booleans -> micro/macro F1, subset accuracy, per-label table."""
    tp = (gold & pred).sum(axis=0)
    fp = (~gold & pred).sum(axis=0)
    fn = (gold & ~pred).sum(axis=0)

    def f1(t, p, n):
        return np.where(2 * t + p + n > 0, 2 * t / np.maximum(2 * t + p + n, 1), 0.0)
    return {"tp": tp, "fp": fp, "fn": fn, "per_label_f1": f1(tp, fp, fn),
            "micro_f1": float(f1(tp.sum(), fp.sum(), fn.sum())),
            "macro_f1": float(f1(tp, fp, fn).mean()) if len(tp) else 0.0,
            "subset_accuracy": float((gold == pred).all(axis=1).mean()) if len(gold) else 0.0}


def choose_thresholds(probs: np.ndarray, gold: np.ndarray, fixed: float | None) -> np.ndarray:
    """Per label, the grid threshold with the best F1 on these (validation) examples; ties take the one nearest
    0.5; a label never seen positive keeps 0.5."""
    if fixed is not None:
        return np.full(probs.shape[1], fixed)
    out = np.full(probs.shape[1], 0.5)
    for k in range(probs.shape[1]):
        if not gold[:, k].any():
            continue
        scores = [(f1_counts(gold[:, [k]], probs[:, [k]] >= t)["micro_f1"], -abs(t - 0.5), t) for t in THRESHOLD_GRID]
        out[k] = max(scores)[2]
    return out


def read_label_sets(path, corpus) -> list:
    """(line, text, text_pair, labels tuple, group) per row; a list in JSONL, or a cell split by corpus.label_separator."""
    from bertops.corpora.readers import _field, _records, detect_format
    from bertops.errors import CorpusError

    allowed = set(corpus.labels) if corpus.labels else None
    rows = []
    for line, record in _records(path, detect_format(path), corpus.encoding):
        text = _field(record, corpus.text_column, path, line).strip()
        if not text:
            raise CorpusError(path, line, f"empty text in field {corpus.text_column!r}")
        pair = None
        if corpus.text_pair_column:
            pair = _field(record, corpus.text_pair_column, path, line).strip()
            if not pair:
                raise CorpusError(path, line, f"empty text in field {corpus.text_pair_column!r}")
        if corpus.label_column not in record or record[corpus.label_column] is None:
            raise CorpusError(path, line, f"missing field {corpus.label_column!r}")
        value = record[corpus.label_column]
        if isinstance(value, str):
            labels = [part.strip() for part in value.split(corpus.label_separator) if part.strip()]
        elif isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            labels = [str(v).strip() for v in value]
        else:
            raise CorpusError(path, line, f"field {corpus.label_column!r} must be a list of labels or a text "
                                          f"separated by {corpus.label_separator!r}, got {type(value).__name__}")
        for label in labels:
            if allowed is not None and label not in allowed:
                raise CorpusError(path, line, f"unknown label {label!r} (corpus.labels allows: {corpus.labels})")
        group = _field(record, corpus.group_column, path, line) if corpus.group_column else None
        rows.append((line, text, pair, tuple(sorted(set(labels))), group))
    if not rows:
        raise CorpusError(path, None, "no examples: the file is empty or has only a header")
    return rows


class MultiLabelClassification(TaskFamily):
    name = "multi_label_classification"
    params = MultiLabelTask
    auto_model = AutoModelForSequenceClassification
    pipeline_task = "text-classification"  # recorded in lineage; served by the bertops pyfunc model
    peft_task_type = "SEQ_CLS"
    class_table_key = "per_class"
    class_kind = "label"
    intended_use = ("Assigns every label below whose probability passes its threshold to a sentence (or a sentence "
                    "pair), from the encoder's [CLS] representation with one sigmoid per label.")

    def prepare(self, params, layout):
        from types import SimpleNamespace

        from bertops.corpora.splitting import (SPLITS, deduplicate, hash_splits, share_report, text_key, text_row,
                                               write_labels, write_splits, write_stats)
        from bertops.errors import CorpusError

        corpus = params.corpus
        raw, fixed = layout.raw_corpus(), layout.raw_test()

        def read(path):
            return deduplicate([SimpleNamespace(line=line, text=text, text_pair=pair, labels=labels, group=group)
                                for line, text, pair, labels, group in read_label_sets(path, corpus)],
                               target=lambda ex: ex.labels)

        kept, dedup_stats = read(raw)
        if len(kept) < 10:
            raise CorpusError(raw, None, f"need at least 10 distinct texts to split, found {len(kept)}")
        splits, split_info = hash_splits(kept, text_key, corpus.split, read(fixed)[0] if fixed else None)
        names = list(corpus.labels) if corpus.labels else sorted(
            {label for part in splits.values() for ex in part for label in ex.labels})
        if len(names) < 2:
            raise CorpusError(raw, None, f"need at least 2 distinct labels, found {names}")
        write_splits(layout, splits, lambda ex: text_row(ex, labels=list(ex.labels)))
        write_labels(layout, names)
        return write_stats(layout, {
            "source": raw.name, "rows": len(kept) + sum(dedup_stats.values()), **dedup_stats, **split_info,
            "splits": {name: {"examples": len(splits[name]),
                              "labels": dict(sorted(Counter(lb for ex in splits[name] for lb in ex.labels).items())),
                              "mean_labels_per_example": round(float(np.mean([len(ex.labels) for ex in splits[name]]
                                                                             or [0])), 3)}
                       for name in SPLITS},
            "label_shares": share_report(splits, lambda ex: ex.labels, raw)})

    def head_kwargs(self, labels):
        return {**super().head_kwargs(labels), "problem_type": "multi_label_classification"}

    def encode(self, rows, tokenizer, labels, params):
        from bertops.tasks.sequence_classification import encode_text_rows

        return encode_text_rows(rows, tokenizer, params.model.max_length,
                                lambda row: [float(label in row["labels"]) for label in labels])  # multi-hot

    def build_module(self, model, new_params, params):
        from bertops.training.heads.multi_label_classification import MultiLabelClassifier

        return MultiLabelClassifier(model, new_params, params.train, params.task.threshold, finetune=params.finetune)

    @staticmethod
    def probabilities(model, tokenizer, rows, max_length, batch_size=128) -> np.ndarray:
        """One sigmoid probability per label and row."""
        from bertops.inference import row_pairs, sequence_logits

        logits = sequence_logits(model, tokenizer, [r["text"] for r in rows], row_pairs(rows), max_length=max_length,
                                 batch_size=batch_size)
        return torch.sigmoid(torch.from_numpy(logits)).numpy()

    @staticmethod
    def thresholds(model) -> np.ndarray:
        saved = getattr(model.config, THRESHOLDS_KEY, None) or {}
        return np.array([float(saved.get(model.config.id2label[i], 0.5)) for i in range(model.config.num_labels)])

    def finalize(self, model, tokenizer, params, layout):
        """Per-label thresholds chosen on the validation split with the best epoch's weights."""
        import json

        from bertops.corpora.splitting import read_split

        labels = json.loads(layout.labels_file.read_text())
        rows = read_split(layout.split("val"))
        was_training = model.training
        probs = self.probabilities(model, tokenizer, rows, params.model.max_length, params.train.eval_batch_size)
        model.train(was_training)
        gold = np.array([[label in r["labels"] for label in labels] for r in rows], dtype=bool)
        chosen = choose_thresholds(probs, gold, params.task.threshold)
        setattr(model.config, THRESHOLDS_KEY, {label: float(t) for label, t in zip(labels, chosen)})

    def score(self, params, layout, labels, rows):
        model, tokenizer = self.load_for_scoring(layout)
        probs = self.probabilities(model, tokenizer, rows, params.model.max_length, params.train.eval_batch_size)
        thresholds = self.thresholds(model)
        pred = probs >= thresholds
        gold = np.array([[label in r["labels"] for label in labels] for r in rows], dtype=bool)
        counts = f1_counts(gold, pred)
        per_class = {}
        for k, label in enumerate(labels):
            tp, fp, fn = int(counts["tp"][k]), int(counts["fp"][k]), int(counts["fn"][k])
            per_class[label] = {"precision": tp / (tp + fp) if tp + fp else 0.0,
                                "recall": tp / (tp + fn) if tp + fn else 0.0,
                                "f1": float(counts["per_label_f1"][k]), "support": int(gold[:, k].sum()),
                                "threshold": float(thresholds[k])}
        metrics = {"micro_f1": counts["micro_f1"], "macro_f1": counts["macro_f1"],
                   "subset_accuracy": counts["subset_accuracy"], "examples": len(rows), "per_class": per_class}
        predictions = [{"line": r["line"], "labels": sorted(r["labels"]),
                        "predicted": [labels[k] for k in np.flatnonzero(p)], "correct": bool((g == p).all())}
                       for r, g, p in zip(rows, gold, pred)]
        matrix = np.stack([counts["tp"], counts["fp"], counts["fn"], len(rows) - counts["tp"] - counts["fp"] - counts["fn"]],
                          axis=1)
        return Scored(metrics, predictions, matrix, list(labels), ["true pos.", "false pos.", "false neg.", "true neg."],
                      title="test decisions per label", axis_labels=("decision", "label"))

    def statistic(self, metric, rows):
        if metric == "subset_accuracy":
            return mean_statistic([r["correct"] for r in rows])
        names = sorted({lb for r in rows for lb in r["labels"]} | {lb for r in rows for lb in r["predicted"]})
        gold = np.array([[n in r["labels"] for n in names] for r in rows], dtype=bool)
        pred = np.array([[n in r["predicted"] for n in names] for r in rows], dtype=bool)
        tp, fp, fn = (gold & pred).astype(float), (~gold & pred).astype(float), (gold & ~pred).astype(float)

        def f1(t, p, n):
            return np.where(2 * t + p + n > 0, 2 * t / np.maximum(2 * t + p + n, 1e-12), 0.0)

        if metric == "micro_f1":
            a, b, c = tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1)
            return lambda idx: f1(a[idx].sum(axis=1), b[idx].sum(axis=1), c[idx].sum(axis=1))
        if metric == "macro_f1":
            return lambda idx: f1(tp[idx].sum(axis=1), fp[idx].sum(axis=1), fn[idx].sum(axis=1)).mean(axis=-1)
        return super().statistic(metric, rows)

    def baseline(self, metric, rows):
        return 0.0 if metric != "subset_accuracy" else float(np.mean([not r["labels"] for r in rows]))

    # ---- registering, serving, predicting ---------------------------------------------------------------------
    def serve(self, model, tokenizer, rows, config):
        import pandas as pd

        probs = self.probabilities(model, tokenizer, rows, config["max_length"])
        thresholds = self.thresholds(model)
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        return pd.DataFrame({
            "labels": [[names[k] for k in np.flatnonzero(p >= thresholds)] for p in probs],
            "probabilities": [{n: round(float(v), 5) for n, v in zip(names, p)} for p in probs]})

    def predict(self, loaded, inputs, params):
        out = super().predict(loaded, inputs, params)
        return [{**x, "labels": [{"label": lb, "probability": round(float(r["probabilities"][lb]), 4)}
                                 for lb in r["labels"]]} for x, r in zip(inputs, out)]

    def format_row(self, row):
        found = "  ".join(f"{x['label']} {x['probability']:.2f}" for x in row["labels"]) or "(no label)"
        return f"{found}\t{row['text']}"

    def metrics_markdown(self, metrics):
        head = (f"micro F1 {metrics['micro_f1']:.4f}, macro F1 {metrics['macro_f1']:.4f}, subset accuracy "
                f"{metrics['subset_accuracy']:.4f} ({metrics['examples']} examples; thresholds chosen on validation)")
        return f"{head}\n\n{class_table_markdown(self.class_kind, metrics['per_class'])}"
