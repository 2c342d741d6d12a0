"""Write pipelines/**/dvc.yaml from the root dvc.yaml: the same stages, code dependencies made relative to the
pipeline directory, and, when the pipeline's model.name_or_path is another pipeline's output (a chained
pretrain -> fine-tune), that checkpoint as a dependency of train, so `dvc repro` runs the upstream first and
reruns only what changed. tests/test_pipelines_dirs.py fails when a file drifts from this.

    python scripts/sync_pipelines.py   # rewrite the root dvc.yaml's code deps, then every pipeline's dvc.yaml
"""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TRAIN_DEPS = "  train:\n    cmd: bertops stage train\n    deps:\n"
UPSTREAM_DEP = "      - ${model.name_or_path}  # the upstream pipeline's checkpoint: dvc repro runs that pipeline first\n"


# where a pipeline's runs put files named params.yaml that are not pipelines (MLflow artifacts, outputs)
NOT_PIPELINES = {"mlruns", "mlartifacts", ".bertops", "reports", "data", "models"}


def pipeline_dirs() -> list[Path]:
    found = (p.parent for p in (REPO / "pipelines").rglob("params.yaml"))
    return sorted(d for d in found if not NOT_PIPELINES & set(d.relative_to(REPO).parts))


def is_upstream_checkpoint(name_or_path: str) -> bool:
    """A path into another pipeline of this repo (`../pretrain/models/best`), not a hub name."""
    return name_or_path.startswith("../")


def expected_dvc_yaml(pipeline_dir: Path) -> str:
    prefix = "../" * len(pipeline_dir.relative_to(REPO).parts)
    text = (REPO / "dvc.yaml").read_text().replace("      - bertops/", f"      - {prefix}bertops/")
    params = yaml.safe_load((pipeline_dir / "params.yaml").read_text())
    if is_upstream_checkpoint(str(params["model"]["name_or_path"])):
        assert text.count(TRAIN_DEPS) == 1, "dvc.yaml's train stage no longer starts as expected"
        text = text.replace(TRAIN_DEPS, TRAIN_DEPS + UPSTREAM_DEP)
    return text


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
