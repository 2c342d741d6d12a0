"""The study flow: every run of a study file as a Prefect task (each in its own process, `parallel` at once),
nested MLflow runs under one parent run, and the summary table and plot in reports/studies/<name>/, logged to
the parent run and published as a Prefect artifact. A killed study resumes without redoing finished runs.

Runs in Prefect's ephemeral mode with no server:  python -m flows.study STUDY.yaml [--project-dir DIR]
(or `bertops study STUDY.yaml`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.retrain import _run


@task(name="study-run", task_run_name="{key}")
def study_run(study_file: str, project_dir: str, key: str, parent_run_id: str) -> dict:
    cmd = [sys.executable, "-m", "bertops.study", "run-one", study_file, key, parent_run_id,
           "--project-dir", project_dir]
    code, lines = _run(cmd, Path(project_dir), get_run_logger())
    if code != 0:
        raise RuntimeError(f"study run {key} failed (exit {code}):\n" + "\n".join(lines[-20:]))
    return json.loads(next(line for line in reversed(lines) if line.startswith("{")))


@task(name="prepare-data")
def prepare_data(study_file: str, project_dir: str) -> str:
    """The runs share the project's prepared splits: import and prepare them first if they are missing."""
    from bertops.stages import run_stage
    from bertops.layout import Layout
    from bertops.study import load_study

    study = load_study(study_file, project_dir)
    root = Path(project_dir).resolve()
    if Layout(root).split("train").is_file():
        return "present"
    params_file = root / "params.yaml"
    for stage in ("import", "prepare"):
        run_stage(stage, params_file, root)
    return f"prepared for {study.name}"


@flow(name="bertops-study", log_prints=True)
def study(study_file: str, project_dir: str = ".") -> dict:
    """Run (or resume) a study and summarise it; returns the summary."""
    from mlflow import MlflowClient

    from bertops import study as studies

    root = str(Path(project_dir).resolve())
    spec = studies.load_study(study_file, root)  # every run's params are validated before anything runs
    prepare_data(study_file, root)
    parent = studies.parent_run(spec)
    logger = get_run_logger()
    results, errors, futures = [], {}, {}
    for run in spec.runs:
        done = spec.run_dir(run) / "result.json"
        if done.is_file():
            results.append(json.loads(done.read_text()))
            logger.info("run %s already finished: kept", run.key)
        else:
            futures[run.key] = study_run.submit(str(Path(study_file).resolve()), root, run.key, parent)
    for key, future in futures.items():
        try:
            results.append(future.result())
        except Exception as exc:  # noqa: BLE001 - a failed run is reported in the summary, not fatal
            errors[key] = str(exc)[-2000:]
    summary = studies.summarize(spec, results, errors)
    client = MlflowClient()
    for name in ("summary.md", "summary.csv", "summary.json", "summary.png"):
        client.log_artifact(parent, str(spec.dir / name), artifact_path="study")
    client.set_terminated(parent, "FAILED" if errors else "FINISHED")
    create_markdown_artifact(key=f"study-{spec.name.lower().replace('_', '-').replace('.', '-')}",
                             markdown=(spec.dir / "summary.md").read_text(),
                             description=f"bertops study {spec.name}")
    return summary


def run_study(study_file: str, project_dir: str = ".") -> dict:
    """Run the flow with as many runs at once as the study's `parallel` allows."""
    from bertops.study import load_study

    parallel = load_study(study_file, project_dir).parallel
    return study.with_options(task_runner=ThreadPoolTaskRunner(max_workers=parallel))(study_file, project_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_file")
    parser.add_argument("--project-dir", default=".")
    args = parser.parse_args(argv)
    summary = run_study(args.study_file, args.project_dir)
    print(json.dumps({k: v for k, v in summary.items()}, indent=1, default=str))


if __name__ == "__main__":
    main()
