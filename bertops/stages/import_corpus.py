"""Stage 1, import: bring the corpus source into data/raw/ (a DVC-tracked output)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from bertops.config import Params
from bertops.corpora.packaged import is_manifest, manifest_rows
from bertops.errors import CorpusError
from bertops.layout import Layout
from bertops.tasks import task_of

log = logging.getLogger(__name__)


def _resolve(layout: Layout, name: str, field: str) -> Path:
    path = Path(name)
    if not path.is_absolute():
        path = layout.root / path
    if not path.exists():
        raise CorpusError(name, None, f"{field}: file not found")
    return path


def _check_tracked(layout: Layout, name: str) -> None:
    """DVC reruns import when a dep changes: a fixed test file must be one of the import stage's deps."""
    import yaml

    dvc_file = layout.root / "dvc.yaml"
    if not dvc_file.is_file():
        return
    deps = (yaml.safe_load(dvc_file.read_text()) or {}).get("stages", {}).get("import", {}).get("deps", [])
    if name not in deps:
        raise CorpusError(dvc_file, None, f"corpus.test_source {name!r} is not a dep of the import stage, so DVC "
                                          f"would not notice when it changes: add `- {name}` to stages.import.deps")


def import_corpus(params: Params, layout: Layout) -> Path:
    source = _resolve(layout, params.corpus.source, "corpus.source")
    test_source = params.corpus.test_source
    if test_source is not None:
        test_path = _resolve(layout, test_source, "corpus.test_source")
        _check_tracked(layout, test_source)
    if layout.raw_dir.exists():
        shutil.rmtree(layout.raw_dir)
    layout.raw_dir.mkdir(parents=True)
    if is_manifest(source):
        target = layout.raw_dir / "corpus.jsonl"
        count = 0
        with target.open("w") as out:
            for row in manifest_rows(source):
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        log.info("imported %d rows from packaged corpus %s into %s", count, source.name, target)
    else:
        # A user's own file is copied byte for byte, so that prepare's file:line errors match their file.
        # the family names the suffix, so that prepare reads the copy in the format the user meant
        suffix = task_of(params).raw_suffix(source, params.corpus)
        target = layout.raw_dir / f"corpus.{suffix}"
        if source.is_dir():  # a folder corpus: its tree as it is (dotfiles and caches left behind)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*", "__pycache__"))
        else:
            shutil.copyfile(source, target)
        log.info("imported %s into %s", source, target)
    if test_source is not None:
        test_target = layout.raw_dir / f"test.{task_of(params).raw_suffix(test_path, params.corpus)}"
        shutil.copyfile(test_path, test_target)
        log.info("imported the fixed test split %s into %s", test_path, test_target)
    return target
