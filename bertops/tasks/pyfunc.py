"""Every registered bertops model: an MLflow model from code (bertops/tasks/served_model.py, no pickled object),
the checkpoint as its `checkpoint` artifact, bertops's own code shipped with it (`code_paths`), and `predict`
delegated to the task family's `serve`, which runs the inference code that evaluation ran (truncation at
model.max_length, QA windows, NER on words, sentence pairs). `mlflow models serve`, `mlflow.pyfunc.load_model`
and `bertops predict` all load this one model.

A request that breaks the input contract (no text, one side of a pair missing, two [MASK]s) raises an
MlflowException with INVALID_PARAMETER_VALUE, which MLflow's scoring server answers with HTTP 400 and the
family's message, not a stack trace."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow.pyfunc
from mlflow.exceptions import MlflowException

# the model-from-code file MLflow copies into every registered model (named as a module so that the register
# stage's code deps, scripts/stage_deps.py, include it)
MODEL_CODE_MODULE = "bertops.tasks.served_model:TaskModel"
MODEL_CODE = Path(__file__).with_name(MODEL_CODE_MODULE.partition(":")[0].rpartition(".")[2] + ".py")
# what the served model imports at load and predict (tests/serving.py checks this against a real load)
SERVED_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "numpy", "pandas", "pydantic", "pyyaml")


def records(model_input) -> list:
    """The request's rows as dicts (a DataFrame's missing cells as None), or its plain values (a list of texts)."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        return [{k: _missing_to_none(v) for k, v in row.items()} for row in model_input.to_dict("records")]
    if isinstance(model_input, dict):
        return records(pd.DataFrame(model_input))
    return list(model_input)


def _missing_to_none(value):
    return None if isinstance(value, float) and math.isnan(value) else value


class TaskModel(mlflow.pyfunc.PythonModel):
    """Input: rows of the family's input schema. Output: the family's predictions, one row per input row."""

    def load_context(self, context):
        import torch
        from transformers import AutoTokenizer

        from bertops.tasks import get_task

        self.config = dict(context.model_config or {})
        # versions registered before task_type was recorded were extractive QA models
        self.family = get_task(self.config.get("task_type", "question_answering"))
        path = context.artifacts["checkpoint"]
        self.model = self.family.load_trained(path).eval()
        if torch.cuda.is_available():
            self.model.cuda()
        self.tokenizer = AutoTokenizer.from_pretrained(path)

    def predict(self, context, model_input, params=None):
        try:
            rows = self.family.validate_rows(records(model_input), self.config)
        except ValueError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from None
        return self.family.serve(self.model, self.tokenizer, rows, {**self.config, **(params or {})})


def served_requirements(family, adapter: bool) -> list[str]:
    """Pinned requirements: every package the served model imports (the family's own, peft for an adapter), at
    this process's versions (a local build suffix such as +cpu dropped)."""
    from bertops.lineage import package_versions

    pins = package_versions(*SERVED_PACKAGES, *family.served_packages, *(["peft"] if adapter else []))
    return [f"{name}=={v.split('+')[0]}" for name, v in pins.items() if v != "not installed"]


def log_task_model(family, params, layout, example_rows: list[dict]):
    """Log the checkpoint in layout.model_dir as this family's served model in the active run."""
    import pandas as pd
    from mlflow.models import ModelSignature

    import bertops
    from bertops.modeling import is_adapter_checkpoint

    config = {"task_type": family.name, **family.serve_config(params)}
    return mlflow.pyfunc.log_model(
        name="model", python_model=str(MODEL_CODE), artifacts={"checkpoint": str(layout.model_dir)},
        code_paths=[str(Path(bertops.__file__).parent)], input_example=pd.DataFrame(example_rows),
        signature=ModelSignature(inputs=family.input_schema(params), params=family.params_schema()),
        model_config=config,
        pip_requirements=served_requirements(family, is_adapter_checkpoint(layout.model_dir)))
