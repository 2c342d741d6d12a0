"""The tracking spool against a real MLflow server on loopback that goes down and comes back: appending never
waits on the network, and every point arrives exactly once, in order, after the outage."""

import json
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


def _train_project(root: Path, model_dir: Path, port: int, **train):
    import yaml

    from conftest import synthetic_reviews, tiny_params, write_corpus_csv

    write_corpus_csv(root / "corpus.csv", synthetic_reviews(240))
    raw = tiny_params(model_dir)
    raw["train"].update({"epochs": 25, "early_stopping_patience": None, **train})
    raw["tracking"].update({"uri": f"http://127.0.0.1:{port}", "flush_every_n_steps": 2, "ship_timeout_s": 20})
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    from bertops.config import load_params
    from bertops.layout import Layout
    from bertops.stages.import_corpus import import_corpus
    from bertops.stages.prepare import prepare

    params, layout = load_params(root / "params.yaml"), Layout(root)
    import_corpus(params, layout)
    prepare(params, layout)
    return params, layout


def _train_process(root: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bertops.cli", "--root", str(root), "--params",
                             str(root / "params.yaml"), "stage", "train"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for_spooled_metrics(root: Path, proc) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        spools = list((root / ".bertops").rglob("shipped.json"))
        if spools and json.loads(spools[0].read_text())["seq"] >= 3:  # params and two metric flushes shipped
            return
        time.sleep(0.2)
    raise AssertionError("no metrics shipped")


@pytest.mark.timeout(1500)
def test_training_runs_through_an_outage_and_a_rerun_finishes_what_the_end_could_not_ship(tmp_path, tiny_model_dir):
    """A real MLflow server killed after the first flushes: training carries on and finishes; every train_loss
    step arrives exactly once once the server is back; with the server still down at the end, the stage fails
    with its checkpoint and spool kept, and a re-run ships them and finishes the run without training."""
    from serving import free_port

    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    port = free_port()
    server = start_server(server_dir, port)
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")

    # 1. the server dies after the first flushes and is back (on the same port) before training ends
    outage = tmp_path / "outage"
    outage.mkdir()
    _train_project(outage, tiny_model_dir, port)
    proc = _train_process(outage, env)
    _wait_for_spooled_metrics(outage, proc)
    stop_server(server)
    down_at = time.monotonic()
    time.sleep(10)
    server = start_server(server_dir, port)
    print(f"server down for {time.monotonic() - down_at:.1f} s")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    run_id = json.loads((outage / "reports" / "train_run.json").read_text())["run_id"]
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert len(steps) == len(set(steps)) and steps, steps  # every point exactly once
    assert client.get_run(run_id).info.status == "FINISHED"
    curve = (outage / "reports" / "plots" / "train_loss.csv").read_text().splitlines()
    assert len(curve) == len(steps) + 1  # the learning curve has the points logged during the outage

    # 2. the server is down when training ends: the stage fails clearly, keeping the checkpoint and the spool
    late = tmp_path / "late"
    late.mkdir()
    _train_project(late, tiny_model_dir, port, epochs=8)
    proc = _train_process(late, env)
    _wait_for_spooled_metrics(late, proc)
    stop_server(server)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode != 0
    assert "did not take" in out and "re-run the train stage once it is back" in out, out[-3000:]
    assert (late / "models" / "best" / "model.safetensors").is_file()
    saved = (late / "models" / "best" / "model.safetensors").stat().st_mtime_ns
    server = start_server(server_dir, port)
    try:
        proc = _train_process(late, env)
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-3000:]
        assert (late / "models" / "best" / "model.safetensors").stat().st_mtime_ns == saved  # not retrained
        run_id = json.loads((late / "reports" / "train_run.json").read_text())["run_id"]
        steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
        assert len(steps) == len(set(steps)) and max(steps) > 0
        assert client.get_run(run_id).info.status == "FINISHED"
        assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 2  # no third run
    finally:
        stop_server(server)
