"""A pipeline directory's dvc.yaml, written from the repo's root dvc.yaml: the same stages, code dependencies made
relative to the pipeline directory, and, when the pipeline's model.name_or_path is another pipeline's output (a
chained pretrain -> fine-tune), that checkpoint as a dependency of train, so that `dvc repro` runs the upstream
first and reruns only what changed. scripts/sync_pipelines.py and `bertops init` both write pipelines with it."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

TRAIN_DEPS = "  train:\n    cmd: bertops stage train\n    deps:\n"
UPSTREAM_DEP = "      - ${model.name_or_path}  # the upstream pipeline's checkpoint: dvc repro runs that pipeline first\n"


def is_upstream_checkpoint(name_or_path: str) -> bool:
    """A path into another pipeline of this repo (`../pretrain/models/best`), not a hub name."""
    return name_or_path.startswith("../")


def pipeline_dvc_yaml(pipeline_dir: Path, repo_root: Path) -> str:
    """The dvc.yaml of `pipeline_dir` (which holds its params.yaml), a directory inside `repo_root`."""
    relative = Path(os.path.relpath(Path(pipeline_dir).resolve(), Path(repo_root).resolve()))
    if relative.parts and relative.parts[0] == "..":
        raise ValueError(f"{pipeline_dir} is not inside {repo_root}")
    prefix = "../" * len(relative.parts)
    text = (Path(repo_root) / "dvc.yaml").read_text().replace("      - bertops/", f"      - {prefix}bertops/")
    params = yaml.safe_load((Path(pipeline_dir) / "params.yaml").read_text())
    if is_upstream_checkpoint(str(params["model"]["name_or_path"])):
        assert text.count(TRAIN_DEPS) == 1, "dvc.yaml's train stage no longer starts as expected"
        text = text.replace(TRAIN_DEPS, TRAIN_DEPS + UPSTREAM_DEP)
    return text
