"""Sequence (and sentence-pair) classification: one label per text, or per text pair, from the [CLS]/pooler
output. Served as the bertops model from code (bertops/tasks/pyfunc.py): the label, its probability and every
label's probability, scored by the code that scored the test split."""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
from pydantic import Field
from transformers import AutoModelForSequenceClassification

from bertops.tasks.base import Scored, TaskFamily, TaskParamsBase, class_table_markdown


class SequenceClassificationTask(TaskParamsBase):
    """One label per text (or per text pair) from the [CLS]/pooler output."""

    type: Literal["sequence_classification"] = "sequence_classification"
    metric: Literal["accuracy", "macro_f1"] = Field(
        "accuracy", description="selects the best epoch, stops early and gates promotion")
    long_text: Literal["truncate", "head_tail"] = Field(
        "truncate", description="a text longer than model.max_length: truncate keeps its first tokens; head_tail "
                                "its first quarter and last three quarters (Sun et al. 2019); training, "
                                "evaluation and the served model apply the same")


def encode_text_rows(rows: list[dict], tokenizer, max_length: int, target, long_text: str = "truncate") -> list[dict]:
    """Rows of a text (and a text pair: one sequence with [SEP] and segment ids, the longer side cut first) with
    `target(row)` as each feature's labels: what every [CLS]-head family trains on."""
    from bertops.inference import encode_texts

    texts = [row["text"] for row in rows]
    pairs = [row["text_pair"] for row in rows] if rows and "text_pair" in rows[0] else None
    enc = encode_texts(tokenizer, texts, pairs, max_length=max_length, long_text=long_text)
    return [{**{k: enc[k][i] for k in enc.keys()}, "labels": target(row)} for i, row in enumerate(rows)]


def encode_sequences(rows: list[dict], tokenizer, labels: list[str], max_length: int,
                     long_text: str = "truncate") -> list[dict]:
    """One label per row."""
    label_ids = {label: i for i, label in enumerate(labels)}
    return encode_text_rows(rows, tokenizer, max_length, lambda row: label_ids[row["label"]], long_text)


def classification_metrics(gold: list[int], pred: list[int], labels: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(gold, pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=ids, average="macro", zero_division=0)),
        "examples": len(gold),
        "per_class": {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                              "support": int(support[i])} for i, label in enumerate(labels)},
    }


def macro_f1_statistic(gold_labels: list, pred_labels: list):
    labels = sorted(set(gold_labels) | set(pred_labels))
    gold = np.array([labels.index(g) for g in gold_labels])
    pred = np.array([labels.index(p) for p in pred_labels])

    def macro_f1(idx):
        scores = []
        for k in range(len(labels)):
            tp = ((gold == k) & (pred == k))[idx].sum(axis=1)
            fp = ((gold != k) & (pred == k))[idx].sum(axis=1)
            fn = ((gold == k) & (pred != k))[idx].sum(axis=1)
            denominator = 2 * tp + fp + fn
            scores.append(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0))
        return np.mean(scores, axis=0)
    return macro_f1


class SequenceClassification(TaskFamily):
    name = "sequence_classification"
    params = SequenceClassificationTask
    auto_model = AutoModelForSequenceClassification
    pipeline_task = "text-classification"
    peft_task_type = "SEQ_CLS"
    class_table_key = "per_class"
    intended_use = ("Assigns one of the labels below to a sentence (or a sentence pair) from the encoder's [CLS] "
                    "representation.")

    def prepare(self, params, layout) -> dict:
        from bertops.corpora.readers import label_order, read_examples
        from bertops.corpora.splitting import (SPLITS, deduplicate, hash_splits, share_report, text_key, text_row,
                                               write_labels, write_splits, write_stats)
        from bertops.errors import CorpusError

        corpus = params.corpus
        raw, fixed = layout.raw_corpus(), layout.raw_test()

        def read(path):
            # import named the raw file corpus.<format>, so its suffix says the format
            return read_examples(path, fmt="auto", encoding=corpus.encoding, text_column=corpus.text_column,
                                 label_column=corpus.label_column, text_pair_column=corpus.text_pair_column,
                                 labels=corpus.labels, group_column=corpus.group_column)

        examples, dedup_stats = deduplicate(read(raw))
        seen = label_order(ex.label for ex in examples)
        if len(seen) < 2:
            raise CorpusError(raw, None, f"need at least 2 distinct labels, found {seen}")
        test_rows = deduplicate(read(fixed))[0] if fixed else None
        if test_rows and not corpus.labels and (unseen := sorted({ex.label for ex in test_rows} - set(seen))):
            raise CorpusError(fixed, None, f"labels {unseen} are in the test file but not in the corpus")
        splits, split_info = hash_splits(examples, text_key, corpus.split, test_rows)
        write_splits(layout, splits, lambda ex: text_row(ex, label=ex.label))
        write_labels(layout, list(corpus.labels) if corpus.labels else seen)
        return write_stats(layout, {
            "source": raw.name,
            "rows": len(examples) + dedup_stats["duplicates_dropped"] + dedup_stats["conflicting_label_rows_dropped"],
            **dedup_stats, **split_info,
            "splits": {name: dict(sorted(Counter(ex.label for ex in splits[name]).items())) for name in SPLITS},
            "label_shares": share_report(splits, lambda ex: [ex.label], raw),
        })

    def encode(self, rows, tokenizer, labels, params):
        return encode_sequences(rows, tokenizer, labels, params.model.max_length, params.task.long_text)

    def build_module(self, model, new_params, params):
        from bertops.training.heads.sequence_classification import SequenceClassifier

        return SequenceClassifier(model, new_params, params.train, finetune=params.finetune)

    def score(self, params, layout, labels, rows) -> Scored:
        from sklearn.metrics import confusion_matrix

        from bertops.inference import predict_proba, row_pairs

        model, tokenizer = self.load_for_scoring(layout)
        probs = predict_proba(model, tokenizer, [r["text"] for r in rows], row_pairs(rows),
                              max_length=params.model.max_length, batch_size=params.train.eval_batch_size,
                              long_text=params.task.long_text)
        label_ids = {label: i for i, label in enumerate(labels)}
        gold = [label_ids[r["label"]] for r in rows]
        pred = probs.argmax(-1).tolist()
        # per-example correctness, for paired significance tests between versions
        predictions = [{"line": row["line"], "label": labels[g], "predicted": labels[p],
                        "probability": round(float(pr[p]), 5), "correct": g == p}
                       for row, g, p, pr in zip(rows, gold, pred, probs)]
        return Scored(classification_metrics(gold, pred, labels), predictions,
                      confusion_matrix(gold, pred, labels=list(range(len(labels)))), labels)

    def statistic(self, metric, rows):
        if metric == "accuracy":
            from bertops.tasks.base import mean_statistic

            return mean_statistic([r["correct"] for r in rows])
        if metric == "macro_f1":
            return macro_f1_statistic([r["label"] for r in rows], [r["predicted"] for r in rows])
        return super().statistic(metric, rows)

    def paired_test(self, metric):
        return "mcnemar_exact" if metric == "accuracy" else "paired_bootstrap"

    def baseline(self, metric, rows):
        from sklearn.metrics import f1_score

        labels = [r["label"] for r in rows]
        top = Counter(labels).most_common(1)[0][0]
        if metric == "accuracy":
            return labels.count(top) / len(labels)
        return float(f1_score(labels, [top] * len(labels), average="macro"))

    # ---- serving and predicting -------------------------------------------------------------------------------
    def serve_config(self, params):
        return {**super().serve_config(params), "long_text": params.task.long_text}

    def serve(self, model, tokenizer, rows, config):
        """The label and its probability, and every label's probability, scored as `score` scores the test split
        (`predict_proba`, cut at model.max_length by task.long_text, the longer side of a pair first)."""
        import pandas as pd

        from bertops.inference import predict_proba, row_pairs, top_labels

        probs = predict_proba(model, tokenizer, [r["text"] for r in rows], row_pairs(rows),
                              max_length=config["max_length"], long_text=config.get("long_text", "truncate"))
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        top = top_labels(model, probs)
        return pd.DataFrame({"label": [label for label, _ in top], "probability": [p for _, p in top],
                             "probabilities": [{n: float(v) for n, v in zip(names, row)} for row in probs]})

    def predict(self, loaded, inputs, params):
        if hasattr(loaded, "tokenizer"):  # a version registered as a transformers pipeline (before 2026-12-02)
            from bertops.training.module import auto_precision

            return classify(loaded, inputs, max_length=params.model.max_length,
                            bf16=auto_precision(params.train.precision, params.train.accelerator) == "bf16-mixed")
        return [{**x, "label": r["label"], "probability": round(float(r["probability"]), 4),
                 "probabilities": {k: round(float(v), 4) for k, v in r["probabilities"].items()}}
                for x, r in zip(inputs, super().predict(loaded, inputs, params))]

    def format_row(self, row):
        text = row["text"] if "text_pair" not in row else f"{row['text']}\t{row['text_pair']}"
        return f"{row['label']}\t{row['probability']:.4f}\t{text}"

    # ---- model card -----------------------------------------------------------------------------------------
    def metrics_markdown(self, metrics):
        head = f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}"
        return f"{head}\n\n{class_table_markdown(self.class_kind, metrics['per_class'])}"

    def limitations(self, params, layout, metrics):
        return [*super().limitations(params, layout, metrics),
                "A label outside the training labels can never be predicted."]


def classify(classifier, inputs: list[dict], *, max_length: int, bf16: bool) -> list[dict]:
    """A registered text-classification pipeline's model and tokenizer run through bertops's batched inference:
    length-sorted batches, cut at the length the model was trained and evaluated at, in bf16 where training
    would use it (`train.precision`). On the 2-core AMX CPU: 1.6x the pipeline's texts/s in float32 with the
    same labels and probabilities, 3.4x in bf16 (1 label in 1,057 differs; benchmarks/predict_throughput.py)."""
    from bertops.inference import predict_proba, top_labels

    model, tokenizer = classifier.model, classifier.tokenizer
    max_length = min(max_length, tokenizer.model_max_length)
    seconds = [x["text_pair"] for x in inputs] if inputs and "text_pair" in inputs[0] else None
    probs = predict_proba(model, tokenizer, [x["text"] for x in inputs], seconds, max_length=max_length,
                          batch_size=64, bf16=bf16)
    return [{**x, "label": label, "probability": round(probability, 4)}
            for x, (label, probability) in zip(inputs, top_labels(model, probs))]
