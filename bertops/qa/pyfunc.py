"""The name extractive-QA versions registered before bertops.tasks were pickled with."""

from bertops.tasks.pyfunc import TaskModel as ExtractiveQA  # noqa: F401
