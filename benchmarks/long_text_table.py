"""Render the long-text study (docs/long_texts.md): task.long_text truncate vs head_tail on the SpamAssassin emails,
3 seeds each, from the rows benchmarks/default_schedule.py wrote. The policy is chosen on validation (each run's
best validation accuracy, the epoch the train stage keeps); test accuracy is reported beside it.

    python benchmarks/default_schedule.py --project pipelines/spam-long --scratch /tmp/spam-sched \
        --out benchmarks/results/long-text-spam-2026-12-02.json \
        --schedule task.long_text=truncate --schedule task.long_text=head_tail --seeds 0 1 2
    python benchmarks/long_text_table.py benchmarks/results/long-text-spam-2026-12-02.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def best_val(row: dict) -> tuple[int, float]:
    header, *lines = [line.split(",") for line in row["val_history"]]
    col = header.index("val_accuracy")
    epoch, value = max(((int(x[0]), float(x[col])) for x in lines), key=lambda t: t[1])
    return epoch, value


def main() -> None:
    rows = json.loads(Path(sys.argv[1]).read_text())
    policies: dict[str, list[dict]] = {}
    for row in rows:
        policies.setdefault(row["schedule"]["task.long_text"], []).append(row)
    print("| policy | seed | best val accuracy (epoch) | test accuracy | test macro F1 | fit s |")
    print("| --- | --- | --- | --- | --- | --- |")
    summary = {}
    for policy, runs in policies.items():
        for run in sorted(runs, key=lambda r: r["seed"]):
            epoch, val = best_val(run)
            print(f"| {policy} | {run['seed']} | {val:.4f} ({epoch}) | {run['test']['accuracy']:.4f} | "
                  f"{run['test']['macro_f1']:.4f} | {run['fit_s']:.0f} |")
        vals = [best_val(r)[1] for r in runs]
        tests = [r["test"]["accuracy"] for r in runs]
        summary[policy] = (statistics.mean(vals), statistics.mean(tests),
                           statistics.stdev(tests) if len(tests) > 1 else 0.0, len(runs))
    print()
    print("| policy | seeds | mean val accuracy | mean test accuracy (sd) |")
    print("| --- | --- | --- | --- |")
    for policy, (val, test, sd, n) in summary.items():
        print(f"| {policy} | {n} | {val:.4f} | {test:.4f} ({sd:.4f}) |")
    chosen = max(summary, key=lambda p: summary[p][0])
    print(f"\nchosen on validation: {chosen}")


if __name__ == "__main__":
    main()
