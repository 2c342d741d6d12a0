"""`bertops predict`: run a registered model (the champion by default) on texts."""

from __future__ import annotations

from pathlib import Path

from bertops.errors import BertopsError


def _read_texts(texts: list[str], file: Path | None) -> list[str]:
    if file is not None:
        if not file.is_file():
            raise BertopsError(f"{file}: file not found")
        texts = texts + [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not texts:
        raise BertopsError("predict: give text(s) as arguments or --file with one text per line")
    return texts


def _split_pairs(texts: list[str]) -> list[dict]:
    inputs = []  # sentence pairs (or question and context): "first<TAB>second"
    for i, text in enumerate(texts, start=1):
        first, sep, second = text.partition("\t")
        if not sep:
            raise BertopsError(f"predict: input {i} has no TAB between the two texts (a sentence pair, or "
                               f"question<TAB>context): {text!r}")
        inputs.append({"text": first, "text_pair": second})
    return inputs


def _load_registered(model_uri: str | None, params_path: Path, root: Path):
    """The registered model (default: the champion of registry.model_name): a transformers pipeline, or for
    extractive QA a pyfunc model (bertops.qa.pyfunc). Returns (model, uri, is_pyfunc)."""
    import mlflow

    from bertops import tracking
    from bertops.config import load_params
    from bertops.layout import Layout

    params = load_params(params_path)
    tracking.configure(params, Layout(root.resolve()))
    model_uri = model_uri or f"models:/{params.registry.model_name}@champion"
    try:
        is_pyfunc = "transformers" not in mlflow.models.get_model_info(model_uri).flavors
        model = mlflow.pyfunc.load_model(model_uri) if is_pyfunc else mlflow.transformers.load_model(model_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise BertopsError(f"cannot load {model_uri}: {exc.message}") from None
    return model, model_uri, is_pyfunc


def predict(model_uri: str | None, texts: list[str], file: Path | None, params_path: Path, root: Path,
            pairs: bool = False) -> list[dict]:
    from transformers import TokenClassificationPipeline

    from bertops.config import load_params
    from bertops.training.module import auto_precision

    texts = _read_texts(texts, file)  # bad input stops before the model is loaded
    pair_inputs = _split_pairs(texts) if pairs else None
    model, model_uri, is_pyfunc = _load_registered(model_uri, params_path, root)
    pyfunc_task = (model.model_config or {}).get("task_type", "question_answering") if is_pyfunc else None
    if pyfunc_task in ("sequence_classification", "token_classification"):
        return _predict_adapted(model, pyfunc_task, texts, pair_inputs)
    is_qa = pyfunc_task == "question_answering"
    if is_qa and pair_inputs is None:
        pair_inputs = _split_pairs(texts)  # QA: "question<TAB>context"
    inputs = pair_inputs or texts
    if is_qa:
        import pandas as pd

        frame = pd.DataFrame({"question": [x["text"] for x in inputs], "context": [x["text_pair"] for x in inputs]})
        answers = model.predict(frame)["answer"].tolist()
        return [{"question": x["text"], "answer": a} for x, a in zip(inputs, answers)]
    if isinstance(model, TokenClassificationPipeline):
        if pairs:
            raise BertopsError(f"predict --pairs: {model_uri} is a token-classification model")
        outputs = model(inputs, batch_size=64, aggregation_strategy="first")
        return [{"text": t, "entities": [{"type": e["entity_group"], "text": t[e["start"]:e["end"]],
                                          "start": int(e["start"]), "end": int(e["end"]),
                                          "probability": round(float(e["score"]), 4)} for e in entities]}
                for t, entities in zip(texts, outputs)]
    params = load_params(params_path)
    return _classify(model, texts, pair_inputs, max_length=params.model.max_length,
                     bf16=auto_precision(params.train.precision, params.train.accelerator) == "bf16-mixed")


def _classify(classifier, texts: list[str], pair_inputs: list[dict] | None, *, max_length: int,
              bf16: bool) -> list[dict]:
    """A registered text-classification pipeline's model and tokenizer run through bertops's batched inference:
    length-sorted batches, cut at the length the model was trained and evaluated at, in bf16 where training
    would use it (`train.precision`). On the 2-core AMX CPU: 1.6x the pipeline's texts/s in float32 with the
    same labels and probabilities, 3.4x in bf16 (1 label in 1,057 differs; benchmarks/predict_throughput.py)."""
    from bertops.inference import predict_proba, top_labels

    model, tokenizer = classifier.model, classifier.tokenizer
    max_length = min(max_length, tokenizer.model_max_length)
    firsts = [x["text"] for x in pair_inputs] if pair_inputs else texts
    seconds = [x["text_pair"] for x in pair_inputs] if pair_inputs else None
    probs = predict_proba(model, tokenizer, firsts, seconds, max_length=max_length, batch_size=64, bf16=bf16)
    return [{"text": t, "label": label, "probability": round(probability, 4)}
            for t, (label, probability) in zip(texts, top_labels(model, probs))]


def _predict_adapted(model, task_type: str, texts: list[str], pair_inputs: list[dict] | None) -> list[dict]:
    """A pyfunc-registered classifier (a peft adapter over its base model): same output as the pipelines."""
    import pandas as pd

    frame = pd.DataFrame(pair_inputs) if pair_inputs else pd.DataFrame({"text": texts})
    out = model.predict(frame)
    if task_type == "token_classification":
        return [{"text": t, "entities": list(e)} for t, e in zip(texts, out["entities"])]
    return [{"text": t, "label": label, "probability": round(float(p), 4)}
            for t, label, p in zip(texts, out["label"], out["probability"])]


def format_row(row: dict) -> str:
    if "answer" in row:
        return f"{row['answer'] or '(no answer)'}\t{row['question']}"
    if "entities" in row:
        found = "  ".join(f"[{e['type']}: {e['text']} {e['probability']:.2f}]" for e in row["entities"])
        return f"{row['text']}\n    {found or '(no entities)'}"
    return f"{row['label']}\t{row['probability']:.4f}\t{row['text']}"


def fill_mask(model_uri: str | None, texts: list[str], top_k: int, params_path: Path, root: Path) -> list[dict]:
    """Top-k fillers for each text's [MASK] (written as [MASK] whatever the model's own mask token is)."""
    for text in texts:  # before the model is loaded
        if text.count("[MASK]") != 1:
            raise BertopsError(f"fill-mask: put exactly one [MASK] in each text: {text!r}")
    model, model_uri, _ = _load_registered(model_uri, params_path, root)
    if getattr(model, "task", None) != "fill-mask":
        raise BertopsError(f"{model_uri} is a {getattr(model, 'task', '?')} model, not a masked-LM (fill-mask) one")
    rows = []
    for text in texts:
        masked = text.replace("[MASK]", model.tokenizer.mask_token)
        fillers = model(masked, top_k=top_k)
        rows.append({"text": text, "fillers": [{"token": f["token_str"].strip(), "probability": round(float(
            f["score"]), 4)} for f in fillers]})
    return rows
