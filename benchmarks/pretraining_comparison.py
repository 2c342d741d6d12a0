"""Collect the TAPT / DAPT vs plain fine-tuning comparison on MR into one JSON and a markdown table.

Inputs (all produced by the commands in docs/pretraining.md):
- plain fine-tuning, seeds 0/1/2: benchmarks/results/schedule-cpu-2026-11-22.json (the `batch_size=16` rows)
- seed 0 of each arm: pipelines/mr-{tapt,dapt}/finetune/reports/metrics.json (`dvc repro`)
- seeds 1/2 of each arm: benchmarks/results/pretraining-{tapt,dapt}-seeds-cpu-2026-11-22.json
  (benchmarks/default_schedule.py --project pipelines/mr-<arm>/finetune --seeds 1 2)
- the masked-LM stage of each arm: pipelines/mr-<arm>/pretrain/reports/metrics.json

    python benchmarks/pretraining_comparison.py --out benchmarks/results/pretraining-cpu-2026-11-22.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    arms = {"plain": {}, "tapt": {}, "dapt": {}}
    for row in json.loads((RESULTS / "schedule-cpu-2026-11-22.json").read_text()):
        if row["schedule"] == {"batch_size": 16}:
            arms["plain"][row["seed"]] = row["test"]["accuracy"]
    pretrain = {}
    for arm in ("tapt", "dapt"):
        seed0 = REPO / "pipelines" / f"mr-{arm}" / "finetune" / "reports" / "metrics.json"
        if seed0.is_file():
            arms[arm][0] = json.loads(seed0.read_text())["accuracy"]
        seeds = RESULTS / f"pretraining-{arm}-seeds-cpu-2026-11-22.json"
        if seeds.is_file():
            for row in json.loads(seeds.read_text()):
                arms[arm][row["seed"]] = row["test"]["accuracy"]
        mlm = REPO / "pipelines" / f"mr-{arm}" / "pretrain" / "reports" / "metrics.json"
        if mlm.is_file():
            pretrain[arm] = json.loads(mlm.read_text())
    rows = [{"arm": arm, "seed": seed, "test_accuracy": acc} for arm, seeds in arms.items()
            for seed, acc in sorted(seeds.items())]
    args.out.write_text(json.dumps({"rows": rows, "pretraining": pretrain}, indent=1) + "\n")
    print("| arm | seed 0 | seed 1 | seed 2 | mean | std |\n| --- | --- | --- | --- | --- | --- |")
    for arm, seeds in arms.items():
        values = [seeds[s] for s in sorted(seeds)]
        cells = [f"{seeds[s]:.4f}" if s in seeds else "–" for s in (0, 1, 2)]
        mean = f"{statistics.mean(values):.4f}" if values else "–"
        std = f"{statistics.stdev(values):.4f}" if len(values) > 1 else "–"
        print(f"| {arm} | {' | '.join(cells)} | {mean} | {std} |")
    for arm, metrics in pretrain.items():
        print(f"{arm} masked-LM: held-out perplexity {metrics['perplexity']:.1f}, masked-token accuracy "
              f"{metrics['masked_accuracy']:.3f} on {metrics['masked_tokens']} masked tokens")


if __name__ == "__main__":
    main()
