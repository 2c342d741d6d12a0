"""A registered version behind MLflow's own scoring server (`mlflow models serve`, the command the README gives),
on loopback, and the checks every task's serving test shares: the test split POSTed and compared with what
evaluate wrote, a text four times model.max_length, invalid requests, and the model's pinned requirements."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

MLFLOW = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def scoring_server(model_uri: str, tracking_uri: str, log_dir: Path, timeout: float = 300):
    """`mlflow models serve -m model_uri --env-manager local` on a free loopback port; yields its base URL."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri}
    log = (log_dir / f"scoring-server-{port}.log").open("w")
    proc = subprocess.Popen([str(MLFLOW), "models", "serve", "-m", model_uri, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"scoring server exited with {proc.returncode}: {Path(log.name).read_text()}")
            try:
                with urllib.request.urlopen(url + "/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"scoring server not up in {timeout} s: {Path(log.name).read_text()}")
            time.sleep(1)
        yield url
    finally:
        for signal_number in (15, 9):
            try:
                os.killpg(proc.pid, signal_number)
                proc.wait(30)
                break
            except ProcessLookupError:
                break  # it had already exited
            except subprocess.TimeoutExpired:
                continue
        log.close()


@contextmanager
def serving_project(root: Path, model_name: str, alias: str = "champion"):
    """The project's registered `model_name@alias` behind a scoring server: yields (url, model URI, tracking URI)."""
    from bertops.config import load_params
    from bertops.tracking import tracking_uri

    uri = tracking_uri(load_params(root / "params.yaml"), root)
    model_uri = f"models:/{model_name}@{alias}"
    with scoring_server(model_uri, uri, root) as url:
        yield url, model_uri, uri


def invoke(url: str, payload) -> tuple[int, dict]:
    """POST /invocations; (HTTP status, the JSON body)."""
    request = urllib.request.Request(url + "/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def served(url: str, rows: list[dict], params: dict | None = None) -> list[dict]:
    """The predictions for `rows`, asserting a 200."""
    status, body = invoke(url, {"dataframe_records": rows, **({"params": params} if params else {})})
    assert status == 200, body
    return body["predictions"]


def assert_bad_request(url: str, payload, *fragments: str) -> str:
    """A 400 whose message names what is wrong (each fragment), with no Python traceback in it."""
    status, body = invoke(url, payload)
    message = body.get("message", "")
    assert status == 400, (status, body)
    assert body.get("error_code") == "INVALID_PARAMETER_VALUE" or "schema" in message.lower(), body
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "Traceback" not in json.dumps(body), body
    return message


def long_text(max_length: int, words: list[str]) -> str:
    """A text of 4 x max_length words from the tiny vocabulary (at least one sub-token each)."""
    return " ".join(words[i % len(words)] for i in range(4 * max_length))


def test_rows(layout) -> list[dict]:
    return [json.loads(line) for line in layout.split("test").open()]


def evaluated(layout) -> list[dict]:
    """What evaluate wrote for each test example."""
    return [json.loads(line) for line in (layout.reports_dir / "test_predictions.jsonl").open()]


SERVED_IMPORTS = """
import json, sys
import mlflow.pyfunc, pandas as pd
from importlib.metadata import packages_distributions, requires
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(pd.DataFrame(json.loads(sys.argv[2])))
from packaging.requirements import Requirement
direct = {Requirement(r).name.lower().replace("_", "-") for r in requires("bertops") or []} | {"pandas"}
owners = packages_distributions()
found = {d.lower().replace("_", "-") for top in {m.split(".")[0] for m in list(sys.modules)} for d in owners.get(top, [])}
requirements = open(mlflow.pyfunc.get_model_dependencies(sys.argv[1], format="pip")).read().splitlines()
print(json.dumps({"imported": sorted(found & direct), "requirements": requirements}))
"""


def assert_requirements_cover_imports(model_uri: str, tracking_uri: str, rows: list[dict]) -> None:
    """Every bertops dependency the served model imports while it loads and predicts is pinned in its
    requirements.txt (or installed by a pinned package)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri}
    out = subprocess.run([sys.executable, "-c", SERVED_IMPORTS, model_uri, json.dumps(rows)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])  # in the subprocess: mlflow's URIs stay out of ours
    pinned = {line.split("==")[0].strip().lower() for line in found["requirements"]
              if line.strip() and not line.startswith("#")}
    assert set(found["imported"]) - installed_with(pinned) == set(), found


def installed_with(names: set[str]) -> set[str]:
    """`names` and everything installing them pulls in (their requirements, recursively; extras not)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    seen, todo = set(), list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        todo += [r.name for r in map(Requirement, reqs) if not r.marker or r.marker.evaluate({"extra": ""})]
    return seen
