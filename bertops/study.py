"""Studies: a grid of fine-tuning runs (strategies, optimizer, epochs, training-data share, seeds) on the project's
prepared data, each run the same train and evaluate stages the pipeline uses, nested under one MLflow parent run,
summarised per setting (mean, sd, min, max, share of failed runs) in reports/studies/<name>/.

A study file (YAML):

    name: optimizer-small-mr
    params: params.yaml            # the project's params; every run starts from them
    fixed: {train.max_train_examples: 1000}      # overrides for every run
    grid:                          # every combination of these
      train.optimizer: [adamw, bertadam]
      train.seed: [0, 1, 2, 3, 4]
      # a key without a dot is a named axis whose values set several keys together, e.g.
      # strategy: [{finetune.encoder: full}, {finetune.encoder: lora, train.lr: 5.0e-4}]
    parallel: 1                    # runs at once

Runs differ only in `train.*` and `finetune.*` (the prepared data is shared). A run whose result.json exists is
not run again, so a killed study resumes where it stopped.
"""

from __future__ import annotations

import copy
import hashlib
import io
import itertools
import json
import logging
import re
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bertops.config import Params, parse_params
from bertops.errors import BertopsError, ParamsError
from bertops.files import write_atomic
from bertops.layout import Layout

log = logging.getLogger(__name__)
STUDY_SECTIONS = ("train", "finetune")
SEED_KEY = "train.seed"


class StudyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    params: str = "params.yaml"
    fixed: dict[str, Any] = {}
    grid: dict[str, list[Any]] = Field(min_length=1)
    parallel: int = Field(1, ge=1, le=64)


@dataclass(frozen=True)
class StudyRun:
    overrides: dict[str, Any]  # the grid values of this run (fixed ones are in every run)
    params: Params

    @property
    def key(self) -> str:
        text = json.dumps(self.overrides, sort_keys=True, default=str)
        readable = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in sorted(self.overrides.items()))
        readable = re.sub(r"[^A-Za-z0-9._-]+", "-", readable)[:80]
        return f"{readable}_{hashlib.sha256(text.encode()).hexdigest()[:8]}"

    @property
    def setting(self) -> dict[str, Any]:
        """What this run compares: its grid values without the seed."""
        return {k: v for k, v in self.overrides.items() if k != SEED_KEY}


@dataclass(frozen=True)
class Study:
    name: str
    file: Path
    project: Path
    runs: list[StudyRun]
    parallel: int

    @property
    def dir(self) -> Path:
        return self.project / "reports" / "studies" / self.name

    def run_dir(self, run: StudyRun) -> Path:
        return self.dir / "runs" / run.key

    @property
    def base_params(self) -> Params:
        return self.runs[0].params


def _apply(raw: dict, dotted: str, value, where: str) -> None:
    section, _, key = dotted.partition(".")
    if section not in STUDY_SECTIONS or not key:
        raise ParamsError(f"{where}: {dotted!r}: a study varies train.* and finetune.* keys only (the prepared "
                          f"data is shared by every run)")
    node = raw.setdefault(section, {})
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def load_study(path: str | Path, project: str | Path = ".") -> Study:
    path, project = Path(path), Path(project).resolve()
    if not path.is_file():
        raise BertopsError(f"{path}: study file not found")
    try:
        spec = StudyFile.model_validate(yaml.safe_load(path.read_text()) or {})
    except (ValidationError, yaml.YAMLError) as exc:
        raise ParamsError(f"{path}: invalid study: {exc}") from None
    params_file = project / spec.params
    if not params_file.is_file():
        raise ParamsError(f"{path}: params: {params_file} not found")
    base = yaml.safe_load(params_file.read_text())
    for key, value in spec.fixed.items():
        _apply(base, key, value, f"{path}: fixed")
    keys = list(spec.grid)
    runs = []
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        raw = copy.deepcopy(base)
        overrides = {}
        for key, value in zip(keys, values):
            if "." in key:
                _apply(raw, key, value, f"{path}: grid")
                overrides[key] = value
            elif isinstance(value, dict) and value:  # a named axis: each value sets several keys together
                for dotted, setting in value.items():
                    _apply(raw, dotted, setting, f"{path}: grid.{key}")
                overrides[key] = ",".join(f"{k}={v}" for k, v in value.items())
            else:
                raise ParamsError(f"{path}: grid.{key}: a key without a dot is a named axis whose values are "
                                  f"mappings of train.*/finetune.* keys; got {value!r}")
        label = ", ".join(f"{k}={v}" for k, v in overrides.items())
        run_params = parse_params(raw, f"{path} (run {label})")  # every run checked first
        if run_params.train.strategy != "auto":
            # the runs train inside this process: a multi-process launch would re-run the whole study per rank
            raise ParamsError(f"{path} (run {label}): train.strategy: {run_params.train.strategy}: a study trains "
                              f"its runs in one process (allowed: auto; `parallel` runs several at once)")
        runs.append(StudyRun(overrides, run_params))
    return Study(spec.name, path, project, runs, spec.parallel)


def run_one(study: Study, run: StudyRun, parent_run_id: str) -> dict:
    """Train and evaluate one run with the pipeline's own stages; its model is deleted afterwards (its size is
    kept), its reports stay under the study's runs/ folder."""
    from bertops.stages.evaluate import evaluate
    from bertops.stages.train import train

    root = study.run_dir(run)
    result_file = root / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(run.params.model_dump(mode="json"), sort_keys=False))
    layout = Layout(root, project=study.project)
    summary = train(run.params, layout, run_tags={"mlflow.parentRunId": parent_run_id, "bertops.study": study.name,
                                                  "bertops.study_run": run.key})
    metrics = evaluate(run.params, layout)
    shutil.rmtree(layout.model_dir, ignore_errors=True)
    shutil.rmtree(layout.work_dir, ignore_errors=True)
    metric = run.params.task.metric
    result = {"key": run.key, "overrides": run.overrides, "metric": metric, "value": metrics[metric],
              "run_id": summary["run_id"], **{k: summary.get(k) for k in (
                  "best_epoch", "epochs_trained", "fit_seconds", "trainable_params", "total_params",
                  "checkpoint_mb", "train_examples")}}
    result["seconds_per_epoch"] = round(result["fit_seconds"] / max(result["epochs_trained"] or 1, 1), 2)
    write_atomic(result_file, json.dumps(result, indent=1) + "\n")  # a kill mid-write leaves no half result
    return result


def parent_run(study: Study) -> str:
    """The study's MLflow parent run: created once, reused when the study resumes."""
    from mlflow import MlflowClient

    from bertops import tracking

    marker = study.dir / "parent_run.json"
    experiment_id = tracking.configure(study.base_params, Layout(study.project))
    client = MlflowClient()
    if marker.is_file():
        run_id = json.loads(marker.read_text())["run_id"]
        client.update_run(run_id, status="RUNNING")
        return run_id
    study.dir.mkdir(parents=True, exist_ok=True)
    run = client.create_run(experiment_id, run_name=f"study-{study.name}", tags={"bertops.study": study.name})
    client.log_artifact(run.info.run_id, str(study.file))
    write_atomic(marker, json.dumps({"run_id": run.info.run_id}) + "\n")
    return run.info.run_id


def majority_baseline(study: Study) -> float | None:
    """The test score of the task family's trivial predictor (always the most common class; no entity; the
    training mean): a run no better than this failed. None where the family defines none."""
    from bertops.tasks import task_of

    params = study.base_params
    rows = [json.loads(line) for line in Layout(study.project).split("test").open()]
    return task_of(params).baseline(params.task.metric, rows)


def summarize(study: Study, results: list[dict], errors: dict[str, str]) -> dict:
    """Per setting: n, mean, sd, min, max, failed share; writes summary.{json,csv,md} and a plot."""
    import csv

    metric = study.base_params.task.metric
    from bertops.tasks import task_of

    higher = task_of(study.base_params).metric_mode(metric) == "max"
    baseline = majority_baseline(study)
    by_setting: dict[str, dict] = {}
    for run in study.runs:
        label = ", ".join(f"{k}={v}" for k, v in run.setting.items()) or "(all)"
        entry = by_setting.setdefault(label, {"setting": run.setting, "values": [], "errors": 0, "seconds": [],
                                              "trainable_params": None, "checkpoint_mb": None})
        result = next((r for r in results if r["key"] == run.key), None)
        if result is None:
            entry["errors"] += run.key in errors
            continue
        entry["values"].append(result["value"])
        entry.setdefault("by_seed", {})[run.overrides.get(SEED_KEY, run.params.train.seed)] = result["value"]
        entry["seconds"].append(result["seconds_per_epoch"])
        entry["trainable_params"], entry["checkpoint_mb"] = result["trainable_params"], result["checkpoint_mb"]
    rows = []
    first = next(iter(by_setting.values())).get("by_seed", {})
    for label, e in by_setting.items():
        v = e["values"]
        failed = None
        if baseline is not None and v:
            failed = sum((x <= baseline + 1e-9) if higher else (x >= baseline - 1e-9) for x in v) / len(v)
        rows.append({"setting": label, "runs": len(v), "errors": e["errors"],
                     "mean": statistics.fmean(v) if v else None, "sd": statistics.stdev(v) if len(v) > 1 else None,
                     "min": min(v) if v else None, "max": max(v) if v else None, "failed_share": failed,
                     "seconds_per_epoch": statistics.fmean(e["seconds"]) if e["seconds"] else None,
                     "trainable_params": e["trainable_params"], "checkpoint_mb": e["checkpoint_mb"],
                     "values": v, "vs_first": _paired(e.get("by_seed", {}), first, higher)})
    summary = {"study": study.name, "metric": metric, "majority_baseline": baseline, "rows": rows,
               "errors": errors}
    out = study.dir
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    columns = ["setting", "runs", "errors", "mean", "sd", "min", "max", "failed_share", "seconds_per_epoch",
               "trainable_params", "checkpoint_mb"]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "summary.csv", table.getvalue())
    write_atomic(out / "summary.md", summary_markdown(summary))
    plot(summary, out / "summary.png")
    return summary


def _paired(values: dict, reference: dict, higher: bool) -> dict | None:
    """Against the first setting, seed by seed (same seed = same data order and head init): the mean
    difference and on how many seeds this setting did better."""
    seeds = sorted(set(values) & set(reference))
    if not seeds or values is reference:
        return None
    diffs = [values[s] - reference[s] for s in seeds]
    better = sum((d > 0) if higher else (d < 0) for d in diffs)
    return {"mean_diff": statistics.fmean(diffs), "better": better, "seeds": len(seeds)}


def _fmt(value, digits=4) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def summary_markdown(summary: dict) -> str:
    lines = [f"# Study {summary['study']}: test {summary['metric']}", ""]
    if summary["majority_baseline"] is not None:
        lines += [f"A run failed when it scored no better than always predicting the majority class "
                  f"({summary['majority_baseline']:.4f}).", ""]
    first = summary["rows"][0]["setting"] if summary["rows"] else ""
    lines += [f"| setting | runs | mean | sd | min | max | failed | vs {first} (same seeds) | s/epoch | "
              "trainable params | checkpoint MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        failed = "n/a" if r["failed_share"] is None else f"{r['failed_share']:.0%}"
        errors = f" (+{r['errors']} errors)" if r["errors"] else ""
        lines.append(f"| {r['setting']} | {r['runs']}{errors} | "
                     f"{_fmt(r['mean'])} | {_fmt(r['sd'])} | {_fmt(r['min'])} | {_fmt(r['max'])} | {failed} | "
                     f"{_vs(r.get('vs_first'))} | "
                     f"{_fmt(r['seconds_per_epoch'], 1)} | {_fmt(r['trainable_params'])} | "
                     f"{_fmt(r['checkpoint_mb'], 2)} |")
    for key, error in summary["errors"].items():
        lines.append(f"\nRun {key} failed: {error.splitlines()[-1] if error else '?'}")
    return "\n".join(lines) + "\n"


def _vs(paired: dict | None) -> str:
    if not paired:
        return "-"
    return f"{paired['mean_diff']:+.4f}, better on {paired['better']}/{paired['seeds']}"


def plot(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(rows)), 4))
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["values"]), r["values"], alpha=0.7, color="tab:blue")
        if r["mean"] is not None:
            ax.plot([i - 0.25, i + 0.25], [r["mean"]] * 2, color="black")
    if summary["majority_baseline"] is not None:
        ax.axhline(summary["majority_baseline"], color="tab:red", linestyle="--", label="majority class")
        ax.legend(loc="lower right")
    ax.set_xticks(range(len(rows)), [r["setting"].replace(", ", "\n") for r in rows], fontsize=8)
    ax.set_ylabel(f"test {summary['metric']}")
    ax.set_title(f"study {summary['study']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m bertops.study run-one STUDY KEY PARENT_RUN_ID --project-dir DIR`: one run in its own process
    (the study flow starts these: each run gets fresh RNG and GPU state, and one crash does not end the study)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bertops.study")
    parser.add_argument("command", choices=["run-one"])
    parser.add_argument("study", type=Path)
    parser.add_argument("key")
    parser.add_argument("parent_run_id")
    parser.add_argument("--project-dir", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    study = load_study(args.study, args.project_dir)
    run = next((r for r in study.runs if r.key == args.key), None)
    if run is None:
        raise SystemExit(f"{args.study}: no run {args.key!r}")
    print(json.dumps(run_one(study, run, args.parent_run_id)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
