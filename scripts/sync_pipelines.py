"""Write pipelines/**/dvc.yaml from the root dvc.yaml (bertops/pipeline_files.py, the code `bertops init` uses
too): the same stages, code dependencies made relative to the pipeline directory, and an upstream pipeline's
checkpoint as a dependency of train. tests/test_pipelines_dirs.py fails when a file drifts from this.

    python scripts/sync_pipelines.py   # rewrite the root dvc.yaml's code deps, then every pipeline's dvc.yaml
"""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bertops.pipeline_files import is_upstream_checkpoint, pipeline_dvc_yaml  # noqa: F401 (tests use it)

# where a pipeline's runs put files named params.yaml that are not pipelines (MLflow artifacts, outputs)
NOT_PIPELINES = {"mlruns", "mlartifacts", ".bertops", "reports", "data", "models"}


def pipeline_dirs() -> list[Path]:
    found = (p.parent for p in (REPO / "pipelines").rglob("params.yaml"))
    return sorted(d for d in found if not NOT_PIPELINES & set(d.relative_to(REPO).parts))


def expected_dvc_yaml(pipeline_dir: Path) -> str:
    return pipeline_dvc_yaml(pipeline_dir, REPO)


def with_stage_deps(text: str) -> str:
    """dvc.yaml with each stage's bertops code deps replaced by what its import graph reaches
    (scripts/stage_deps.py); other deps (data, upstream outputs) and comments stay as they are."""
    deps = runpy.run_path(str(REPO / "scripts" / "stage_deps.py"))["stage_deps"]()
    lines, out, stage, in_deps = text.splitlines(keepends=True), [], None, False
    for line in lines:
        head = re.match(r"^  (\w+):\s*$", line)
        if head:
            stage, in_deps = head.group(1), False
        if line.startswith("    deps:"):
            in_deps = True
            out.append(line)
            out.extend(f"      - {path}\n" for path in deps.get(stage, []))
            continue
        if in_deps and line.startswith("      - "):
            if line.strip().startswith("- bertops"):
                continue  # replaced above
            out.append(line)
            continue
        in_deps = in_deps and line.startswith("      ")
        out.append(line)
    return "".join(out)


def main() -> int:
    root = REPO / "dvc.yaml"
    root.write_text(with_stage_deps(root.read_text()))
    print("wrote dvc.yaml (code deps from the stages' import graphs)")
    for pipeline_dir in pipeline_dirs():
        (pipeline_dir / "dvc.yaml").write_text(expected_dvc_yaml(pipeline_dir))
        print(f"wrote {(pipeline_dir / 'dvc.yaml').relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
