"""Where a model came from: git state, DVC data hashes, params hash, the code the training and scoring stages
run, the base model's files, the corpus's data-registry revision, package versions."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(root: Path) -> dict[str, str]:
    commit = _git(root, "rev-parse", "HEAD")
    # dvc.lock and the cache: false outputs under reports/ change during every `dvc repro` before register
    # runs; they are results, not inputs, so they do not make the tree "dirty"
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock",
                  ":(exclude)reports")
    return {"git_commit": commit or "unknown", "git_dirty": "unknown" if status is None else str(bool(status)).lower()}


def dvc_out_hashes(root: Path) -> dict[str, str]:
    """md5 of every stage output recorded in dvc.lock (DVC writes each stage's entry as soon as it finishes)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {out["path"]: out.get("md5", "unknown") for stage in stages.values() for out in stage.get("outs", [])}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def package_versions(*names: str) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"cpu {platform.machine()} ({platform.processor() or 'unknown'}), {torch.get_num_threads()} threads"


def tree_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents; caches skipped)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", ".git"))
        for name in sorted(filenames):
            if name.endswith(".pyc"):
                continue
            full = Path(dirpath) / name
            digest.update(str(full.relative_to(path)).encode() + b"\0")
            with full.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


TRAINING_STAGES = ("train", "evaluate")  # the stages whose code makes the model and its test score


def stage_code_deps(root: Path, stages=TRAINING_STAGES) -> list[str]:
    """The deps of these dvc.yaml stages that no stage writes (its code: data outputs are hashed by DVC)."""
    dvc_file = Path(root) / "dvc.yaml"
    if not dvc_file.is_file():
        return []
    spec = (yaml.safe_load(dvc_file.read_text()) or {}).get("stages", {})
    outs = {str(o if isinstance(o, str) else next(iter(o))) for st in spec.values()
            for key in ("outs", "plots", "metrics") for o in st.get(key, [])}
    deps = {d for name in stages for d in spec.get(name, {}).get("deps", []) if isinstance(d, str)}
    return sorted(d for d in deps if d not in outs and "${" not in d)


def code_sha256(root: Path, stages=TRAINING_STAGES) -> str:
    """One hash of the code the training and scoring stages depend on (dvc.yaml's deps), as it is now."""
    digest = hashlib.sha256()
    for dep in stage_code_deps(root, stages):
        path = Path(root) / dep
        digest.update(dep.encode() + b"\0" + (tree_sha256(path) if path.exists() else "missing").encode())
    return digest.hexdigest()


def base_model_sha256(name_or_path: str, revision: str | None, root: Path) -> str:
    """The base model's files when it is a local checkpoint (an upstream TAPT/DAPT output, the packaged copy of a
    hub model), else its hub name and revision."""
    from bertops.modeling import resolve_model_path

    local = Path(resolve_model_path(name_or_path))
    if not local.is_absolute():
        local = Path(root) / local
    if local.is_dir():
        return tree_sha256(local)
    return f"hub:{name_or_path}@{revision or 'default'}"


def corpus_registry(root: Path, source: str) -> dict[str, str]:
    """Where a corpus file brought in with `dvc import` comes from: the data registry's URL, path and revision
    (from its .dvc file); {} for a corpus that is not imported."""
    dvc_file = Path(root) / f"{source}.dvc"
    if not dvc_file.is_file():
        return {}
    spec = yaml.safe_load(dvc_file.read_text()) or {}
    for dep in spec.get("deps", []):
        repo = dep.get("repo")
        if repo:
            return {"corpus_registry_url": str(repo.get("url", "")), "corpus_registry_path": str(dep.get("path", "")),
                    "corpus_registry_rev": str(repo.get("rev_lock") or repo.get("rev") or "")}
    return {}


def imported_files(root: Path) -> list[Path]:
    """The .dvc files of data brought in with `dvc import` from another repository (a data registry)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        # hidden directories (.venv, .git, .dvc), pipelines with their own dvc.yaml and bulky outputs are not ours
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in ("mlruns", "models", "pipelines",
                                                                                        "node_modules", "__pycache__"))
        for name in sorted(filenames):
            if name.endswith(".dvc"):
                path = Path(dirpath) / name
                spec = yaml.safe_load(path.read_text()) or {}
                if any(isinstance(dep, dict) and dep.get("repo") for dep in spec.get("deps", [])):
                    found.append(path)
    return found
