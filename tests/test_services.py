"""The service tier: the retraining flow deployed from the project's own prefect.yaml to a real Prefect server and
a process worker, tracking to a real MLflow server on PostgreSQL with artifacts in S3 (moto), and DVC's remote on
the same S3. Asserts outcomes: the cron deployment has scheduled runs, a triggered run registers a champion with
its lineage, a worse run registers a challenger and leaves the alias, and the DVC remote round-trips."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient

from conftest import REPO, make_pipeline_repo
from services import BIN, Services

pytestmark = [pytest.mark.services, pytest.mark.timeout(1800)]
DEPLOYMENT = "bertops-retrain/mr-nightly-cpu"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    services = Services(tmp_path_factory.mktemp("services"))
    try:
        services.start_postgres()
        services.start_s3()
        services.start_mlflow()
        services.start_prefect()
        yield services
    finally:
        services.stop()


def run(stack, cmd, cwd, timeout=900, **env):
    done = subprocess.run(cmd, cwd=cwd, env={**stack.client_env(), **env}, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{cmd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def scheduled_runs(stack, cwd) -> list[dict]:
    script = """
import asyncio, json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter, \\
    FlowRunFilterState, FlowRunFilterStateType
async def main():
    async with get_client() as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["mr-nightly-cpu"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["SCHEDULED"]))))
        print(json.dumps([{"start": r.expected_start_time.isoformat(), "auto": r.auto_scheduled} for r in runs]))
asyncio.run(main())
"""
    return json.loads(run(stack, [sys.executable, "-c", script], cwd).strip().splitlines()[-1])


def test_deployed_retraining_against_real_services(stack, tiny_project):
    root = tiny_project
    make_pipeline_repo(root)
    shutil.copytree(REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "prefect.yaml", root / "prefect.yaml")
    dvc = [sys.executable, "-m", "dvc"]
    run(stack, [*dvc, "remote", "add", "-d", "stack", "s3://dvc"], root)
    run(stack, [*dvc, "remote", "modify", "stack", "endpointurl", stack.s3_url], root)
    run(stack, ["git", "add", "-A"], root)
    run(stack, ["git", "commit", "-qm", "deployable project"], root)

    # the project's own prefect.yaml, the `cpu` pool, a worker
    stack.start_worker("cpu", cwd=root)
    run(stack, [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "mr-nightly-cpu"], root,
        BERTOPS_PROJECT_DIR=str(root))
    # the cron schedule (02:30 UTC daily) produced scheduled runs: the scheduler service made them
    deadline, runs = time.monotonic() + 90, []
    while time.monotonic() < deadline and not runs:
        runs = scheduled_runs(stack, root)
        time.sleep(3)
    assert runs and all(r["auto"] for r in runs), runs
    assert all(r["start"][11:16] == "02:30" for r in runs), runs

    store = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    out = run(stack, [str(BIN / "prefect"), "deployment", "run", DEPLOYMENT, "--watch", "--watch-timeout", "900"], root)
    assert "Completed" in out, out
    champion = store.get_model_version_by_alias("tiny-sentiment", "champion")
    assert str(champion.version) == "1"
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert champion.tags["bertops.data_prepared_md5"] == lock["prepare"]["outs"][0]["md5"]
    assert len(champion.tags["bertops.git_commit"]) == 40 and champion.tags["bertops.decision"] == "champion"
    artifacts = stack.s3.list_objects_v2(Bucket="mlflow").get("KeyCount", 0)
    assert artifacts > 0  # the model and reports went to S3 through the MLflow server

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["lr"] = 1e-7  # cannot learn: the gate must keep the champion
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    out = run(stack, [str(BIN / "prefect"), "deployment", "run", DEPLOYMENT, "--watch", "--watch-timeout", "900"], root)
    assert "Completed" in out, out
    assert str(store.get_model_version_by_alias("tiny-sentiment", "champion").version) == "1"
    challenger = store.get_model_version_by_alias("tiny-sentiment", "challenger")
    assert str(challenger.version) == "2" and challenger.tags["bertops.gate.min_delta"].startswith("failed")

    # DVC's remote on the same S3: push, lose the cache and the outputs, pull, and nothing is left to reproduce
    run(stack, [*dvc, "push"], root)
    for path in (".dvc/cache", "data/raw", "data/prepared", "models/best"):
        shutil.rmtree(root / path, ignore_errors=True)
    run(stack, [*dvc, "pull"], root)
    assert (root / "models" / "best" / "config.json").is_file()
    status = run(stack, [*dvc, "status"], root)
    assert "up to date" in status, status
    repro = run(stack, [*dvc, "repro"], root)
    assert "Running stage" not in repro, repro
