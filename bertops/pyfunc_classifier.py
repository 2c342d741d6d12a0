"""Names that versions registered before bertops.tasks were pickled with: they load as the generic task model."""

from bertops.tasks.pyfunc import TaskModel as BertopsClassifier  # noqa: F401

AdaptedClassifier = BertopsClassifier  # versions registered before 2026-11-23
