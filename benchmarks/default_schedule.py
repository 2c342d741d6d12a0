"""Measure candidate default training schedules over several seeds on the prepared corpus (CPU or GPU).

Each (schedule, seed) trains and evaluates in its own scratch project that reuses the project's data/prepared/
(run `dvc repro ... prepare` there first), so the test split is the one `dvc repro` uses. Any task and any
pipeline directory (`--project pipelines/wnut-ner`), including a chained fine-tune whose model is an upstream pipeline's output
(`--project pipelines/mr-tapt/finetune`, after `dvc repro` built it). Prints and writes one JSON row per run. Choose a schedule on
the validation history over several seeds; the test column is for reporting.

    python benchmarks/default_schedule.py --out benchmarks/results/schedule-cpu.json \
        --schedule 'lr=3e-5,warmup_ratio=0.1' --schedule 'lr=5e-5' --seeds 0 1 2
    python benchmarks/default_schedule.py --project pipelines/spam-long --out benchmarks/results/long-text.json \
        --schedule task.long_text=truncate --schedule task.long_text=head_tail --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import yaml

from bertops.config import apply_overrides, parse_assignments, parse_params
from bertops.layout import Layout
from bertops.stages.evaluate import evaluate
from bertops.stages.train import train


def parse_schedule(text: str) -> dict:
    return parse_assignments(text)


def run_one(project: Path, scratch: Path, overrides: dict, seed: int) -> dict:
    raw = yaml.safe_load((project / "params.yaml").read_text())
    apply_overrides(raw, overrides)  # `lr` is train.lr; a dotted key names its section (task.long_text)
    raw["train"].update(seed=seed, resume=False)
    raw["tracking"]["uri"] = f"sqlite:///{scratch / 'mlflow.db'}"
    local_model = project / raw["model"]["name_or_path"]
    if local_model.exists():  # a path relative to the project (e.g. a chained pretrain's ../pretrain/models/best)
        raw["model"]["name_or_path"] = str(local_model.resolve())
    params = parse_params(raw)
    if scratch.exists():
        shutil.rmtree(scratch)
    (scratch / "data").mkdir(parents=True)
    shutil.copytree(project / "data" / "prepared", scratch / "data" / "prepared")
    (scratch / "params.yaml").write_text(yaml.safe_dump(raw))
    layout = Layout(scratch)
    start = time.perf_counter()
    train(params, layout)
    fit_s = time.perf_counter() - start
    metrics = evaluate(params, layout)
    history = (layout.reports_dir / "plots" / "val_metrics.csv").read_text().strip().splitlines()
    scores = {k: v for k, v in metrics.items() if isinstance(v, float)}  # accuracy/macro_f1, or f1/precision/...
    return {"schedule": overrides, "seed": seed, "test": scores,
            "val_history": history, "fit_s": round(fit_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/bertops-schedule"))
    parser.add_argument("--schedule", action="append", required=True, help="k=v,k=v overrides of train.* (a dotted key names another section: task.long_text=head_tail)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(json.dumps(r["schedule"], sort_keys=True), r["seed"]) for r in rows}
    for text in args.schedule:
        overrides = parse_schedule(text)
        for seed in args.seeds:
            if (json.dumps(overrides, sort_keys=True), seed) in done:
                continue
            row = run_one(args.project.resolve(), args.scratch / f"{len(rows)}", overrides, seed)
            print(json.dumps(row), flush=True)
            rows.append(row)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
