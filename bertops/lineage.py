"""Where a model came from: git state, DVC data hashes, params hash, package versions."""

from __future__ import annotations

import hashlib
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
