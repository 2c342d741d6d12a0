"""The MR score regression (pipelines/mr-score) against its two references, on sentences neither model trained on:
- a constant prediction (the regression's training mean): Pearson/Spearman 0 by definition, its RMSE and MAE;
- the MR classifier (the root pipeline's models/best): the Spearman and Pearson correlation of its positive-class
  probability with the human score.
The two pipelines split the corpus differently (quantile bins of the score vs the label), so the comparison uses
the regression's test sentences that are not in the classifier's training split either.

    python benchmarks/regression_reference.py --out benchmarks/results/mr-score-reference.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def paired_difference(gold, a, b, samples: int = 2000, seed: int = 0) -> dict:
    """Resampling the sentences: the 95% interval of (correlation of a) - (correlation of b), Pearson and Spearman."""
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(seed)
    out = {}
    for name, corr in (("pearson", pearsonr), ("spearman", spearmanr)):
        deltas = []
        for _ in range(samples):
            idx = rng.integers(0, len(gold), len(gold))
            deltas.append(corr(gold[idx], a[idx])[0] - corr(gold[idx], b[idx])[0])
        low, high = np.percentile(deltas, [2.5, 97.5])
        out[name] = {"delta": float(corr(gold, a)[0] - corr(gold, b)[0]), "ci95": [float(low), float(high)]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regression", type=Path, default=REPO / "pipelines" / "mr-score")
    parser.add_argument("--classifier", type=Path, default=REPO)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from scipy.stats import pearsonr, spearmanr

    from bertops.config import load_params
    from bertops.inference import predict_proba
    from bertops.layout import Layout
    from bertops.tasks import get_task
    from bertops.tasks.sequence_regression import regression_metrics
    from bertops.corpora.splitting import read_split

    reg_layout, cls_layout = Layout(args.regression.resolve()), Layout(args.classifier.resolve())
    reg_params = load_params(reg_layout.params)
    test = read_split(reg_layout.split("test"))
    seen_by_classifier = {r["text"] for r in read_split(cls_layout.split("train"))}
    rows = [r for r in test if r["text"] not in seen_by_classifier]
    gold = np.array([r["target"] for r in rows])

    regression = get_task("sequence_regression")
    model, tokenizer = regression.load_for_scoring(reg_layout)
    predicted = regression.predict_values(model, tokenizer, rows, reg_params.model.max_length)
    classifier = get_task("sequence_classification")
    cls_model, cls_tokenizer = classifier.load_for_scoring(cls_layout)
    probs = predict_proba(cls_model, cls_tokenizer, [r["text"] for r in rows], max_length=128)
    positive = probs[:, cls_model.config.label2id["positive"]]
    train_mean = json.loads(reg_layout.labels_file.read_text())["target_mean"]

    result = {
        "sentences": len(rows), "of_regression_test": len(test),
        "regression": regression_metrics(gold, predicted),
        "classifier_positive_probability": {"pearson": float(pearsonr(gold, positive)[0]),
                                            "spearman": float(spearmanr(gold, positive)[0])},
        "constant_training_mean": {"pearson": 0.0, "spearman": 0.0,
                                   "rmse": float(np.sqrt(np.mean((gold - train_mean) ** 2))),
                                   "mae": float(np.mean(np.abs(gold - train_mean)))},
        "regression_full_test": json.loads(reg_layout.metrics_file.read_text()),
        "paired_bootstrap_regression_minus_classifier": paired_difference(gold, predicted, positive),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
