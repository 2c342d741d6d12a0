"""Extractive QA on SQuAD-format JSON: the answer's start and end tokens in the context, over overlapping
windows of a long context (bertops/qa/). Served as the bertops model from code (bertops/tasks/pyfunc.py), running
the windowing and span decoding that evaluation ran."""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import Field
from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding

from bertops.tasks.base import Collators, Scored, TaskFamily, TaskParamsBase, mean_statistic


class QuestionAnsweringTask(TaskParamsBase):
    """Extractive QA on SQuAD-format JSON: the answer's start and end tokens in the context."""

    type: Literal["question_answering"]
    metric: Literal["f1", "exact_match"] = Field("f1", description="SQuAD F1 or exact match (official normalisation)")
    doc_stride: int = Field(128, ge=1, description="tokens of overlap between windows of a long context")
    max_answer_length: int = Field(30, ge=1, description="longest answer span in tokens")
    n_best: int = Field(20, ge=1, description="start and end candidates considered per window")
    allow_no_answer: bool = Field(False, description="SQuAD 2.0: predict no answer when the null score wins")
    null_threshold: float = Field(0.0, description="predict no answer when null score > best span + this")

    def decoding(self) -> dict:
        return {"n_best": self.n_best, "max_answer_length": self.max_answer_length,
                "allow_no_answer": self.allow_no_answer, "null_threshold": self.null_threshold}


class QuestionCollator:
    """Pads model inputs and drops the decoding-only fields; for training and validation it keeps the answer
    positions and each window's index (validation decodes by it), for inference (`inputs_only`) neither."""

    def __init__(self, tokenizer, inputs_only: bool = False, pad_to_multiple_of: int | None = 8):
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        self.drop = {"example_index", "offset_mapping"}
        if inputs_only:
            self.drop |= {"feature_index", "start_positions", "end_positions"}

    def __call__(self, features):
        return self.pad([{k: v for k, v in f.items() if k not in self.drop} for f in features])


def answer_questions(model, tokenizer, rows: list[dict], *, max_length: int, doc_stride: int, batch_size: int = 64,
                     **decode) -> list[str]:
    """The best answer per {question, context} row over all its windows ("" = no answer)."""
    import torch

    from bertops.inference import outputs_by_length
    from bertops.qa.windows import best_answers, encode_questions

    features = encode_questions([{"answers": {"text": []}, **r} for r in rows], tokenizer, max_length, doc_stride)
    collate = QuestionCollator(tokenizer, inputs_only=True)
    starts, ends = [None] * len(features), [None] * len(features)
    with torch.inference_mode():
        for idx, out in outputs_by_length(model, features, collate, batch_size):
            s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
            for row, i in enumerate(idx):
                starts[i], ends[i] = s[row], e[row]
    return best_answers(features, starts, ends, [r["context"] for r in rows], **decode)


class QuestionAnswering(TaskFamily):
    name = "question_answering"
    params = QuestionAnsweringTask
    auto_model = AutoModelForQuestionAnswering
    pipeline_task = "question-answering"  # recorded in lineage; transformers 5 has no such pipeline
    labelled = False
    peft_task_type = "QUESTION_ANS"
    intended_use = ("Extracts the answer span to a question from a context passage, or abstains when unanswerable "
                    "questions are allowed.")

    def check_params(self, params):
        super().check_params(params)
        if params.task.doc_stride >= params.model.max_length // 2:
            raise ValueError(f"task.doc_stride ({params.task.doc_stride}) must be less than half of "
                             f"model.max_length ({params.model.max_length}): windows would barely advance")

    def raw_suffix(self, source, corpus):
        return "json"

    def prepare(self, params, layout):
        """SQuAD questions, split by the hash of their context (and title): questions on one context never
        straddle splits, and a context keeps its split as the corpus grows."""
        from bertops.corpora.splitting import SPLITS, hash_splits, normalised, write_labels, write_splits, write_stats
        from bertops.errors import CorpusError
        from bertops.qa.squad import read_squad

        corpus = params.corpus
        raw, fixed = layout.raw_corpus(), layout.raw_test()

        def context_key(item):
            question = item[1]
            return normalised((question.title or "") + "\n" + question.context)

        questions = list(enumerate(read_squad(raw, corpus.encoding)))
        contexts = {context_key(item) for item in questions}
        if len(contexts) < 3:
            raise CorpusError(raw, None, f"need at least 3 contexts to split by context, found {len(contexts)}")
        held = list(enumerate(read_squad(fixed, corpus.encoding))) if fixed else None
        splits, split_info = hash_splits(questions, context_key, corpus.split, held)
        write_splits(layout, splits, lambda item: item[1].as_row(), order=lambda item: item[0])
        write_labels(layout, [])  # extractive QA has no label set
        counts = {name: Counter("has_answer" if q.answers else "no_answer" for _, q in part)
                  for name, part in splits.items()}
        return write_stats(layout, {
            "source": raw.name, "questions": len(questions), "contexts": len(contexts), **split_info,
            "splits": {name: {"contexts": len({context_key(item) for item in splits[name]}), **counts[name]}
                       for name in SPLITS}})

    def encode(self, rows, tokenizer, labels, params):
        from bertops.qa.windows import encode_questions

        return encode_questions(rows, tokenizer, params.model.max_length, params.task.doc_stride)

    def collators(self, tokenizer, params):
        from bertops.training.module import auto_pad_multiple

        return Collators(QuestionCollator(tokenizer, pad_to_multiple_of=auto_pad_multiple(params.train)))

    def build_module(self, model, new_params, params):
        from bertops.training.heads.question_answering import QuestionAnswerer

        return QuestionAnswerer(model, new_params, params.train, params.task, finetune=params.finetune)

    def score(self, params, layout, labels, rows):
        from sklearn.metrics import confusion_matrix

        from bertops.qa.metrics import question_scores, squad_scores

        task = params.task
        model, tokenizer = self.load_for_scoring(layout)
        answers = answer_questions(model, tokenizer, rows, max_length=params.model.max_length,
                                   doc_stride=task.doc_stride, batch_size=params.train.eval_batch_size,
                                   **task.decoding())
        metrics = squad_scores({r["id"]: a for r, a in zip(rows, answers)},
                               {r["id"]: r["answers"]["text"] for r in rows})
        predictions = []
        for row, answer in zip(rows, answers):
            em, f1 = question_scores(answer, row["answers"]["text"])
            predictions.append({"id": row["id"], "predicted": answer, "gold": row["answers"]["text"],
                                "exact_match": em, "f1": round(f1, 5), "correct": bool(em)})
        # answered vs abstained, against answerable vs not (SQuAD 2.0's two ways to be wrong)
        gold_kind = [int(bool(r["answers"]["text"])) for r in rows]
        pred_kind = [int(bool(a)) for a in answers]
        return Scored(metrics, predictions, confusion_matrix(gold_kind, pred_kind, labels=[0, 1]),
                      ["no answer", "answer"])

    def example_key(self, row):
        return row["id"]

    def statistic(self, metric, rows):
        return mean_statistic([float(r[metric]) for r in rows])  # a mean over questions

    # ---- registering, serving, predicting ---------------------------------------------------------------------
    def example_input(self, row):
        return {"question": row["question"], "context": row["context"]}

    def input_columns(self, params):
        return {"question": True, "context": True}

    def serve_config(self, params):
        return {"max_length": params.model.max_length, "doc_stride": params.task.doc_stride,
                "inputs": list(self.input_columns(params)), **params.task.decoding()}

    def validate_rows(self, rows, config):
        return super().validate_rows(rows, {**config, "inputs": ["question", "context"]})

    def serve(self, model, tokenizer, rows, config):
        """The best answer over all windows of each context, decoded as `score` decodes the test split."""
        import pandas as pd

        decoding = ("max_length", "doc_stride", "n_best", "max_answer_length", "allow_no_answer", "null_threshold")
        answers = answer_questions(model, tokenizer, [{"question": r["question"], "context": r["context"]}
                                                      for r in rows], **{k: config[k] for k in decoding if k in config})
        return pd.DataFrame({"answer": answers})

    def predict_inputs(self, texts, pairs):
        from bertops.tasks.base import split_pairs

        return [{"question": x["text"], "context": x["text_pair"]} for x in split_pairs(texts)]

    def predict(self, loaded, inputs, params):
        import pandas as pd

        answers = loaded.predict(pd.DataFrame(inputs))["answer"].tolist()
        return [{"question": x["question"], "answer": a} for x, a in zip(inputs, answers)]

    def format_row(self, row):
        return f"{row['answer'] or '(no answer)'}\t{row['question']}"

    def example_count(self, metrics):
        return metrics.get("questions")

    def limitations(self, params, layout, metrics):
        return [f"Contexts longer than model.max_length = {params.model.max_length} sub-tokens are cut into "
                f"windows overlapping by task.doc_stride = {params.task.doc_stride} tokens."]
