"""The tracking spool against a real MLflow server on loopback that goes down and comes back: appending never
waits on the network, and every point arrives exactly once, in order, after the outage."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bertops.training.spool import RunSpool

MLFLOW = Path(sys.executable).with_name("mlflow")


def start_server(root: Path, port: int) -> subprocess.Popen:
    import urllib.request

    log = (root / f"server-{time.time():.0f}.log").open("w")
    proc = subprocess.Popen([str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, (root / log.name).read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    raise AssertionError("MLflow server not up")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 9)
    proc.wait()


@pytest.mark.timeout(900)
def test_points_survive_an_outage_exactly_once(tmp_path, monkeypatch):
    from serving import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast: the spool does the retrying
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    port = free_port()
    server = start_server(tmp_path, port)
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
    run_id = client.create_run(client.create_experiment("spool")).info.run_id
    spool = RunSpool(tmp_path / "spool", client, run_id, max_pause_s=1.0)
    spool.params({"train.lr": "0.001"})
    now = int(time.time() * 1000)
    spool.metrics([("train_loss", 1.0, now, 0)])
    assert spool.drain(60)
    stop_server(server)  # the outage
    appends = []
    for step in range(1, 200):
        started = time.perf_counter()
        spool.metrics([("train_loss", 1.0 / (step + 1), now + step, step)])
        appends.append(time.perf_counter() - started)
    spool.tags({"bertops.precision": "32-true"})
    assert not spool.drain(5)  # still down
    assert max(appends) < 0.05  # the training thread never waited on the network
    server = start_server(tmp_path, port)
    try:
        assert spool.drain(120)
        spool.status("FINISHED")
        assert spool.drain(60)
        spool.close()
        history = client.get_metric_history(run_id, "train_loss")
        assert sorted(m.step for m in history) == list(range(200))  # every step, exactly once
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["bertops.precision"] == "32-true"
        assert run.data.params["train.lr"] == "0.001"
        assert spool.failures > 0

        # a new spool on the same directory (a re-run after a kill) ships nothing twice
        again = RunSpool(tmp_path / "spool", client, run_id)
        assert again.pending() == 0
        again.close()
    finally:
        stop_server(server)
