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


def _load_registered(model_uri: str | None, params, root: Path):
    """The registered model (default: the champion of registry.model_name): a transformers pipeline, or a bertops
    pyfunc model. Returns (model, uri)."""
    import mlflow

    from bertops import tracking
    from bertops.layout import Layout

    tracking.configure(params, Layout(root.resolve()))
    model_uri = model_uri or f"models:/{params.registry.model_name}@champion"
    try:
        is_pyfunc = "transformers" not in mlflow.models.get_model_info(model_uri).flavors
        model = mlflow.pyfunc.load_model(model_uri) if is_pyfunc else mlflow.transformers.load_model(model_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise BertopsError(f"cannot load {model_uri}: {exc.message}") from None
    return model, model_uri


def predict(model_uri: str | None, texts: list[str], file: Path | None, params_path: Path, root: Path,
            pairs: bool = False) -> list[dict]:
    """The registered model's predictions for each input, as the task family prints them (`format_row`)."""
    from bertops.config import load_params
    from bertops.tasks import task_of

    params = load_params(params_path)
    family = task_of(params)
    inputs = family.predict_inputs(_read_texts(texts, file), pairs)  # bad input stops before the model loads
    model, _ = _load_registered(model_uri, params, root)
    return family.predict(model, inputs, params)


def format_row(row: dict, params_path: Path) -> str:
    from bertops.config import load_params
    from bertops.tasks import task_of

    return task_of(load_params(params_path)).format_row(row)


def fill_mask(model_uri: str | None, texts: list[str], top_k: int, params_path: Path, root: Path) -> list[dict]:
    """Top-k fillers for each text's [MASK] (written as [MASK] whatever the model's own mask token is)."""
    for text in texts:  # before the model is loaded
        if text.count("[MASK]") != 1:
            raise BertopsError(f"fill-mask: put exactly one [MASK] in each text: {text!r}")
    from bertops.config import load_params
    from bertops.tasks import get_task

    params = load_params(params_path)
    model, model_uri = _load_registered(model_uri, params, root)
    task = getattr(model, "task", None) or (getattr(model, "model_config", None) or {}).get("task_type")
    if task not in ("fill-mask", "masked_lm"):
        raise BertopsError(f"{model_uri} is a {task or '?'} model, not a masked-LM (fill-mask) one")
    return get_task("masked_lm").predict(model, [{"text": t} for t in texts], params, top_k=top_k)
