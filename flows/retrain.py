"""The retraining flow: sync the data, run the DVC stages one by one as Prefect tasks, then publish the
promotion decision as a markdown artifact. The sync step brings corpora imported from a DVC data registry to its
latest revision (`dvc update`). Training is skipped (and the artifact says why) when nothing changed since the
last run, or when the champion was trained on this same prepared corpus, params, code and base model.

Runs in Prefect's ephemeral mode with no server:  python flows/retrain.py [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# Prefect's ephemeral server gets 20 s to start by default: a first start of a fresh venv on a busy 2-core host
# took longer and failed ("Timed out while attempting to connect to ephemeral Prefect API server"). Set before
# Prefect is imported; an explicit setting wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from bertops.model_card import checks_markdown, metrics_markdown  # noqa: E402

STAGES = ("import", "prepare", "train", "evaluate", "register")
SKIPPED_MARKER = "didn't change, skipping"


def _env() -> dict[str, str]:
    # stage commands call `bertops`: make this interpreter's scripts directory win on PATH
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def _run(cmd: list[str], cwd: Path, logger) -> tuple[int, list[str]]:
    """Run a command, streaming its output to the Prefect log line by line. A progress bar's redraws (joined by
    carriage returns; read as bytes so that they are not split into lines) log once, in their final state."""
    lines = []
    with subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n").rsplit("\r", 1)[-1].rstrip()
            if line:
                logger.info(line)
            lines.append(line)
    return proc.returncode, lines


@task(name="update-checkout", retries=2, retry_delay_seconds=10)
def update_checkout(project_dir: str) -> str:
    """`git pull --ff-only`, so that new params or code committed upstream reach this worker (never a merge)."""
    logger = get_run_logger()
    code, lines = _run(["git", "pull", "--ff-only"], Path(project_dir), logger)
    if code != 0:
        raise RuntimeError("git pull --ff-only failed:\n" + "\n".join(lines[-20:]))
    return lines[-1] if lines else "pulled"


@task(name="sync-data", retries=2, retry_delay_seconds=10)
def sync_data(project_dir: str) -> dict:
    """Bring every corpus imported from a data registry (`dvc import`) to the registry's latest revision with
    `dvc update`, then `dvc pull` DVC-tracked data when a remote is configured."""
    from bertops.lineage import imported_files

    logger = get_run_logger()
    root = Path(project_dir)
    done = {"updated": [], "pulled": False}
    for dvc_file in imported_files(root):
        code, lines = _run([sys.executable, "-m", "dvc", "update", str(dvc_file.relative_to(root))], root, logger)
        if code != 0:
            raise RuntimeError(f"dvc update {dvc_file} failed:\n" + "\n".join(lines[-20:]))
        done["updated"].append(str(dvc_file.relative_to(root)))
    code, lines = _run([sys.executable, "-m", "dvc", "remote", "list"], root, logger)
    if code != 0 or not any(line.strip() for line in lines):
        logger.info("no DVC remote configured: using the local cache")
        return done
    code, lines = _run([sys.executable, "-m", "dvc", "pull", "--allow-missing"], root, logger)
    if code != 0:
        raise RuntimeError("dvc pull failed:\n" + "\n".join(lines[-20:]))
    done["pulled"] = True
    return done


@task(name="dvc-stage", task_run_name="{stage}", retries=1, retry_delay_seconds=5)
def run_stage(stage: str, project_dir: str, force: bool = False) -> str:
    """`dvc repro --single-item <stage>`: returns 'ran' or 'skipped' (nothing it depends on changed)."""
    logger = get_run_logger()
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    code, lines = _run(cmd, Path(project_dir), logger)
    if code != 0:
        raise RuntimeError(f"stage {stage!r} failed (exit {code}):\n" + "\n".join(lines[-30:]))
    return "skipped" if any(SKIPPED_MARKER in line for line in lines) else "ran"


@task(name="compare-with-champion")
def unchanged_since_champion(project_dir: str) -> str | None:
    """The champion's version when it was trained on exactly these inputs (the prepared corpus's DVC md5, the
    params, the code of the training and scoring stages, the base model's files); then retraining would only
    repeat it."""
    from mlflow import MlflowClient

    from bertops import registry, tracking
    from bertops.config import load_params
    from bertops.layout import Layout

    root = Path(project_dir)
    params = load_params(root / "params.yaml")
    tracking.configure(params, Layout(root))
    version, differ = registry.champion_with_same_inputs(MlflowClient(), params.registry.model_name, root, params)
    logger = get_run_logger()
    if version:
        logger.info("champion v%s was trained on these same data, params, code and base model", version)
    else:
        logger.info("retraining: %s changed since the champion", ", ".join(differ))
    return version


def decision_markdown(states: dict[str, str], registration: dict | None, metrics: dict | None,
                      champion_unchanged: str | None = None) -> str:
    rows = "\n".join(f"| {stage} | {state} |" for stage, state in states.items())
    text = f"## Retraining\n\n| stage | state |\n| --- | --- |\n{rows}\n\n"
    if champion_unchanged:
        return text + (f"**No new version**: champion v{champion_unchanged} was trained on this same prepared corpus "
                       "(DVC md5) with these same params, code and base model, so training was skipped. Run with "
                       "`--force` to retrain anyway.\n")
    if states.get("register") != "ran" or registration is None:
        return text + "**No new version**: the corpus, code and params are unchanged since the last run, " \
                      "so nothing was retrained or registered.\n"
    reg, metric = registration, registration["metric"]
    def value(key):
        return "" if reg.get(key) is None else f"{reg[key]:.4f}"

    champion = f"v{reg['champion_version']}" if reg.get("champion_version") else "none"
    text += (f"## Decision: **{reg['decision']}**\n\n"
             f"| | version | test {metric} on this test split | at its registration |\n| --- | --- | --- | --- |\n"
             f"| challenger | v{reg['version']} | {reg['challenger_value']:.4f} | |\n"
             f"| champion before | {champion} | {value('champion_value')} | {value('champion_registered_value')} |\n\n"
             + (f"Champion's score on this split: {reg['champion_scored']}.\n\n" if reg.get("champion_scored") else "")
             + f"Reason: {reg['reason']}\n\nModel: `models:/{reg['model_name']}/{reg['version']}`\n")
    if reg.get("checks"):
        text += "\n" + checks_markdown(reg["checks"])
    if metrics:
        from bertops.tasks import DEFAULT_TASK, get_task

        text += "\n### Test metrics\n" + metrics_markdown(metrics, get_task(reg.get("task", DEFAULT_TASK)))
    return text


@flow(name="bertops-retrain", log_prints=True)
def retrain(project_dir: str = ".", force: bool = False, sync: bool = True, git_pull: bool = False) -> dict:
    """Retrain when the data, code, params or base model changed; register and gate the new version.

    project_dir: the bertops project (a git + DVC checkout); force: re-run every stage even if unchanged;
    sync: `dvc update` corpora imported from a data registry and pull DVC-tracked data from the configured
    remote first; git_pull: `git pull --ff-only` the checkout first (new params or code reach the worker).
    """
    root = Path(project_dir).resolve()
    synced = None
    if git_pull:
        update_checkout(str(root))
    if sync:
        synced = sync_data(str(root))
    states: dict[str, str] = {}
    champion_unchanged = None
    for stage in STAGES:
        if stage == "train" and not force:
            champion_unchanged = unchanged_since_champion(str(root))
        if champion_unchanged:
            states[stage] = "skipped"
            continue
        states[stage] = run_stage(stage, str(root), force=force)
    if champion_unchanged:
        get_run_logger().info("champion v%s already has this corpus and these params: nothing retrained "
                              "(--force retrains)", champion_unchanged)
    registration = metrics = None
    if states["register"] == "ran":
        registration = json.loads((root / "reports" / "registration.json").read_text())
        metrics = json.loads((root / "reports" / "metrics.json").read_text())
    create_markdown_artifact(key="promotion-decision",
                             markdown=decision_markdown(states, registration, metrics, champion_unchanged),
                             description="bertops retraining: stage states and the promotion decision")
    return {"stages": states, "registration": registration, "champion_unchanged": champion_unchanged,
            "synced": synced}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-dir", default=".")
    parser.add_argument("--force", action="store_true", help="re-run every stage")
    parser.add_argument("--no-sync", action="store_true",
                        help="neither `dvc update` the imported corpora nor pull from the DVC remote")
    parser.add_argument("--git-pull", action="store_true", help="`git pull --ff-only` the checkout first")
    args = parser.parse_args(argv)
    result = retrain(project_dir=args.project_dir, force=args.force, sync=not args.no_sync, git_pull=args.git_pull)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
