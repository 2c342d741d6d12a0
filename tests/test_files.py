"""Atomic writes: a kill or an error mid-write leaves the previous file whole and no temporary file behind."""

import os

import pytest

from bertops.files import write_atomic


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "result.json"
    write_atomic(target, '{"value": 1}\n')
    assert target.read_text() == '{"value": 1}\n'

    def killed(src, dst):
        raise KeyboardInterrupt  # what a signal does between the write and the rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, '{"value": 2}\n')
    assert target.read_text() == '{"value": 1}\n'
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]
    monkeypatch.undo()
    write_atomic(target, '{"value": 2}\n')
    assert target.read_text() == '{"value": 2}\n'
