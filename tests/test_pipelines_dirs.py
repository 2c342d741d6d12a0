"""Further pipelines under pipelines/<name>/ run the same stages as the root dvc.yaml: their dvc.yaml must be the
root one with code dependencies one level up, and their params must validate."""

from pathlib import Path

import pytest

from bertops.config import load_params

REPO = Path(__file__).resolve().parents[1]
PIPELINES = sorted(p for p in (REPO / "pipelines").iterdir() if (p / "dvc.yaml").is_file())


def expected_dvc_yaml(pipeline_dir: Path) -> str:
    prefix = "../" * len(pipeline_dir.relative_to(REPO).parts)
    return (REPO / "dvc.yaml").read_text().replace("      - bertops/", f"      - {prefix}bertops/")


@pytest.mark.parametrize("pipeline_dir", PIPELINES, ids=lambda p: p.name)
def test_pipeline_dir_matches_root_stages_and_params_validate(pipeline_dir):
    assert (pipeline_dir / "dvc.yaml").read_text() == expected_dvc_yaml(pipeline_dir), (
        f"{pipeline_dir}/dvc.yaml drifted from dvc.yaml; regenerate it with: "
        f"sed 's#^      - bertops/#      - ../../bertops/#' dvc.yaml > {pipeline_dir.relative_to(REPO)}/dvc.yaml")
    params = load_params(pipeline_dir / "params.yaml")
    assert (pipeline_dir / params.corpus.source).resolve().is_file()
