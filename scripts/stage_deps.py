"""Which bertops files each pipeline stage imports: the closure of `import bertops...` / `from bertops... import`
statements (at module level and inside functions) from the stage's module, plus the task families the registry
loads by name (bertops/tasks/__init__.py), plus the packages' __init__ files. dvc.yaml lists these (a folder
when every file in it is imported) as each stage's code deps; scripts/sync_pipelines.py writes them there and
tests/test_stage_deps.py checks that they cover the graph.

    python scripts/stage_deps.py     # print each stage's deps
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "bertops"
NATIVE_SUFFIXES = (".cpp", ".cc", ".h")
MODULE_STRING = re.compile(r"^(bertops(?:\.\w+)+):\w+$")  # "bertops.tasks.masked_lm:MaskedLanguageModeling"


def module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, all_levels: bool = True) -> set[str]:
    """bertops modules `path` imports (`all_levels`: also inside functions and classes)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = ast.walk(tree) if all_levels else iter(tree.body)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "bertops"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bertops":
            found.add(node.module)
            # `from bertops import tracking`: a submodule, when there is one
            found |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
        elif all_levels and isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = MODULE_STRING.match(node.value)
            if match:  # a module the code loads by name (the task registry)
                found.add(match.group(1))
    return {m for m in found if module_file(m)}


def with_parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def is_trivial(path: Path) -> bool:
    """A file that runs nothing (empty, or a docstring only): a package marker, not code a stage depends on."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def source_files(path: Path) -> set[Path]:
    """Non-Python sources a module builds at run time (C++ kernels): files under its folder named by a string
    constant of the module ("cpu_kernels.cpp")."""
    names = {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
             and isinstance(n.value, str) and n.value.endswith(NATIVE_SUFFIXES) and "/" not in n.value}
    return {f for name in names for f in path.parent.rglob(name) if "__pycache__" not in f.parts}


def closure(start: str, all_levels: bool = True) -> set[Path]:
    """Files of every bertops module reachable from module `start` (package markers left out), and the native
    sources those modules build."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        for m in with_parents(module):
            if m in seen or not module_file(m):
                continue
            seen.add(m)
            todo.extend(imported_modules(module_file(m), all_levels))
    files = {module_file(m) for m in seen if not is_trivial(module_file(m))}
    return files | {f for path in files for f in source_files(path)}


def stage_modules() -> dict[str, str]:
    tree = ast.parse((PACKAGE / "stages" / "__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "STAGE_FUNCTIONS":
            return {k.value: v.elts[0].value for k, v in zip(node.value.keys, node.value.values)}
    raise RuntimeError("bertops/stages/__init__.py: STAGE_FUNCTIONS not found")


def covering_deps(files: set[Path]) -> list[str]:
    """The fewest repo-relative paths covering `files`: a folder under bertops/ when all its .py files are in."""
    files = {f.resolve() for f in files}
    out: list[str] = []

    def visit(folder: Path):
        inside = sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts and not is_trivial(p))
        if folder != PACKAGE and inside and all(p in files for p in inside):
            out.append(str(folder.relative_to(REPO)))
            return
        for p in sorted(folder.iterdir()):
            if p.is_file() and p in files:
                out.append(str(p.relative_to(REPO)))
        for sub in sorted(d for d in folder.iterdir() if d.is_dir() and d.name != "__pycache__"):
            visit(sub)
    visit(PACKAGE)
    return out


def stage_deps() -> dict[str, list[str]]:
    return {stage: covering_deps(closure(module)) for stage, module in stage_modules().items()}


if __name__ == "__main__":
    for stage, deps in stage_deps().items():
        print(stage, *deps, sep="\n  ")
