"""The retraining flow: sync the data, run the DVC stages one by one as Prefect tasks (an unchanged corpus and
unchanged params skip training), then publish the promotion decision as a markdown artifact.

Runs in Prefect's ephemeral mode with no server:  python flows/retrain.py [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

STAGES = ("import", "prepare", "train", "evaluate", "register")
SKIPPED_MARKER = "didn't change, skipping"


def _env() -> dict[str, str]:
    # stage commands call `bertops`: make this interpreter's scripts directory win on PATH
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def _run(cmd: list[str], cwd: Path, logger) -> tuple[int, list[str]]:
    """Run a command, streaming its output to the Prefect log line by line."""
    lines = []
    with subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line and "\r" not in line:  # progress-bar redraws stay out of the log
                logger.info(line)
            lines.append(line)
    return proc.returncode, lines


@task(name="sync-data", retries=2, retry_delay_seconds=10)
def sync_data(project_dir: str) -> str:
    logger = get_run_logger()
    root = Path(project_dir)
    code, lines = _run([sys.executable, "-m", "dvc", "remote", "list"], root, logger)
    if code != 0 or not any(line.strip() for line in lines):
        logger.info("no DVC remote configured: using the local cache")
        return "local"
    code, lines = _run([sys.executable, "-m", "dvc", "pull", "--allow-missing"], root, logger)
    if code != 0:
        raise RuntimeError("dvc pull failed:\n" + "\n".join(lines[-20:]))
    return "pulled"


@task(name="dvc-stage", task_run_name="{stage}", retries=1, retry_delay_seconds=5)
def run_stage(stage: str, project_dir: str, force: bool = False) -> str:
    """`dvc repro --single-item <stage>`: returns 'ran' or 'skipped' (nothing it depends on changed)."""
    logger = get_run_logger()
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    code, lines = _run(cmd, Path(project_dir), logger)
    if code != 0:
        raise RuntimeError(f"stage {stage!r} failed (exit {code}):\n" + "\n".join(lines[-30:]))
    return "skipped" if any(SKIPPED_MARKER in line for line in lines) else "ran"


def decision_markdown(states: dict[str, str], registration: dict | None, metrics: dict | None) -> str:
    rows = "\n".join(f"| {stage} | {state} |" for stage, state in states.items())
    text = f"## Retraining\n\n| stage | state |\n| --- | --- |\n{rows}\n\n"
    if states.get("register") != "ran" or registration is None:
        return text + "**No new version**: the corpus, code and params are unchanged since the last run, " \
                      "so nothing was retrained or registered.\n"
    reg, metric = registration, registration["metric"]
    champion = (f"v{reg['champion_version']}: {reg['champion_value']:.4f}" if reg.get("champion_value") is not None
                else "none")
    text += (f"## Decision: **{reg['decision']}**\n\n"
             f"| | version | test {metric} |\n| --- | --- | --- |\n"
             f"| challenger | v{reg['version']} | {reg['challenger_value']:.4f} |\n"
             f"| champion before | {champion.split(':')[0]} | {champion.split(': ')[-1]} |\n\n"
             f"Reason: {reg['reason']}\n\nModel: `models:/{reg['model_name']}/{reg['version']}`\n")
    if metrics:
        text += "\n### Test metrics\n" + metrics_markdown(metrics)
    return text


def metrics_markdown(metrics: dict) -> str:
    """The headline numbers and a per-class (or, for token classification, per-entity-type) table."""
    if "per_type" not in metrics and "per_class" not in metrics:  # question answering
        parts = [f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)]
        return ", ".join(parts) + f" ({metrics.get('questions')} questions)\n"
    if "per_type" in metrics:
        kind, table = "entity type", metrics["per_type"]
        head = (f"entity F1 {metrics['f1']:.4f} (precision {metrics['precision']:.4f}, recall "
                f"{metrics['recall']:.4f}, {metrics['entities']} entities)")
    else:
        kind, table = "class", metrics["per_class"]
        head = f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}"
    rows = "\n".join(f"| {label} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |"
                     for label, s in table.items())
    return f"{head}\n\n| {kind} | precision | recall | F1 | support |\n| --- | --- | --- | --- | --- |\n{rows}\n"


@flow(name="bertops-retrain", log_prints=True)
def retrain(project_dir: str = ".", force: bool = False, sync: bool = True) -> dict:
    """Retrain when the data, code or params changed; register and gate the new version.

    project_dir: the bertops project (a git + DVC checkout); force: re-run every stage even if unchanged;
    sync: pull DVC-tracked data from the configured remote first (skipped when none is configured).
    """
    root = Path(project_dir).resolve()
    if sync:
        sync_data(str(root))
    states: dict[str, str] = {}
    for stage in STAGES:
        states[stage] = run_stage(stage, str(root), force=force)
    registration = metrics = None
    if states["register"] == "ran":
        registration = json.loads((root / "reports" / "registration.json").read_text())
        metrics = json.loads((root / "reports" / "metrics.json").read_text())
    create_markdown_artifact(key="promotion-decision", markdown=decision_markdown(states, registration, metrics),
                             description="bertops retraining: stage states and the promotion decision")
    return {"stages": states, "registration": registration}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-dir", default=".")
    parser.add_argument("--force", action="store_true", help="re-run every stage")
    parser.add_argument("--no-sync", action="store_true", help="do not pull from the DVC remote")
    args = parser.parse_args(argv)
    result = retrain(project_dir=args.project_dir, force=args.force, sync=not args.no_sync)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
