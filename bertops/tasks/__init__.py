"""The registry of task families: `get_task(params.task.type)` is how the stages, the flows and the served model
find what a task does. Built-in families live beside this file; a package outside bertops adds one through the
entry-point group `bertops.tasks` (name = the task.type, value = "module:FamilyClass")."""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points

from bertops.errors import ParamsError

BUILTIN = {
    "sequence_classification": "bertops.tasks.sequence_classification:SequenceClassification",
    "sequence_regression": "bertops.tasks.sequence_regression:SequenceRegression",
    "multi_label_classification": "bertops.tasks.multi_label_classification:MultiLabelClassification",
    "token_classification": "bertops.tasks.token_classification:TokenClassification",
    "question_answering": "bertops.tasks.question_answering:QuestionAnswering",
    "masked_lm": "bertops.tasks.masked_lm:MaskedLanguageModeling",
}
ENTRY_POINT_GROUP = "bertops.tasks"
DEFAULT_TASK = "sequence_classification"


@cache
def _locations() -> dict[str, str]:
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def task_names() -> list[str]:
    return list(_locations())


@cache
def get_task(name: str):
    """The task family registered as `name` (one instance per process)."""
    location = _locations().get(name)
    if location is None:
        raise ParamsError(f"task.type: unknown task {name!r} (allowed: {', '.join(task_names())})")
    module, _, attribute = location.partition(":")
    family = getattr(importlib.import_module(module), attribute)()
    if family.name != name:
        raise ParamsError(f"task.type: {location} registers as {name!r} but calls itself {family.name!r}")
    return family


def task_of(params):
    """The family of a validated Params object."""
    return get_task(params.task.type)
