"""Lineage helpers: the dirty flag means uncommitted inputs (code, params), not the pipeline's own results."""

import subprocess

from bertops.lineage import dvc_out_hashes, git_state


def _git(root, *args):
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True,
                   capture_output=True)


def test_dirty_flag_ignores_dvc_lock_and_reports(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text("{}")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "params.yaml").write_text("train: {lr: 1}\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "init")
    assert git_state(tmp_path)["git_dirty"] == "false"
    assert len(git_state(tmp_path)["git_commit"]) == 40

    (tmp_path / "reports" / "metrics.json").write_text('{"accuracy": 0.9}')
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert git_state(tmp_path)["git_dirty"] == "false"  # what `dvc repro` itself rewrote

    (tmp_path / "params.yaml").write_text("train: {lr: 2}\n")
    assert git_state(tmp_path)["git_dirty"] == "true"


def test_outside_git_and_dvc(tmp_path):
    assert git_state(tmp_path) == {"git_commit": "unknown", "git_dirty": "unknown"}
    assert dvc_out_hashes(tmp_path) == {}
