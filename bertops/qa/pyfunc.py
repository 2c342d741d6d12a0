"""The registered form of an extractive-QA model. transformers 5 removed the question-answering pipeline, so the
checkpoint is logged as an MLflow pyfunc model that runs bertops's own windowing and span decoding (the code
that evaluated it) and ships that code with the model (`code_paths`)."""

from __future__ import annotations

import mlflow.pyfunc


class ExtractiveQA(mlflow.pyfunc.PythonModel):
    """Input: rows with `question` and `context`. Output: one `answer` per row ("" = no answer)."""

    def load_context(self, context):
        import torch
        from transformers import AutoTokenizer

        from bertops.modeling import load_trained

        path = context.artifacts["checkpoint"]
        self.model = load_trained(path, "question_answering").eval()  # a full checkpoint or a peft adapter
        if torch.cuda.is_available():
            self.model.cuda()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.config = dict(context.model_config or {})
        self.config.pop("task_type", None)

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from bertops.inference import answer_questions

        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else list(model_input)
        for i, row in enumerate(rows):
            if not isinstance(row.get("question"), str) or not isinstance(row.get("context"), str):
                raise ValueError(f"input row {i}: needs string fields 'question' and 'context'")
        answers = answer_questions(self.model, self.tokenizer, [{"question": r["question"], "context": r["context"]}
                                                                for r in rows], **self.config)
        return pd.DataFrame({"answer": answers})
