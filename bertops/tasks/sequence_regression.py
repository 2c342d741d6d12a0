"""Sequence regression: one number per text (or text pair) from the [CLS]/pooler output. The target
(`corpus.label_column`, numeric) is standardised on the training split for an MSE loss and restored at
prediction; splits are by content hash, their shares of the target's quantile bins reported; Pearson, Spearman, RMSE and MAE are reported.
Registered as a bertops pyfunc model that returns the number."""

from __future__ import annotations

import json
import math
from typing import Literal

import numpy as np
from pydantic import Field
from transformers import AutoModelForSequenceClassification

from bertops.tasks.base import Scored, TaskFamily, TaskParamsBase

SCALE_KEYS = ("bertops_target_mean", "bertops_target_std")  # in the checkpoint's config.json


class SequenceRegressionTask(TaskParamsBase):
    """A numeric target per text (or text pair): one output, MSE on the standardised target."""

    type: Literal["sequence_regression"]
    metric: Literal["pearson", "spearman", "rmse", "mae"] = Field(
        "pearson", description="selects the best epoch, stops early and gates promotion (rmse, mae: lower is better)")
    stratify_bins: int = Field(5, ge=1, le=100, description="stats.json reports each split's share of this many "
                                                            "quantile bins of the target, and prepare warns when "
                                                            "a split is far off (1 = not reported)")


def regression_metrics(gold, pred) -> dict:
    from scipy.stats import pearsonr, spearmanr

    gold, pred = np.asarray(gold, dtype=float), np.asarray(pred, dtype=float)
    constant = len(gold) < 2 or np.ptp(gold) == 0 or np.ptp(pred) == 0  # correlation undefined: report 0
    return {"pearson": 0.0 if constant else float(pearsonr(gold, pred)[0]),
            "spearman": 0.0 if constant else float(spearmanr(gold, pred)[0]),
            "rmse": float(np.sqrt(np.mean((gold - pred) ** 2))), "mae": float(np.mean(np.abs(gold - pred))),
            "examples": int(len(gold))}


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    return np.where(denominator > 0, (x * y).sum(axis=1) / np.maximum(denominator, 1e-300), 0.0)


def read_targets(path, corpus) -> list:
    """The corpus rows with a numeric target: (line, text, text_pair, target) records."""
    from types import SimpleNamespace

    from bertops.corpora.readers import read_examples
    from bertops.errors import CorpusError

    examples = read_examples(path, fmt="auto", encoding=corpus.encoding, text_column=corpus.text_column,
                             label_column=corpus.label_column, text_pair_column=corpus.text_pair_column,
                             group_column=corpus.group_column)
    out = []
    for ex in examples:
        try:
            target = float(ex.label)
        except ValueError:
            raise CorpusError(path, ex.line, f"target {ex.label!r} in field {corpus.label_column!r} is not a "
                                             "number (task.type sequence_regression)") from None
        if not math.isfinite(target):
            raise CorpusError(path, ex.line, f"target {ex.label!r} in field {corpus.label_column!r} is not finite")
        out.append(SimpleNamespace(line=ex.line, text=ex.text, text_pair=ex.text_pair, target=target, group=ex.group))
    return out


def quantile_bins(values: list[float], bins: int) -> list[int]:
    """Each value's quantile bin (0 .. bins-1); ties share a bin."""
    if bins <= 1:
        return [0] * len(values)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, values, side="right").tolist()


class SequenceRegression(TaskFamily):
    name = "sequence_regression"
    params = SequenceRegressionTask
    auto_model = AutoModelForSequenceClassification
    pipeline_task = "text-regression"  # recorded in lineage; served by the bertops pyfunc model
    peft_task_type = "SEQ_CLS"
    lower_is_better = frozenset({"rmse", "mae"})
    intended_use = "Predicts a number for a sentence (or a sentence pair) from the encoder's [CLS] representation."

    def prepare(self, params, layout):
        from bertops.corpora.splitting import (SPLITS, deduplicate, hash_splits, share_report, text_key, text_row,
                                               write_splits, write_stats)
        from bertops.errors import CorpusError

        corpus = params.corpus
        raw, fixed = layout.raw_corpus(), layout.raw_test()
        rows = read_targets(raw, corpus)
        kept, dedup_stats = deduplicate(rows, target=lambda r: r.target)
        if len(kept) < 10:
            raise CorpusError(raw, None, f"need at least 10 distinct texts for regression splits, found {len(kept)}")
        test_rows = deduplicate(read_targets(fixed, corpus), target=lambda r: r.target)[0] if fixed else None
        splits, split_info = hash_splits(kept, text_key, corpus.split, test_rows)
        if not splits["train"]:
            raise CorpusError(raw, None, "no rows left for the training split")
        write_splits(layout, splits, lambda ex: text_row(ex, target=ex.target))
        train = np.array([r.target for r in splits["train"]])
        # the "label space" of a regression: the training split's target scale, which the head is trained in
        scale = {"target_mean": float(train.mean()), "target_std": float(train.std()) or 1.0}
        layout.labels_file.write_text(json.dumps(scale, indent=1) + "\n")

        def summary(part):
            values = np.array([r.target for r in part]) if part else np.zeros(1)
            return {"examples": len(part), "mean": round(float(values.mean()), 4),
                    "std": round(float(values.std()), 4), "min": float(values.min()), "max": float(values.max())}

        # the target's quantile bins over the whole corpus: their shares per split show how far off each split is
        every = [ex for name in SPLITS for ex in splits[name]]
        bins = dict(zip(map(id, every), quantile_bins([ex.target for ex in every], params.task.stratify_bins)))
        return write_stats(layout, {"source": raw.name, "rows": len(rows), **dedup_stats, **split_info,
                                    "target_scale": scale, "splits": {n: summary(splits[n]) for n in SPLITS},
                                    "target_bin_shares": share_report(splits, lambda ex: [bins[id(ex)]], raw,
                                                                      "target quantile bin")})

    def head_kwargs(self, labels):
        return {"num_labels": 1, "problem_type": "regression"}

    def load_model(self, params, labels, tokenizer, layout):
        model, new_params = super().load_model(params, labels, tokenizer, layout)
        # labels.json of a regression holds the training target's scale: saved in config.json, restored at predict
        setattr(model.config, SCALE_KEYS[0], labels["target_mean"])
        setattr(model.config, SCALE_KEYS[1], labels["target_std"])
        return model, new_params

    def encode(self, rows, tokenizer, labels, params):
        from bertops.tasks.sequence_classification import encode_text_rows

        mean, std = labels["target_mean"], labels["target_std"]  # the head learns the standardised target
        return encode_text_rows(rows, tokenizer, params.model.max_length, lambda row: (row["target"] - mean) / std)

    def build_module(self, model, new_params, params):
        from bertops.training.heads.sequence_regression import SequenceRegressor

        module = SequenceRegressor(model, new_params, params.train, finetune=params.finetune)
        module.metric = params.task.metric
        return module

    @staticmethod
    def predict_values(model, tokenizer, rows, max_length, batch_size=128) -> np.ndarray:
        """Predictions in the target's own units (the head's output de-standardised)."""
        from bertops.inference import row_pairs, sequence_logits

        mean, std = (float(getattr(model.config, k)) for k in SCALE_KEYS)
        logits = sequence_logits(model, tokenizer, [r["text"] for r in rows], row_pairs(rows), max_length=max_length,
                                 batch_size=batch_size)
        return logits[:, 0].astype(np.float64) * std + mean

    def score(self, params, layout, labels, rows):
        model, tokenizer = self.load_for_scoring(layout)
        pred = self.predict_values(model, tokenizer, rows, params.model.max_length, params.train.eval_batch_size)
        gold = np.array([r["target"] for r in rows])
        metrics = regression_metrics(gold, pred)
        constant = np.full_like(gold, labels["target_mean"])  # the reference: always the training mean
        metrics.update({"constant_rmse": float(np.sqrt(np.mean((gold - constant) ** 2))),
                        "constant_mae": float(np.mean(np.abs(gold - constant)))})
        predictions = [{"line": r["line"], "target": float(g), "predicted": round(float(p), 5),
                        "abs_error": round(float(abs(g - p)), 5)} for r, g, p in zip(rows, gold, pred)]
        # gold vs predicted quantile bins of the test target: where the errors go
        bins = 5
        edges = np.unique(np.quantile(gold, np.linspace(0, 1, bins + 1)[1:-1]))
        g_bin, p_bin = np.searchsorted(edges, gold, side="right"), np.searchsorted(edges, pred, side="right")
        n = len(edges) + 1
        matrix = np.zeros((n, n), dtype=int)
        for a, b in zip(g_bin, p_bin):
            matrix[a, b] += 1
        bounds = [-np.inf, *edges, np.inf]
        names = [f"{bounds[i]:.2g}..{bounds[i + 1]:.2g}" for i in range(n)]
        return Scored(metrics, predictions, matrix, names, title="test target vs prediction (quantile bins)")

    def statistic(self, metric, rows):
        from scipy.stats import rankdata

        gold = np.array([r["target"] for r in rows], dtype=float)
        pred = np.array([r["predicted"] for r in rows], dtype=float)
        if metric == "pearson":
            return lambda idx: _pearson_rows(gold[idx], pred[idx])
        if metric == "spearman":
            return lambda idx: _pearson_rows(rankdata(gold[idx], axis=1), rankdata(pred[idx], axis=1))
        if metric == "rmse":
            return lambda idx: np.sqrt(((gold - pred) ** 2)[idx].mean(axis=1))
        if metric == "mae":
            return lambda idx: np.abs(gold - pred)[idx].mean(axis=1)
        return super().statistic(metric, rows)

    def baseline(self, metric, rows):
        gold = np.array([r["target"] for r in rows], dtype=float)
        return {"pearson": 0.0, "spearman": 0.0, "rmse": float(gold.std()),
                "mae": float(np.mean(np.abs(gold - np.median(gold))))}[metric]

    # ---- registering, serving, predicting ---------------------------------------------------------------------
    def serve(self, model, tokenizer, rows, config):
        import pandas as pd

        return pd.DataFrame({"score": self.predict_values(model, tokenizer, rows, config["max_length"])})

    def predict(self, loaded, inputs, params):
        return [{**x, "score": round(float(r["score"]), 4)} for x, r in zip(inputs, super().predict(loaded, inputs, params))]

    def format_row(self, row):
        text = row["text"] if "text_pair" not in row else f"{row['text']}\t{row['text_pair']}"
        return f"{row['score']:.4f}\t{text}"

    def metrics_markdown(self, metrics):
        return (f"Pearson {metrics['pearson']:.4f}, Spearman {metrics['spearman']:.4f}, RMSE {metrics['rmse']:.4f} "
                f"(always predicting the training mean: {metrics['constant_rmse']:.4f}), MAE {metrics['mae']:.4f} "
                f"({metrics['examples']} examples)\n")

    def limitations(self, params, layout, metrics):
        return [*super().limitations(params, layout, metrics),
                "Predictions outside the training targets' range are extrapolations of a linear head."]
