"""Stage 4, evaluate: the task family scores the test split (metrics, per-example rows, a matrix); this stage
writes them, plots the matrix and the learning curves, and logs them to the training run."""

from __future__ import annotations

import csv
import json
import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402

from bertops import tracking  # noqa: E402
from bertops.config import Params  # noqa: E402
from bertops.layout import Layout  # noqa: E402
from bertops.tasks import task_of  # noqa: E402
from bertops.tasks.base import Scored  # noqa: E402
from bertops.corpora.splitting import read_split  # noqa: E402

log = logging.getLogger(__name__)


def _plot_matrix(scored: Scored, path):
    rows, columns = scored.row_labels, scored.column_labels or scored.row_labels
    matrix = scored.matrix
    fig, ax = plt.subplots(figsize=(2 + len(columns), 1.6 + len(rows)))
    ax.imshow(matrix, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(scored.axis_labels[0])
    ax.set_ylabel(scored.axis_labels[1])
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_title(scored.title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _plot_learning_curve(layout: Layout, metric: str, path):
    loss = _read_csv(layout.reports_dir / "plots" / "train_loss.csv")
    val = _read_csv(layout.reports_dir / "plots" / "val_metrics.csv")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([int(r["step"]) for r in loss], [float(r["train_loss"]) for r in loss], label="train loss", alpha=0.7)
    ax.plot([int(r["step"]) for r in val], [float(r["val_loss"]) for r in val], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    right = ax.twinx()
    right.plot([int(r["step"]) for r in val], [float(r[f"val_{metric}"]) for r in val], "s--", color="tab:green",
               label=f"val {metric}")
    right.set_ylabel(metric)
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    ax.set_title("learning curve")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(params: Params, layout: Layout) -> dict:
    family = task_of(params)
    labels = json.loads(layout.labels_file.read_text())
    rows = read_split(layout.split("test"))
    scored = family.score(params, layout, labels, rows)
    metrics, predictions = scored.metrics, scored.predictions
    metrics["metric"] = params.task.metric

    reports = layout.reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    layout.metrics_file.write_text(json.dumps(metrics, indent=1) + "\n")
    with layout.predictions_file.open("w") as out:
        for row in predictions:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    _plot_matrix(scored, reports / "confusion_matrix.png")
    _plot_learning_curve(layout, params.task.metric, reports / "learning_curve.png")

    tracking.configure(params, layout)
    run_id = tracking.read_train_run(layout)
    flat = {f"test_{k}": v for k, v in metrics.items() if isinstance(v, float)}
    for label, scores in metrics.get(family.class_table_key, {}).items() if family.class_table_key else ():
        flat.update({f"test_{label}_{k}": float(v) for k, v in scores.items() if k != "support"})
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(flat)
        # test_predictions.jsonl: the per-example results the next version's paired significance test needs
        for name in ("metrics.json", "test_predictions.jsonl", "confusion_matrix.png", "learning_curve.png"):
            mlflow.log_artifact(str(reports / name), artifact_path="reports")
    log.info("test %s = %.4f", params.task.metric, metrics[params.task.metric])
    return metrics
