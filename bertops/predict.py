"""`bertops predict`: run a registered model (the champion by default) on texts."""

from __future__ import annotations

import os
from pathlib import Path

from bertops.errors import BertopsError


def read_inputs(texts: list[str], file: Path | None, *, text_column: str = "text",
                pair_column: str | None = None) -> list[str | tuple[str, str]]:
    """The texts to predict: the arguments, then `file`'s. A .csv/.tsv/.jsonl/.parquet file is read by the corpus
    readers (errors name the file and line), taking `text_column` (and `pair_column` for pairs); any other file
    holds one text per line."""
    from bertops.corpora.readers import SUFFIX_FORMATS, _field, _records

    inputs: list[str | tuple[str, str]] = list(texts)
    if file is not None:
        if not file.is_file():
            raise BertopsError(f"{file}: file not found")
        fmt = SUFFIX_FORMATS.get(file.suffix.lower())
        if fmt is None:
            inputs += [line.strip() for line in file.read_text().splitlines() if line.strip()]
        else:
            for line, record in _records(file, fmt, "utf-8"):
                text = _field(record, text_column, file, line)
                inputs.append((text, _field(record, pair_column, file, line)) if pair_column else text)
    if not inputs:
        raise BertopsError("predict: give text(s) as arguments, or --file (one text per line, or a CSV/TSV/JSONL/"
                           "Parquet file with --text-column)")
    return inputs


def _model_uri(model_uri: str | None, params) -> str:
    if model_uri:
        return model_uri
    if params is None:
        raise BertopsError("predict: give --model-uri, or run in a project whose params.yaml names "
                           "registry.model_name (its champion is the default)")
    return f"models:/{params.registry.model_name}@champion"


def _connect(params, root: Path, tracking_uri: str | None) -> None:
    """The tracking store: --tracking-uri, else MLFLOW_TRACKING_URI, else the project's tracking.uri."""
    from bertops import tracking
    from bertops.layout import Layout

    if tracking_uri:
        tracking.point_at(tracking_uri)
    elif params is not None:
        tracking.configure(params, Layout(root.resolve()))
    elif not os.environ.get("MLFLOW_TRACKING_URI"):
        raise BertopsError("predict: no params.yaml here, so say where the registry is: --tracking-uri URI or "
                           "MLFLOW_TRACKING_URI (e.g. sqlite:///mlflow.db or http://localhost:5000)")


def _registered_family(model_uri: str, params):
    """The registered model's task family, read from its MLmodel before anything heavy loads: a bertops model
    records it (task_type); a version registered as a transformers pipeline needs the project's params."""
    import mlflow

    from bertops.tasks import get_task, task_of

    try:
        info = mlflow.models.get_model_info(model_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise BertopsError(f"cannot load {model_uri}: {exc.message}") from None
    task_type = (info.flavors.get("python_function", {}).get("config") or {}).get("task_type")  # model_config
    if "transformers" in info.flavors or task_type is None:
        if params is None:
            raise BertopsError(f"{model_uri} was registered as a transformers pipeline (before bertops recorded "
                               "its task): run predict in its project, with its params.yaml")
        return task_of(params), "transformers" in info.flavors
    return get_task(task_type), False


def _load(model_uri: str, transformers_flavor: bool):
    import mlflow

    try:
        return mlflow.transformers.load_model(model_uri) if transformers_flavor else mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise BertopsError(f"cannot load {model_uri}: {exc.message}") from None


def _locate(model_uri: str | None, params, root: Path, tracking_uri: str | None):
    """Connect to the registry and read the registered model's MLmodel: (uri, family, transformers_flavor)."""
    _connect(params, root, tracking_uri)
    uri = _model_uri(model_uri, params)
    return (uri, *_registered_family(uri, params))


def _load_registered(model_uri: str | None, params, root: Path, tracking_uri: str | None = None):
    """The registered model (default: the champion of registry.model_name). Returns (model, uri)."""
    uri, _, transformers_flavor = _locate(model_uri, params, root, tracking_uri)
    return _load(uri, transformers_flavor), uri


def _project_params(params_path: Path, model_uri: str | None):
    """The project's params; None when --model-uri is given and there is no params file."""
    from bertops.config import load_params

    if model_uri and not Path(params_path).is_file():
        return None
    return load_params(params_path)


def registered_predictions(model_uri: str | None, inputs: list[str | tuple[str, str]], params_path: Path, root: Path,
                           pairs: bool = False, tracking_uri: str | None = None) -> tuple[object, list[dict]]:
    """The registered model's predictions for each input; returns (the task family, the rows it prints)."""
    params = _project_params(params_path, model_uri)
    uri, family, transformers_flavor = _locate(model_uri, params, root, tracking_uri)
    rows = family.predict_inputs(inputs, pairs)  # bad input stops before the model loads
    return family, family.predict(_load(uri, transformers_flavor), rows, params)


def predict(model_uri: str | None, texts: list[str], file: Path | None, params_path: Path, root: Path,
            pairs: bool = False) -> list[dict]:
    return registered_predictions(model_uri, read_inputs(texts, file), params_path, root, pairs)[1]


def flat_row(row: dict) -> dict:
    """A prediction as one CSV row: a dict of numbers (every class's probability) becomes one column per key,
    lists and other dicts (entities, fillers) a JSON cell."""
    import json

    out = {}
    for key, value in row.items():
        if isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        elif isinstance(value, (dict, list, tuple)):
            out[key] = json.dumps(value, ensure_ascii=False)
        else:
            out[key] = value
    return out


def write_predictions(rows: list[dict], path: Path) -> None:
    """JSONL (one object per input) or CSV (flat_row), written atomically."""
    import csv
    import io
    import json

    from bertops.files import write_atomic

    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    else:
        flat = [flat_row(row) for row in rows]
        columns = list(dict.fromkeys(key for row in flat for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
        text = buffer.getvalue()
    write_atomic(path, text)


def format_row(row: dict, params_path: Path) -> str:
    from bertops.config import load_params
    from bertops.tasks import task_of

    return task_of(load_params(params_path)).format_row(row)


def fill_mask(model_uri: str | None, texts: list[str], top_k: int, params_path: Path, root: Path,
              tracking_uri: str | None = None) -> list[dict]:
    """Top-k fillers for each text's [MASK] (written as [MASK] whatever the model's own mask token is)."""
    for text in texts:  # before the model is loaded
        if text.count("[MASK]") != 1:
            raise BertopsError(f"fill-mask: put exactly one [MASK] in each text: {text!r}")
    from bertops.tasks import get_task

    params = _project_params(params_path, model_uri)
    model, model_uri = _load_registered(model_uri, params, root, tracking_uri)
    task = getattr(model, "task", None) or (getattr(model, "model_config", None) or {}).get("task_type")
    if task not in ("fill-mask", "masked_lm"):
        raise BertopsError(f"{model_uri} is a {task or '?'} model, not a masked-LM (fill-mask) one")
    return get_task("masked_lm").predict(model, [{"text": t} for t in texts], params, top_k=top_k)
