"""Masked-LM continued pretraining (domain- or task-adaptive, DAPT/TAPT) on unlabelled text, with BERT's 80/10/10
replacement over sub-tokens, whole words or spans (bertops/mlm/masking.py). The output checkpoint can be the
model.name_or_path of a fine-tune; the served model (bertops/tasks/pyfunc.py) fills a text's [MASK] (cloze)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from transformers import AutoModelForMaskedLM

from bertops.tasks.base import Collators, Scored, TaskFamily, TaskParamsBase
from bertops.modeling import IGNORE_INDEX

log = logging.getLogger(__name__)


class MaskedLMTask(TaskParamsBase):
    """Continued masked-LM pretraining (domain- or task-adaptive) on unlabelled text; the output checkpoint can
    be the model.name_or_path of a fine-tune. The MLM head is initialised when the checkpoint lacks one (its
    decoder stays tied to the input embeddings)."""

    type: Literal["masked_lm"]
    metric: Literal["perplexity"] = Field("perplexity", description="held-out perplexity on masked tokens")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="share of tokens selected for prediction")
    mask_replace_prob: float = Field(0.8, ge=0, le=1, description="selected tokens replaced by [MASK]")
    random_replace_prob: float = Field(0.1, ge=0, le=1, description="selected tokens replaced by a random token")
    masking: Literal["token", "whole_word", "span"] = Field(
        "token", description="unit of selection: sub-tokens, whole words, or spans of whole words (SpanBERT)")
    span_mean_length: float = Field(3.0, ge=1, le=10, description="mean span length in words (masking: span)")
    mask_seed: int = Field(0, ge=0, description="seed of the fixed validation and test masks (with the example's "
                                                "text): versions compare only when it and the masking agree")
    new_tokens: list[str] = Field(
        [], description="words added to the vocabulary as whole tokens before training (a made-up name the corpus "
                        "teaches, which WordPiece would split into pieces)")
    new_token_init: Literal["model", "mean"] = Field(
        "model", description="the new tokens' embedding rows: model = the model's own initializer, as pretraining "
                             "starts a token; mean = a draw around the mean embedding (transformers' default for "
                             "resizing); docs/cloze.md compares them")

    @model_validator(mode="after")
    def _new_tokens_are_words(self):
        for i, token in enumerate(self.new_tokens):
            if not token or token != token.strip() or len(token.split()) != 1 or MASK in token:
                raise ValueError(f"new_tokens[{i}]: {token!r} is not one word (no spaces, not {MASK})")
        if len(set(self.new_tokens)) != len(self.new_tokens):
            raise ValueError(f"new_tokens lists a word twice: {self.new_tokens}")
        return self

    @model_validator(mode="after")
    def _replacement_shares(self):
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ValueError("mask_replace_prob + random_replace_prob must be at most 1 (the rest is kept)")
        return self

    def masking_options(self) -> dict:
        """The MaskingCollator options these params give."""
        return {"probability": self.mlm_probability, "masking": self.masking, "replace_prob": self.mask_replace_prob,
                "random_prob": self.random_replace_prob, "span_mean": self.span_mean_length}


def masked_lm_head(model):
    """The prediction head of a *ForMaskedLM model as a module from hidden states to vocabulary logits, for the
    families whose head is one such module (BERT and its kin: `cls`; RoBERTa, XLM-R, DeBERTa: `lm_head`); None
    for others (their own forward is used)."""
    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    return None


def read_texts(path, corpus) -> list[tuple[int, str]]:
    """Unlabelled text: one document or sentence per line (.txt), or the text column of a CSV/TSV/JSONL corpus."""
    from bertops.corpora.readers import _decode, _field, _records, detect_format
    from bertops.errors import CorpusError

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


MASK = "[MASK]"  # how a served request and `bertops predict` write the masked word, whatever the tokenizer's


@torch.inference_mode()
def mask_logits(model, tokenizer, texts: list[str], *, max_length: int):
    """(index, logits over the tokenizer's vocabulary) of each text's one [MASK], in length-sorted order. A text
    longer than max_length sub-tokens is cut to the max_length-token window centred on the mask (the model saw no
    longer inputs). Embedding rows beyond the tokenizer's vocabulary (padding from a resize) are no fillers."""
    from functools import partial

    from bertops.inference import outputs_by_length

    special = set(tokenizer.all_special_ids) - {tokenizer.mask_token_id}
    features, positions = [], []
    for text in texts:
        ids = tokenizer(text.replace(MASK, tokenizer.mask_token))["input_ids"]
        head = next(i for i, t in enumerate(ids) if t not in special)  # [CLS] (or <s>) stays first
        tail = len(ids) - next(i for i, t in enumerate(reversed(ids)) if t not in special)  # [SEP] stays last
        inner, at = ids[head:tail], ids.index(tokenizer.mask_token_id) - head
        room = max_length - head - (len(ids) - tail)
        start = max(0, min(at - room // 2, len(inner) - room))
        input_ids = ids[:head] + inner[start:start + room] + ids[tail:]
        features.append({"input_ids": input_ids, "attention_mask": [1] * len(input_ids)})
        positions.append(input_ids.index(tokenizer.mask_token_id))
    vocab = len(tokenizer)
    for idx, result in outputs_by_length(model, features, partial(tokenizer.pad, return_tensors="pt"), 64):
        for row, i in enumerate(idx):
            yield i, result.logits[row, positions[i], :vocab].float()


def fill_masks(model, tokenizer, texts: list[str], *, max_length: int, top_k: int) -> list[list[dict]]:
    """Each text's top-k fillers of its one [MASK] (tokens and probabilities), as mask_logits windows it."""
    out: list[list[dict]] = [[] for _ in texts]
    for i, logits in mask_logits(model, tokenizer, texts, max_length=max_length):
        values, ids = torch.softmax(logits, dim=-1).topk(top_k)
        out[i] = [{"token": tokenizer.decode([t]).strip(), "probability": float(v)}
                  for t, v in zip(ids.tolist(), values.tolist())]
    return out


def cloze(text: str) -> str:
    """A text with its middle word masked: the registered model's input example."""
    words = text.split()
    words[len(words) // 2] = "[MASK]"
    return " ".join(words)


class MaskedLanguageModeling(TaskFamily):
    name = "masked_lm"
    params = MaskedLMTask
    auto_model = AutoModelForMaskedLM
    pipeline_task = "fill-mask"
    labelled = False
    layer_mix_allowed = False
    lower_is_better = frozenset({"perplexity"})
    intended_use = ("Fills [MASK] positions (cloze); its checkpoint is meant as the starting point of a downstream "
                    "fine-tune on the same domain.")

    def check_params(self, params):
        if params.finetune.encoder != "full" or params.finetune.layer_features != "last":
            raise ValueError(f"finetune.encoder: {params.finetune.encoder} / finetune.layer_features: "
                             f"{params.finetune.layer_features} do not apply to masked_lm pretraining, which trains "
                             "the encoder itself (allowed: encoder full, layer_features last)")

    def raw_suffix(self, source, corpus):
        if corpus.format == "text" or (corpus.format == "auto" and source.suffix.lower() == ".txt"):
            return "txt"
        return super().raw_suffix(source, corpus)

    def prepare(self, params, layout):
        """Texts (documents, or lines of a .txt) split by their content hash, so a document never straddles splits."""
        from bertops.corpora.splitting import hash_splits, normalised, write_labels, write_splits, write_stats
        from bertops.errors import CorpusError

        corpus = params.corpus
        raw, fixed = layout.raw_corpus(), layout.raw_test()

        def distinct(texts):
            seen, kept = set(), []
            for line, text in texts:
                if text not in seen:
                    seen.add(text)
                    kept.append((line, text))
            return kept

        texts = read_texts(raw, corpus)
        kept = distinct(texts)
        if len(kept) < 3:
            raise CorpusError(raw, None, f"need at least 3 distinct texts to split, found {len(kept)}")
        # keyed apart from the labelled families' text keys: a TAPT corpus is a fine-tune's training split, and
        # hashed like the fine-tune's texts, every one of them would land in train again
        splits, split_info = hash_splits(kept, lambda item: "document\0" + normalised(item[1]), corpus.split,
                                         distinct(read_texts(fixed, corpus)) if fixed else None)
        write_splits(layout, splits, lambda item: {"text": item[1], "line": item[0]}, order=lambda item: item)
        write_labels(layout, [])  # masked LM: the vocabulary is the label set
        return write_stats(layout, {
            "source": raw.name, "texts": len(texts), "duplicates_dropped": len(texts) - len(kept), **split_info,
            "splits": {name: {"texts": len(part), "words": sum(len(t.split()) for _, t in part)}
                       for name, part in splits.items()}})

    def load_model(self, params, labels, tokenizer, layout):
        from bertops.modeling import add_tokens

        model, new_params = super().load_model(params, labels, tokenizer, layout)
        new_tokens = params.task.new_tokens
        if new_tokens:
            for token in new_tokens:
                pieces = tokenizer.tokenize(token)
                if len(pieces) == 1 and tokenizer.convert_tokens_to_ids(pieces[0]) != tokenizer.unk_token_id:
                    log.info("task.new_tokens: %r is already one token of the vocabulary", token)
            # the tied decoder grows with the embeddings; the new rows train at train.lr
            add_tokens(model, tokenizer, list(new_tokens), pad_to_multiple_of=None,
                       mean_resizing=params.task.new_token_init == "mean")
        return model, new_params

    def encode(self, rows, tokenizer, labels, params):
        from bertops.mlm.masking import encode_texts

        return encode_texts(rows, tokenizer, params.model.max_length)

    def collators(self, tokenizer, params):
        from bertops.mlm.masking import MaskingCollator
        from bertops.training.module import auto_pad_multiple

        options = {**params.task.masking_options(), "pad_to_multiple_of": auto_pad_multiple(params.train)}
        # training masks are drawn afresh for every batch; validation masks are fixed per example
        return Collators(MaskingCollator(tokenizer, seed=params.train.seed, **options),
                         MaskingCollator(tokenizer, seed=params.task.mask_seed, fixed=True, **options))

    def build_module(self, model, new_params, params):
        from bertops.training.heads.masked_lm import MaskedLM

        return MaskedLM(model, new_params, params.train, finetune=params.finetune)

    def after_save(self, params, layout):
        from bertops.modeling import carry_pooler

        # the checkpoint may become a downstream model.name_or_path (DAPT/TAPT)
        carry_pooler(params.model.name_or_path, params.model.revision, layout.model_dir)

    def comparable_params(self, params):
        # perplexity on other masks (another probability, strategy or seed) is another number
        return {f"task.{k}": getattr(params.task, k) for k in ("mlm_probability", "mask_replace_prob",
                                                               "random_replace_prob", "masking",
                                                               "span_mean_length", "mask_seed")}

    @torch.inference_mode()
    def score(self, params, layout, labels, rows):
        """Perplexity and top-1 accuracy on the test split's masked tokens, masked exactly as validation masks
        (fixed per example), so versions trained on the same split compare."""
        from sklearn.metrics import confusion_matrix

        from bertops.mlm.masking import MaskingCollator, encode_texts

        model, tokenizer = self.load_for_scoring(layout)
        features = encode_texts(rows, tokenizer, params.model.max_length)
        collate = MaskingCollator(tokenizer, seed=params.task.mask_seed, fixed=True, **params.task.masking_options())
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
                per_example.append((float(losses[i][m].sum()), int(m.sum()),
                                    int((top1[i][m] == labels_[i][m]).sum())))
                gold_ids += labels_[i][m].tolist()
                pred_ids += top1[i][m].tolist()
        loss_sum = sum(e[0] for e in per_example)
        n = sum(e[1] for e in per_example)
        metrics = {"perplexity": float(np.exp(min(loss_sum / max(n, 1), 50.0))),
                   "masked_accuracy": float(sum(e[2] for e in per_example) / max(n, 1)),
                   "masked_tokens": n, "texts": len(rows)}
        predictions = [{"line": row["line"], "masked_tokens": e[1], "loss_sum": round(e[0], 5),
                        "correct_tokens": e[2], "correct": e[1] == e[2]} for row, e in zip(rows, per_example)]
        # which fillers the model confuses: the 10 most frequent masked tokens and everything else
        common = [t for t, _ in Counter(gold_ids).most_common(10)]
        names = tokenizer.convert_ids_to_tokens(common) + ["(other)"]
        index = {t: i for i, t in enumerate(common)}
        matrix = confusion_matrix([index.get(t, len(common)) for t in gold_ids],
                                  [index.get(t, len(common)) for t in pred_ids], labels=list(range(len(names))))
        return Scored(metrics, predictions, matrix, names, title="test masked tokens: gold vs top-1 filler")

    def statistic(self, metric, rows):
        loss, tokens = (np.array([r[k] for r in rows], dtype=float) for k in ("loss_sum", "masked_tokens"))
        return lambda idx: np.exp(np.minimum(loss[idx].sum(axis=1) / np.maximum(tokens[idx].sum(axis=1), 1), 50.0))

    # ---- serving, predicting ---------------------------------------------------------------------------------
    def example_input(self, row):
        return {"text": cloze(row["text"])}

    def serve_config(self, params):
        return {**super().serve_config(params), "top_k": 5}

    def params_schema(self):
        from mlflow.types import ParamSchema, ParamSpec

        return ParamSchema([ParamSpec("top_k", "integer", 5)])  # a request's {"params": {"top_k": 10}}

    def validate_rows(self, rows, config):
        rows = super().validate_rows(rows, config)
        for i, row in enumerate(rows):
            if row["text"].count(MASK) != 1:
                raise ValueError(f"row {i}: put exactly one {MASK} in the text (found {row['text'].count(MASK)})")
        return rows

    def serve(self, model, tokenizer, rows, config):
        """The top-k fillers of each text's [MASK] and their probabilities."""
        import pandas as pd

        fillers = fill_masks(model, tokenizer, [r["text"] for r in rows], max_length=config["max_length"],
                             top_k=config.get("top_k", 5))
        return pd.DataFrame({"fillers": fillers})

    def predict(self, loaded, inputs, params, top_k: int = 5):
        from bertops.errors import BertopsError

        for x in inputs:
            if x["text"].count(MASK) != 1:
                raise BertopsError(f"predict: a masked-LM model fills one {MASK} per text: {x['text']!r}")
        if hasattr(loaded, "tokenizer"):  # a version registered as a transformers pipeline (before 2026-12-02)
            out = [[{"token": f["token_str"].strip(), "probability": float(f["score"])}
                    for f in loaded(x["text"].replace(MASK, loaded.tokenizer.mask_token), top_k=top_k)]
                   for x in inputs]
        else:
            import pandas as pd

            out = loaded.predict(pd.DataFrame(inputs), params={"top_k": top_k})["fillers"].tolist()
        return [{"text": x["text"], "fillers": [{"token": f["token"], "probability": round(float(f["probability"]), 4)}
                                                for f in fillers]} for x, fillers in zip(inputs, out)]

    def format_row(self, row):
        return row["text"] + "\n    " + "  ".join(f"{f['token']} {f['probability']:.3f}" for f in row["fillers"])

    def example_count(self, metrics):
        return metrics.get("texts")

    def metrics_markdown(self, metrics):
        parts = [f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)]
        return ", ".join(parts) + f" ({metrics['texts']} texts, {metrics['masked_tokens']} masked tokens)\n"
