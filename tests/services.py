"""Real services on loopback for the service tests, each started natively (no Docker) and stopped afterwards:
a PostgreSQL cluster of its own, an S3-compatible server (moto), the MLflow server on PostgreSQL with artifacts
in S3, the Prefect server on PostgreSQL, and a Prefect process worker."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
S3_KEYS = {"AWS_ACCESS_KEY_ID": "bertops-test", "AWS_SECRET_ACCESS_KEY": "bertops-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_url(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"{name} not found: install PostgreSQL (Debian: apt-get install postgresql); .ci/run does")
    return found


class Services:
    def __init__(self, workdir: Path):
        self.dir = workdir
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.pg_data: Path | None = None
        self.pg_as: list[str] = []

    # ---- PostgreSQL: an own cluster, trust auth on loopback only ----
    def start_postgres(self) -> int:
        self.pg_port = free_port()
        # its own directory under /tmp: pytest's tmp dirs are private to the user, and as root the cluster runs
        # as the postgres user (initdb refuses root)
        self.pg_data = Path(tempfile.mkdtemp(prefix="bertops-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.pg_data, "postgres")
            self.pg_as = ["runuser", "-u", "postgres", "--"]
        run = lambda *cmd: subprocess.run([*self.pg_as, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
        run(postgres_bin("initdb"), "-D", str(self.pg_data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run(postgres_bin("pg_ctl"), "-D", str(self.pg_data), "-l", str(self.pg_data / "log"), "-w", "start", "-o",
            f"-p {self.pg_port} -k {self.pg_data} -c listen_addresses=127.0.0.1")
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.pg_port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            for db in ("mlflow", "prefect"):
                cur.execute(f"CREATE DATABASE {db}")
        conn.close()
        return self.pg_port

    def _spawn(self, name: str, cmd: list[str], env: dict) -> tuple[subprocess.Popen, Path]:
        log = self.dir / f"{name}.log"
        proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                                cwd=self.dir, start_new_session=True)
        self.procs.append((name, proc))
        return proc, log

    def start_s3(self) -> str:
        port = free_port()
        proc, log = self._spawn("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                {**os.environ, **S3_KEYS})
        self.s3_url = f"http://127.0.0.1:{port}"
        wait_for_url(f"{self.s3_url}/moto-api/", proc, log)
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.s3_url, **{k.lower(): v for k, v in S3_KEYS.items()
                                                              if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
        for bucket in ("mlflow", "dvc"):
            s3.create_bucket(Bucket=bucket)
        self.s3 = s3
        return self.s3_url

    def start_mlflow(self) -> str:
        port = free_port()
        env = {**os.environ, **S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": self.s3_url}
        proc, log = self._spawn("mlflow", [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"postgresql://postgres@127.0.0.1:{self.pg_port}/mlflow",
            "--artifacts-destination", "s3://mlflow"], env)
        self.mlflow_url = f"http://127.0.0.1:{port}"
        wait_for_url(f"{self.mlflow_url}/health", proc, log, timeout=180)
        return self.mlflow_url

    def start_prefect(self) -> str:
        port = free_port()
        self.prefect_home = self.dir / "prefect-home"
        env = {**os.environ, "PREFECT_HOME": str(self.prefect_home),
               "PREFECT_API_DATABASE_CONNECTION_URL":
                   f"postgresql+asyncpg://postgres@127.0.0.1:{self.pg_port}/prefect",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
               "PREFECT_API_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}
        proc, log = self._spawn("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                                   "--port", str(port)], env)
        self.prefect_api = f"http://127.0.0.1:{port}/api"
        wait_for_url(f"{self.prefect_api}/health", proc, log, timeout=180)
        return self.prefect_api

    def client_env(self) -> dict:
        """What a process needs to use these services (the flow, the worker, the CLI)."""
        return {**os.environ, **S3_KEYS, "PREFECT_API_URL": self.prefect_api, "PREFECT_HOME": str(self.prefect_home),
                "MLFLOW_TRACKING_URI": self.mlflow_url, "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
                "AWS_ENDPOINT_URL": self.s3_url, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def start_worker(self, pool: str, cwd: Path) -> None:
        subprocess.run([str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process", "--overwrite"],
                       check=True, capture_output=True, env=self.client_env())
        log = self.dir / "worker.log"
        proc = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", pool], stdout=log.open("w"),
                                stderr=subprocess.STDOUT, env=self.client_env(), cwd=cwd, start_new_session=True)
        self.procs.append(("worker", proc))

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        if self.pg_data is not None and (self.pg_data / "postmaster.pid").exists():
            subprocess.run([*self.pg_as, postgres_bin("pg_ctl"), "-D", str(self.pg_data), "-m", "fast", "-w", "stop"],
                           capture_output=True)
        if self.pg_data is not None:
            shutil.rmtree(self.pg_data, ignore_errors=True)
