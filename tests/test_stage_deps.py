"""dvc.yaml's code deps cover what each stage imports (else `dvc repro` could call stale outputs up to date), and
the package has no import cycles."""

import runpy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPS = runpy.run_path(str(REPO / "scripts" / "stage_deps.py"))
STAGES = DEPS["stage_modules"]()


def listed_code_deps(stage: str) -> list[str]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    return [d for d in spec["deps"] if isinstance(d, str) and d.startswith("bertops")]


@pytest.mark.parametrize("stage", list(STAGES))
def test_dvc_yaml_lists_every_file_the_stage_imports(stage):
    listed = [REPO / d for d in listed_code_deps(stage)]
    imported = DEPS["closure"](STAGES[stage])
    uncovered = sorted(str(f.relative_to(REPO)) for f in imported
                       if not any(f == d or d in f.parents for d in listed))
    assert not uncovered, f"dvc.yaml stage {stage} misses {uncovered}; run python scripts/sync_pipelines.py"


def test_the_walk_finds_what_each_stage_really_runs():
    """The graph follows imports inside functions and the task registry's modules named by string."""
    rel = {stage: {str(f.relative_to(REPO)) for f in DEPS["closure"](module)} for stage, module in STAGES.items()}
    assert {"bertops/tasks/masked_lm.py", "bertops/mlm/masking.py", "bertops/qa/windows.py",
            "bertops/scalar_mix.py", "bertops/config.py"} <= rel["train"]
    assert {"bertops/qa/squad.py", "bertops/corpora/token_readers.py", "bertops/vocab_coverage.py"} <= rel["prepare"]
    assert {"bertops/tasks/pyfunc.py", "bertops/gate.py", "bertops/model_card.py"} <= rel["register"]
    assert "bertops/gate.py" not in rel["train"] and "bertops/predict.py" not in rel["train"]


def _graph(all_levels: bool) -> dict[str, set[str]]:
    files = [p for p in [*(REPO / "bertops").rglob("*.py"), *(REPO / "flows").glob("*.py")]
             if "__pycache__" not in p.parts]
    graph = {}
    for path in files:
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        tree_imports = DEPS["imported_modules"](path, all_levels)
        if all_levels:
            import ast
            tree_imports |= {n.module for n in ast.walk(ast.parse(path.read_text()))
                             if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("flows")}
        graph[module] = tree_imports - {module}
    return graph


def test_no_import_cycles_at_module_level():
    graph = _graph(all_levels=False)
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("a,b", [("bertops.cli", "flows.study"), ("bertops.mlm.masking", "bertops.training.data"),
                                 ("bertops.scalar_mix", "bertops.training.strategies")])
def test_the_three_old_cycles_are_broken_even_through_function_level_imports(a, b):
    graph = _graph(all_levels=True)
    assert not (b in graph[a] and a in graph[b]), f"{a} and {b} import each other"
