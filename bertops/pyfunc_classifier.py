"""The registered form of a sequence- or token-classification model that the transformers flavor cannot carry:
a peft adapter (only the adapter and head weights are stored; the base model is named in adapter_config.json
and loaded when the model is) or a model whose head reads a learned mix of all layers (scalar mix), logged as
an MLflow pyfunc model that runs bertops's own inference code (the code that evaluated it, shipped with the
model through `code_paths`)."""

from __future__ import annotations

import mlflow.pyfunc


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


class BertopsClassifier(mlflow.pyfunc.PythonModel):
    """Input: rows with `text` (and `text_pair` for a sentence pair). Output: `label` and `probability` per
    row (sequence classification) or `entities` per row (token classification; words split on whitespace)."""

    def load_context(self, context):
        import torch
        from transformers import AutoTokenizer

        from bertops.modeling import load_trained

        self.config = dict(context.model_config or {})
        path = context.artifacts["checkpoint"]
        self.model = load_trained(path, self.config["task_type"]).eval()
        if torch.cuda.is_available():
            self.model.cuda()
        self.tokenizer = AutoTokenizer.from_pretrained(path)

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from bertops.inference import predict_proba, predict_word_tags, top_labels

        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else list(model_input)
        rows = [{"text": r} if isinstance(r, str) else r for r in rows]
        for i, row in enumerate(rows):
            if not isinstance(row.get("text"), str):
                raise ValueError(f"input row {i}: needs a string field 'text'")
        texts, max_length = [r["text"] for r in rows], self.config["max_length"]
        if self.config["task_type"] == "token_classification":
            sentences = [t.split() for t in texts]
            tags, scores = predict_word_tags(self.model, self.tokenizer, sentences, max_length=max_length,
                                             with_scores=True)
            return pd.DataFrame({"entities": [
                entities_from_tags(t, w, g, s, self.config.get("tag_scheme", "BIO"))
                for t, w, g, s in zip(texts, sentences, tags, scores)]})
        pairs = [r.get("text_pair") for r in rows]
        probs = predict_proba(self.model, self.tokenizer, texts, pairs if all(pairs) else None,
                              max_length=max_length)
        return pd.DataFrame(top_labels(self.model, probs), columns=["label", "probability"])


AdaptedClassifier = BertopsClassifier  # the name versions registered before 2026-11-23 were pickled with
