"""Further pipelines under pipelines/ run the same stages as the root dvc.yaml: their dvc.yaml must be what
scripts/sync_pipelines.py writes (the root one with code dependencies made relative, plus the upstream checkpoint
for a chained fine-tune), and their params must validate."""

import runpy
from pathlib import Path

import pytest

from bertops.config import load_params

REPO = Path(__file__).resolve().parents[1]
SYNC = runpy.run_path(str(REPO / "scripts" / "sync_pipelines.py"))
PIPELINES = SYNC["pipeline_dirs"]()


def test_every_pipeline_is_found():
    names = {str(p.relative_to(REPO / "pipelines")) for p in PIPELINES}
    assert {"wnut-ner", "mr-tapt/pretrain", "mr-tapt/finetune", "mr-dapt/pretrain", "mr-dapt/finetune"} <= names


@pytest.mark.parametrize("pipeline_dir", PIPELINES, ids=lambda p: str(p.relative_to(REPO / "pipelines")))
def test_pipeline_dir_matches_root_stages_and_params_validate(pipeline_dir):
    assert (pipeline_dir / "dvc.yaml").read_text() == SYNC["expected_dvc_yaml"](pipeline_dir), (
        f"{pipeline_dir}/dvc.yaml drifted from dvc.yaml; regenerate with: python scripts/sync_pipelines.py")
    params = load_params(pipeline_dir / "params.yaml")
    source = pipeline_dir / params.corpus.source
    # a chained pretraining reads another pipeline's prepared split: an output of that pipeline, not a file in git
    assert source.resolve().is_file() or "/data/prepared/" in params.corpus.source, source
    if SYNC["is_upstream_checkpoint"](params.model.name_or_path):
        upstream = (pipeline_dir / params.model.name_or_path).resolve()
        assert upstream.parts[-2:] == ("models", "best") and (upstream.parents[1] / "dvc.yaml").is_file()


def test_task_adaptive_pretraining_reads_only_the_finetune_training_split():
    pretrain = load_params(REPO / "pipelines" / "mr-tapt" / "pretrain" / "params.yaml")
    finetune = load_params(REPO / "pipelines" / "mr-tapt" / "finetune" / "params.yaml")
    assert pretrain.corpus.source == "../finetune/data/prepared/train.jsonl"
    assert pretrain.task.type == "masked_lm" and finetune.model.name_or_path == "../pretrain/models/best"
    root = load_params(REPO / "params.yaml")
    # the comparison with plain fine-tuning changes only the starting checkpoint
    for section in ("train", "corpus"):
        mine, theirs = getattr(finetune, section).model_dump(), getattr(root, section).model_dump()
        mine.pop("source", None), theirs.pop("source", None)
        assert mine == theirs, section
