"""The registry of task families: every built-in family is complete, and a family from another package joins
through the `bertops.tasks` entry point without any change to bertops."""

import sys
from importlib.metadata import EntryPoint

import pytest

import bertops.tasks as tasks
from bertops.config import parse_params
from bertops.errors import ParamsError
from bertops.tasks.base import TaskFamily, TaskParamsBase

BASE = {"corpus": {"source": "c.csv"}, "model": {"name_or_path": "m"}, "registry": {"model_name": "r"}}


@pytest.mark.parametrize("name", tasks.task_names())
def test_every_builtin_family_is_complete(name):
    family = tasks.get_task(name)
    assert family.name == name and issubclass(family.params, TaskParamsBase)
    default = family.params.model_validate({"type": name})  # every knob has a default
    assert default.metric in family.params.model_fields["metric"].annotation.__args__
    for method in ("prepare", "encode", "build_module", "score"):  # no family leaves these to the base
        assert getattr(type(family), method) is not getattr(TaskFamily, method), (name, method)
    assert family.intended_use and family.auto_model is not None


def test_a_family_from_another_package_registers_through_an_entry_point(tmp_path, monkeypatch):
    (tmp_path / "echo_task.py").write_text('''
from typing import Literal
from bertops.tasks.sequence_classification import SequenceClassification, SequenceClassificationTask

class EchoParams(SequenceClassificationTask):
    type: Literal["echo"] = "echo"
    loudness: int = 3

class Echo(SequenceClassification):
    name = "echo"
    params = EchoParams
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = [EntryPoint(name="echo", value="echo_task:Echo", group=tasks.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(tasks, "entry_points", lambda group: fake if group == tasks.ENTRY_POINT_GROUP else [])
    tasks._locations.cache_clear()
    tasks.get_task.cache_clear()
    try:
        assert "echo" in tasks.task_names()
        params = parse_params({**BASE, "task": {"type": "echo", "loudness": 5}})
        assert params.task.loudness == 5 and tasks.task_of(params).name == "echo"
        with pytest.raises(ParamsError, match=r"task.loudness: .*integer"):
            parse_params({**BASE, "task": {"type": "echo", "loudness": "loud"}})
    finally:
        monkeypatch.undo()  # the entry point goes away again
        tasks._locations.cache_clear()
        tasks.get_task.cache_clear()
        sys.modules.pop("echo_task", None)
    with pytest.raises(ParamsError, match=r"task.type: unknown task 'echo' \(allowed: sequence_classification"):
        parse_params({**BASE, "task": {"type": "echo"}})
