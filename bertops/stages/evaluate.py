"""Stage 4, evaluate: test-split metrics (per class, or per entity type for token classification), confusion
matrix and learning curves, logged to the training run."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from bertops import tracking  # noqa: E402
from bertops.config import Params  # noqa: E402
from bertops.inference import answer_questions, predict_proba, predict_word_tags  # noqa: E402
from bertops.layout import Layout  # noqa: E402
from bertops.modeling import load_trained  # noqa: E402
from bertops.ner_metrics import entity_scores, entity_spans  # noqa: E402
from bertops.qa.metrics import question_scores, squad_scores  # noqa: E402
from bertops.training.data import read_split  # noqa: E402

log = logging.getLogger(__name__)


def classification_metrics(gold: list[int], pred: list[int], labels: list[str]) -> dict:
    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(gold, pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=ids, average="macro", zero_division=0)),
        "examples": len(gold),
        "per_class": {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                              "support": int(support[i])} for i, label in enumerate(labels)},
    }


def _plot_confusion(matrix: np.ndarray, labels: list[str], path, title: str | None = None):
    fig, ax = plt.subplots(figsize=(2 + len(labels), 1.6 + len(labels)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_title(title or "test confusion matrix")
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


def _load_checkpoint(params: Params, layout: Layout):
    """The trained checkpoint with the task's head (float32, on the GPU when there is one) and its tokenizer."""
    model = load_trained(layout.model_dir, params.task.type)
    if torch.cuda.is_available():
        model.cuda()
    return model.eval(), AutoTokenizer.from_pretrained(layout.model_dir)


def _score_sequences(params: Params, layout: Layout, labels: list[str], rows: list[dict]):
    model, tokenizer = _load_checkpoint(params, layout)
    pairs = [r["text_pair"] for r in rows] if rows and "text_pair" in rows[0] else None
    probs = predict_proba(model, tokenizer, [r["text"] for r in rows], pairs, max_length=params.model.max_length,
                          batch_size=params.train.eval_batch_size)
    label_ids = {label: i for i, label in enumerate(labels)}
    gold = [label_ids[r["label"]] for r in rows]
    pred = probs.argmax(-1).tolist()
    metrics = classification_metrics(gold, pred, labels)
    # per-example correctness, for paired significance tests between versions
    predictions = [{"line": row["line"], "label": labels[g], "predicted": labels[p],
                    "probability": round(float(pr[p]), 5), "correct": g == p}
                   for row, g, p, pr in zip(rows, gold, pred, probs)]
    return metrics, predictions, confusion_matrix(gold, pred, labels=list(range(len(labels)))), labels


def _entity_type(tag: str) -> str:
    return tag if tag == "O" else tag[2:]


def _score_tokens(params: Params, layout: Layout, labels: list[str], rows: list[dict]):
    model, tokenizer = _load_checkpoint(params, layout)
    gold = [list(r["tags"]) for r in rows]
    pred = predict_word_tags(model, tokenizer, [list(r["tokens"]) for r in rows],
                             max_length=params.model.max_length, batch_size=params.train.eval_batch_size)
    metrics = entity_scores(gold, pred, params.task.tag_scheme)
    metrics["sentences"] = len(rows)
    metrics["word_accuracy"] = float(np.mean([g == p for gs, ps in zip(gold, pred) for g, p in zip(gs, ps)]))
    # per sentence: enough to recompute entity F1 on a bootstrap resample of sentences
    predictions = []
    for row, gs, ps in zip(rows, gold, pred):
        gold_spans = entity_spans(gs, params.task.tag_scheme)
        pred_spans = entity_spans(ps, params.task.tag_scheme)
        predictions.append({"line": row["line"], "predicted": ps, "gold_entities": len(gold_spans),
                            "predicted_entities": len(pred_spans), "correct_entities": len(gold_spans & pred_spans),
                            "correct": ps == gs})
    types = ["O", *sorted({_entity_type(t) for t in labels} - {"O"})]
    type_ids = {t: i for i, t in enumerate(types)}
    flat_gold = [type_ids[_entity_type(t)] for gs in gold for t in gs]
    flat_pred = [type_ids[_entity_type(t)] for ps in pred for t in ps]
    return metrics, predictions, confusion_matrix(flat_gold, flat_pred, labels=list(range(len(types)))), types


def _score_questions(params: Params, layout: Layout, labels: list[str], rows: list[dict]):
    task = params.task
    model, tokenizer = _load_checkpoint(params, layout)
    answers = answer_questions(model, tokenizer, rows, max_length=params.model.max_length,
                               doc_stride=task.doc_stride, batch_size=params.train.eval_batch_size,
                               n_best=task.n_best, max_answer_length=task.max_answer_length,
                               allow_no_answer=task.allow_no_answer, null_threshold=task.null_threshold)
    metrics = squad_scores({r["id"]: a for r, a in zip(rows, answers)}, {r["id"]: r["answers"]["text"] for r in rows})
    predictions = []
    for row, answer in zip(rows, answers):
        em, f1 = question_scores(answer, row["answers"]["text"])
        predictions.append({"id": row["id"], "predicted": answer, "gold": row["answers"]["text"],
                            "exact_match": em, "f1": round(f1, 5), "correct": bool(em)})
    # answered vs abstained, against answerable vs not (SQuAD 2.0's two ways to be wrong)
    gold_kind = [int(bool(r["answers"]["text"])) for r in rows]
    pred_kind = [int(bool(a)) for a in answers]
    return metrics, predictions, confusion_matrix(gold_kind, pred_kind, labels=[0, 1]), ["no answer", "answer"]


@torch.inference_mode()
def _score_masked_lm(params: Params, layout: Layout, labels: list[str], rows: list[dict]):
    """Perplexity and top-1 accuracy on the test split's masked tokens, masked exactly as validation masks
    (fixed per example), so versions trained on the same split compare."""
    from bertops.mlm.masking import IGNORE_INDEX, MaskingCollator, encode_texts, masking_options

    model, tokenizer = _load_checkpoint(params, layout)
    features = encode_texts(rows, tokenizer, params.model.max_length)
    collate = MaskingCollator(tokenizer, seed=params.train.seed, fixed=True, **masking_options(params.task))
    per_example, gold_ids, pred_ids = [], [], []
    size = params.train.eval_batch_size
    for start in range(0, len(features), size):
        batch = {k: v.to(model.device) for k, v in collate(features[start:start + size]).items()}
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        labels_ = batch["labels"]
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels_, ignore_index=IGNORE_INDEX,
                                                   reduction="none")
        masked = labels_ != IGNORE_INDEX
        top1 = logits.argmax(-1)
        for i in range(len(labels_)):
            m = masked[i]
            per_example.append((float(losses[i][m].sum()), int(m.sum()), int((top1[i][m] == labels_[i][m]).sum())))
            gold_ids += labels_[i][m].tolist()
            pred_ids += top1[i][m].tolist()
    loss_sum = sum(e[0] for e in per_example)
    n = sum(e[1] for e in per_example)
    metrics = {"perplexity": float(np.exp(min(loss_sum / max(n, 1), 50.0))),
               "masked_accuracy": float(sum(e[2] for e in per_example) / max(n, 1)),
               "masked_tokens": n, "texts": len(rows)}
    predictions = [{"line": row["line"], "masked_tokens": e[1], "loss_sum": round(e[0], 5), "correct_tokens": e[2],
                    "correct": e[1] == e[2]} for row, e in zip(rows, per_example)]
    # which fillers the model confuses: the 10 most frequent masked tokens and everything else
    common = [t for t, _ in Counter(gold_ids).most_common(10)]
    names = tokenizer.convert_ids_to_tokens(common) + ["(other)"]
    index = {t: i for i, t in enumerate(common)}
    matrix = confusion_matrix([index.get(t, len(common)) for t in gold_ids],
                              [index.get(t, len(common)) for t in pred_ids], labels=list(range(len(names))))
    return metrics, predictions, matrix, names


def evaluate(params: Params, layout: Layout) -> dict:
    labels = json.loads(layout.labels_file.read_text())
    rows = read_split(layout.split("test"))
    score = {"token_classification": _score_tokens, "question_answering": _score_questions,
             "masked_lm": _score_masked_lm}.get(params.task.type, _score_sequences)
    metrics, predictions, matrix, matrix_labels = score(params, layout, labels, rows)
    metrics["metric"] = params.task.metric

    reports = layout.reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    layout.metrics_file.write_text(json.dumps(metrics, indent=1) + "\n")
    with layout.predictions_file.open("w") as out:
        for row in predictions:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    title = {"token_classification": "test confusion matrix (words, by entity type)",
             "masked_lm": "test masked tokens: gold vs top-1 filler"}.get(params.task.type)
    _plot_confusion(matrix, matrix_labels, reports / "confusion_matrix.png", title)
    _plot_learning_curve(layout, params.task.metric, reports / "learning_curve.png")

    tracking.configure(params, layout)
    run_id = tracking.read_train_run(layout)
    flat = {f"test_{k}": v for k, v in metrics.items() if isinstance(v, float)}
    for label, scores in metrics.get("per_class", metrics.get("per_type", {})).items():
        flat.update({f"test_{label}_{k}": float(v) for k, v in scores.items() if k != "support"})
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(flat)
        # test_predictions.jsonl: the per-example results the next version's paired significance test needs
        for name in ("metrics.json", "test_predictions.jsonl", "confusion_matrix.png", "learning_curve.png"):
            mlflow.log_artifact(str(reports / name), artifact_path="reports")
    log.info("test %s = %.4f", params.task.metric, metrics[params.task.metric])
    return metrics
