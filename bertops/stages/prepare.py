"""Stage 2, prepare: validate every row, drop duplicates, seeded train/val/test splits. How a corpus is read,
validated, grouped and split is the task family's (bertops/tasks/); the shared steps are in
bertops/corpora/splitting.py."""

from __future__ import annotations

from bertops.config import Params
from bertops.layout import Layout
from bertops.tasks import task_of


def prepare(params: Params, layout: Layout) -> dict:
    return task_of(params).prepare(params, layout)
