"""The tracking spool against a real MLflow server on loopback that goes down and comes back: appending never
waits on the network, and every point arrives exactly once, in order, after the outage."""

import itertools
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
    """Kill the server and everything it started (uvicorn, MLflow's job runner and its huey consumers)."""
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture
def servers():
    """start_server, with every server started stopped at teardown, whatever the test did."""
    started = []

    def start(root: Path, port: int) -> subprocess.Popen:
        started.append(start_server(root, port))
        return started[-1]

    yield start
    for proc in started:
        stop_server(proc)


@pytest.mark.timeout(900)
def test_points_survive_an_outage_exactly_once(tmp_path, monkeypatch, servers):
    from serving import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast: the spool does the retrying
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    port = free_port()
    server = servers(tmp_path, port)
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
    # the shipper backs off (0.5 s, then max_pause_s = 1 s): new records do not make it retry at every append
    assert spool.failures <= 2 + sum(appends)
    spool.tags({"bertops.precision": "32-true"})
    assert not spool.drain(5)  # still down
    assert max(appends) < 0.05  # the training thread never waited on the network
    server = servers(tmp_path, port)
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


def _train_project(root: Path, model_dir: Path, port: int, ship_timeout_s: int = 20, **train):
    import yaml
    from conftest import synthetic_reviews, tiny_params, write_corpus_csv

    write_corpus_csv(root / "corpus.csv", synthetic_reviews(240))
    raw = tiny_params(model_dir)
    raw["train"].update({"epochs": 25, "early_stopping_patience": None, **train})
    raw["tracking"].update({"uri": f"http://127.0.0.1:{port}", "flush_every_n_steps": 2,
                           "ship_timeout_s": ship_timeout_s})
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
    """`bertops stage train` with its output in a file: a pipe nobody reads while the test waits would fill up
    and block the stage's progress bar, and so its training (as the outage window's timing first showed)."""
    log = (root / f"train-{time.time_ns()}.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "bertops.cli", "--root", str(root), "--params",
                             str(root / "params.yaml"), "stage", "train"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    proc.log_path = Path(log.name)
    return proc


def _finish(proc: subprocess.Popen) -> str:
    proc.wait(timeout=900)
    return proc.log_path.read_text()


def _wait_for_spooled_metrics(root: Path, proc) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.log_path.read_text()[-3000:]
        spools = list((root / ".bertops").rglob("shipped.json"))
        if spools and json.loads(spools[0].read_text())["seq"] >= 3:  # params and two metric flushes shipped
            return
        time.sleep(0.2)
    raise AssertionError("no metrics shipped")


def _step_times(losses, epochs, start_ms: float = 0, end_ms: float = float("inf")) -> dict[tuple[int, int], int]:
    """Wall time between consecutive train_loss points of one epoch, by (step, next step), for the points logged
    inside [start_ms, end_ms] (the timestamps are taken when the step is logged, not when it is shipped)."""
    epoch_of = {m.step: m.value for m in epochs}
    points = sorted((m.step, m.timestamp) for m in losses)
    return {(step_a, step_b): t_b - t_a for (step_a, t_a), (step_b, t_b) in itertools.pairwise(points)
            if epoch_of.get(step_a) == epoch_of.get(step_b)  # validation and checkpointing sit between epochs
            and start_ms <= t_a and t_b <= end_ms}


@pytest.mark.timeout(1500)
def test_training_runs_through_an_outage_and_a_rerun_finishes_what_the_end_could_not_ship(tmp_path, tiny_model_dir,
                                                                                          servers):
    """A real MLflow server killed after the first flushes: training carries on and finishes; every train_loss
    step arrives exactly once once the server is back; with the server still down at the end, the stage fails
    with its checkpoint and spool kept, and a re-run ships them and finishes the run without training."""
    from serving import free_port

    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    port = free_port()
    server = servers(server_dir, port)
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")

    # 0. the same training with the server up throughout: the wall time of its steps is the yardstick
    steady = tmp_path / "steady"
    steady.mkdir()
    _train_project(steady, tiny_model_dir, port, epochs=40)
    proc = _train_process(steady, env)
    out = _finish(proc)
    assert proc.returncode == 0, out[-3000:]
    run_id = json.loads((steady / "reports" / "train_run.json").read_text())["run_id"]
    baseline = _step_times(client.get_metric_history(run_id, "train_loss"), client.get_metric_history(run_id, "epoch"))

    # 1. the server dies after the first flushes and is back (on the same port) before training ends
    outage = tmp_path / "outage"
    outage.mkdir()
    # the server may take longer to come back than the tiny training takes: the end waits for it
    _train_project(outage, tiny_model_dir, port, ship_timeout_s=300, epochs=40)
    proc = _train_process(outage, env)
    _wait_for_spooled_metrics(outage, proc)
    stop_server(server)
    down_at, down_ms = time.monotonic(), time.time() * 1000
    time.sleep(10)
    restart_ms = time.time() * 1000  # the restart competes for the 2 cores: the window ends here
    server = servers(server_dir, port)
    print(f"server down for {time.monotonic() - down_at:.1f} s")
    out = _finish(proc)
    assert proc.returncode == 0, out[-3000:]
    run_id = json.loads((outage / "reports" / "train_run.json").read_text())["run_id"]
    history = client.get_metric_history(run_id, "train_loss")
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)) and steps, steps  # every point exactly once
    during = _step_times(history, client.get_metric_history(run_id, "epoch"), down_ms, restart_ms)
    same = [pair for pair in during if pair in baseline]  # the same steps of the same training, server up
    outage_ms, steady_ms = sum(during[p] for p in same), sum(baseline[p] for p in same)
    print(f"steps {same[0][0]}-{same[-1][1]}: {outage_ms} ms while the server was down, {steady_ms} ms in the "
          f"same training without an outage ({len(same)} intervals)")
    assert len(same) >= 5, (len(during), len(same))
    assert outage_ms <= 1.3 * steady_ms  # training did not wait on the outage
    assert client.get_run(run_id).info.status == "FINISHED"
    curve = (outage / "reports" / "plots" / "train_loss.csv").read_text().splitlines()
    assert len(curve) == len(steps) + 1  # the learning curve has the points logged during the outage

    # 2. the server is down when training ends: the stage fails clearly, keeping the checkpoint and the spool
    late = tmp_path / "late"
    late.mkdir()
    # as long as the others: on a fast host 8 epochs ended before the first metrics shipped (seconds, by the
    # shipper's 1 s interval), and so before the server could be stopped under them
    _train_project(late, tiny_model_dir, port, epochs=40)
    proc = _train_process(late, env)
    _wait_for_spooled_metrics(late, proc)
    stop_server(server)
    out = _finish(proc)
    assert proc.returncode != 0
    assert "did not take" in out and "re-run the train stage once it is back" in out, out[-3000:]
    assert (late / "models" / "best" / "model.safetensors").is_file(), out[-3000:]
    saved = (late / "models" / "best" / "model.safetensors").stat().st_mtime_ns
    server = servers(server_dir, port)
    try:
        proc = _train_process(late, env)
        out = _finish(proc)
        assert proc.returncode == 0, out[-3000:]
        assert (late / "models" / "best" / "model.safetensors").stat().st_mtime_ns == saved  # not retrained
        run_id = json.loads((late / "reports" / "train_run.json").read_text())["run_id"]
        steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
        assert len(steps) == len(set(steps)) and max(steps) > 0
        assert client.get_run(run_id).info.status == "FINISHED"
        # steady, outage and this one: the re-run made no run of its own
        assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 3
    finally:
        stop_server(server)
