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


def import_corpus(params: Params, layout: Layout) -> Path:
    source = Path(params.corpus.source)
    if not source.is_absolute():
        source = layout.root / source
    if not source.is_file():
        raise CorpusError(params.corpus.source, None, "corpus.source: file not found")
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
        shutil.copyfile(source, target)
        log.info("imported %s into %s", source, target)
    return target
