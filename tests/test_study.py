"""The study flow on the tiny model: a grid of runs nested under one MLflow parent run, a summary with the
failed-run share, and a resumed study that redoes only what did not finish."""

import json
import subprocess
import sys

import pytest
import yaml
from mlflow import MlflowClient

from bertops import tracking
from bertops.config import load_params
from bertops.errors import ParamsError
from bertops.layout import Layout
from bertops.study import load_study

STUDY = {"name": "optim-tiny", "fixed": {"train.epochs": 6, "train.early_stopping_patience": None},
         "grid": {"train.optimizer": ["adamw", "bertadam"], "train.seed": [0, 1]}, "parallel": 2}


def _run_study(root, study_file):
    done = subprocess.run([sys.executable, "-m", "flows.study", str(study_file), "--project-dir", str(root)],
                          capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((root / "reports" / "studies" / "optim-tiny" / "summary.json").read_text())


def test_study_runs_the_grid_nested_and_resumes(tiny_project):
    root = tiny_project
    study_file = root / "study.yaml"
    study_file.write_text(yaml.safe_dump(STUDY))
    summary = _run_study(root, study_file)
    rows = {r["setting"]: r for r in summary["rows"]}
    assert set(rows) == {"train.optimizer=adamw", "train.optimizer=bertadam"}
    assert all(r["runs"] == 2 and r["errors"] == 0 for r in rows.values())
    # the majority class's share of the test split (the synthetic corpus is balanced; a hash split nearly so)
    test_labels = [json.loads(line)["label"] for line in (root / "data" / "prepared" / "test.jsonl").open()]
    majority = max(test_labels.count(label) for label in set(test_labels)) / len(test_labels)
    assert summary["majority_baseline"] == pytest.approx(majority) and abs(majority - 0.5) < 0.1
    adamw = rows["train.optimizer=adamw"]
    assert adamw["mean"] >= 0.8 and adamw["failed_share"] == 0.0, adamw  # the tiny model learns in 6 epochs
    assert adamw["min"] <= adamw["mean"] <= adamw["max"] and adamw["sd"] is not None
    paired = rows["train.optimizer=bertadam"]["vs_first"]  # seed by seed against the first setting
    assert paired["seeds"] == 2 and paired["mean_diff"] == pytest.approx(
        rows["train.optimizer=bertadam"]["mean"] - adamw["mean"])
    out = root / "reports" / "studies" / "optim-tiny"
    for name in ("summary.md", "summary.csv", "summary.png"):
        assert (out / name).is_file()
    assert "| train.optimizer=bertadam | 2 |" in (out / "summary.md").read_text()

    params = load_params(root / "params.yaml")
    tracking.configure(params, Layout(root))
    client = MlflowClient()
    parent = json.loads((out / "parent_run.json").read_text())["run_id"]
    children = client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 4
    assert {c.data.params["train.optimizer"] for c in children} == {"adamw", "bertadam"}
    assert all("test_accuracy" in c.data.metrics for c in children)
    assert {a.path for a in client.list_artifacts(parent, "study")} >= {"study/summary.md", "study/summary.png"}

    # a killed study: one run never finished; the rerun trains only that one and keeps the others
    runs = sorted((out / "runs").iterdir())
    (runs[0] / "result.json").unlink()
    kept = json.loads((runs[1] / "result.json").read_text())["run_id"]
    summary = _run_study(root, study_file)
    assert json.loads((runs[1] / "result.json").read_text())["run_id"] == kept
    assert sum(r["runs"] for r in summary["rows"]) == 4
    children = client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 5  # 4 + the one rerun


def test_bad_study_files_name_the_problem(tiny_project):
    root = tiny_project
    cases = (({"grid": {"corpus.source": ["x.csv"]}}, "train.\\* and finetune.\\* keys only"),
             ({"grid": {"train.optimizer": ["sgd"]}}, r"(?s)run train.optimizer=sgd.*train.optimizer: .*bertadam"),
             ({"grid": {"finetune.encoder": ["frozen"]}, "fixed": {"finetune.freeze_layers": 1}},
              "apply to encoder: full"),
             ({"grid": {"train.seed": [0]}, "fixed": {"train.strategy": "ddp", "train.devices": 2}},
              "train.strategy: ddp: a study trains its runs in one process"),
             ({"grid": {}}, "grid"))
    for change, message in cases:
        (root / "bad.yaml").write_text(yaml.safe_dump({"name": "bad", **change}))
        with pytest.raises(ParamsError, match=message):
            load_study(root / "bad.yaml", root)
    good = load_study(_write(root, STUDY), root)
    assert len(good.runs) == 4 and good.parallel == 2
    assert len({r.key for r in good.runs}) == 4


def _write(root, spec):
    path = root / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_shipped_study_files_validate():
    from conftest import REPO

    files = sorted((REPO / "studies").glob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        study = load_study(path, REPO)
        assert study.name == path.stem and len(study.runs) >= 6, path


def test_flow_logs_a_progress_bar_once_in_its_final_state(tmp_path):
    """Subprocess output reaches the Prefect log line by line; a bar's carriage-return redraws are one line."""
    from flows.retrain import _run

    class Logger:
        def __init__(self):
            self.lines = []

        def info(self, line):
            self.lines.append(line)

    logger = Logger()
    code, _ = _run([sys.executable, "-c", "import sys; sys.stdout.write('start\\n\\rEpoch 0: 10%\\rEpoch 0: 100%\\n"
                    "done\\n')"], tmp_path, logger)
    assert code == 0
    assert logger.lines == ["start", "Epoch 0: 100%", "done"]
