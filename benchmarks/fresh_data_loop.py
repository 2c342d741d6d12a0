"""The fresh-data loop on MR, as a user runs it: the corpus lives in a DVC data registry (a git + DVC repository
with its own remote) and is brought in with `dvc import`; the retraining flow trains on v1, then v2 is committed
to the registry and the next flow run picks it up with `dvc update`, re-scores the champion on the new test split
and gates.

v1 = the MR sentences whose source_id is in the first 80 % of ids; v2 = all 10,568. Default params otherwise.
Reports: v1 training sentences in v2's test split (must be 0), v1 test sentences that stayed in test, the
gate's decision and p-value, the champion's score on v2's test split and at its registration, and the wall time
of each run.

    python benchmarks/fresh_data_loop.py --out benchmarks/results/fresh-data-loop-<date>.json [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "bench",
       "GIT_COMMITTER_EMAIL": "b@b", "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}


def sh(cwd, *cmd) -> str:
    done = subprocess.run(list(cmd), cwd=cwd, env=ENV, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def mr_rows() -> list[dict]:
    from bertops.corpora.packaged import manifest_rows

    return list(manifest_rows(REPO / "data" / "sources" / "vader-mr.yaml"))


def publish(registry: Path, rows: list[dict], message: str) -> str:
    with (registry / "mr.jsonl").open("w") as out:
        for row in rows:
            out.write(json.dumps({"text": row["text"], "label": row["label"]}, ensure_ascii=False) + "\n")
    sh(registry, sys.executable, "-m", "dvc", "add", "mr.jsonl")
    sh(registry, "git", "add", "mr.jsonl.dvc", ".gitignore")
    sh(registry, "git", "commit", "-qm", message)
    sh(registry, sys.executable, "-m", "dvc", "push")
    return sh(registry, "git", "rev-parse", "HEAD").strip()


def texts(root: Path, split: str) -> set[str]:
    return {json.loads(line)["text"] for line in (root / "data" / "prepared" / f"{split}.jsonl").open()}


def flow(root: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    out = sh(root, sys.executable, "-m", "flows.retrain", "--project-dir", str(root))
    return json.loads(out[out.index("{\n"):]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: params.yaml's)")
    parser.add_argument("--workdir", default=None, help="keep the registry and project here (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bertops-fresh-data-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = mr_rows()
    ids = sorted({int(r["source_id"]) for r in rows})
    cut = ids[int(0.8 * len(ids)) - 1]
    v1 = [r for r in rows if int(r["source_id"]) <= cut]

    registry, remote, root = work / "registry", work / "registry-remote", work / "project"
    for path in (registry, root):
        path.mkdir()
    sh(registry, "git", "init", "-q")
    sh(registry, sys.executable, "-m", "dvc", "init", "-q")
    sh(registry, sys.executable, "-m", "dvc", "remote", "add", "-d", "storage", str(remote))
    sh(registry, "git", "add", "-A")
    sh(registry, "git", "commit", "-qm", "data registry")
    rev1 = publish(registry, v1, f"MR v1: {len(v1)} sentences")

    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "bertops", root / "bertops", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["corpus"]["source"] = "mr.jsonl"
    if args.epochs:
        params["train"]["epochs"] = args.epochs
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("mlflow.db\nmlruns/\n.bertops/\n")
    sh(root, "git", "init", "-q")
    sh(root, sys.executable, "-m", "dvc", "init", "-q")
    sh(root, sys.executable, "-m", "dvc", "import", str(registry), "mr.jsonl", "-o", "mr.jsonl")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "project, corpus imported from the data registry")

    first, first_s = flow(root)
    v1_train, v1_test = texts(root, "train"), texts(root, "test")
    rev2 = publish(registry, rows, f"MR v2: {len(rows)} sentences")
    second, second_s = flow(root)
    v2_test = texts(root, "test")
    reg = second["registration"] or {}
    result = {
        "what": "fresh-data loop on MR through the retraining flow, corpus from a DVC data registry",
        "host": os.uname().nodename, "date": time.strftime("%Y-%m-%d"), "epochs": params["train"]["epochs"],
        "v1_sentences": len(v1), "v2_sentences": len(rows), "registry_rev_v1": rev1, "registry_rev_v2": rev2,
        "v1_test": len(v1_test), "v2_test": len(v2_test),
        "v1_train_in_v2_test": len(v1_train & v2_test),
        "v1_test_still_in_test": len(v1_test & v2_test),
        "first_run_s": round(first_s, 1), "second_run_s": round(second_s, 1),
        "first_decision": first["registration"]["decision"], "first_test_value": first["registration"]["challenger_value"],
        "second_stages": second["stages"], "synced": second["synced"],
        "decision": reg.get("decision"), "p_value": reg.get("p_value"), "test": reg.get("test"),
        "challenger_value": reg.get("challenger_value"), "champion_value_on_v2_test": reg.get("champion_value"),
        "champion_registered_value": reg.get("champion_registered_value"), "champion_scored": reg.get("champion_scored"),
        "reason": reg.get("reason"), "workdir": str(work),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
