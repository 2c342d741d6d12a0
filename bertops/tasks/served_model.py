"""The model-from-code file of every registered bertops model (MLflow copies it into the model): the served
model is bertops.tasks.pyfunc.TaskModel, built from bertops's shipped code, never unpickled."""

import mlflow

from bertops.tasks.pyfunc import TaskModel

mlflow.models.set_model(TaskModel())
