"""A registered bertops model as an MLflow pyfunc model: the checkpoint as an artifact, bertops's own code
shipped with it (`code_paths`), and `predict` delegated to the task family's `serve`, the code that evaluated it.
Used where the transformers flavor cannot carry the model: extractive QA (no pipeline in transformers 5), peft
adapters and scalar mixes (bertops's loader), regression and multi-label classification (their own outputs)."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc


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
        import pandas as pd

        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else list(model_input)
        return self.family.serve(self.model, self.tokenizer, self.family.validate_rows(rows), self.config)


def log_task_model(family, params, layout, example_rows: list[dict], requirements: list[str]):
    import pandas as pd

    import bertops

    config = {"task_type": family.name, **family.serve_config(params)}
    return mlflow.pyfunc.log_model(
        name="model", python_model=TaskModel(), artifacts={"checkpoint": str(layout.model_dir)},
        code_paths=[str(Path(bertops.__file__).parent)], input_example=pd.DataFrame(example_rows),
        model_config=config, pip_requirements=requirements + ["pandas"])
