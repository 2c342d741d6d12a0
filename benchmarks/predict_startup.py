"""`bertops predict` start-up: the wall time of one `bertops predict "<text>"` process (imports, loading the
registered champion, one prediction), side by side for two checkouts taking turns, so that a host's speed cancels
out of the ratio. Each side runs in its own project (a version registered by that checkout's code).

    python benchmarks/predict_startup.py --side before=/tmp/old-checkout:/tmp/old-project \
        --side after=.:/tmp/new-project --rounds 3 --out benchmarks/results/predict-startup-<date>.json

A project is any directory where `bertops predict` finds its champion (params.yaml and the tracking store);
`python benchmarks/predict_startup.py --make-project DIR` trains and registers a tiny one with this checkout
(the tests' 2-layer random-init BERT on 240 synthetic reviews).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_project(root: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import yaml
    from conftest import FILLER, NEGATIVE, POSITIVE, synthetic_reviews, tiny_params, write_corpus_csv, write_tiny_bert

    from bertops.config import load_params
    from bertops.layout import Layout
    from bertops.stages.evaluate import evaluate
    from bertops.stages.import_corpus import import_corpus
    from bertops.stages.prepare import prepare
    from bertops.stages.register import register
    from bertops.stages.train import train

    root.mkdir(parents=True, exist_ok=True)
    model = (root / "tiny-bert").resolve()
    model.mkdir(exist_ok=True)
    write_tiny_bert(model, [*POSITIVE, *NEGATIVE, *FILLER])
    write_corpus_csv(root / "corpus.csv", synthetic_reviews(240))
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(model)))
    params, layout = load_params(root / "params.yaml"), Layout(root)
    import_corpus(params, layout)
    prepare(params, layout)
    train(params, layout)
    evaluate(params, layout)
    print(register(params, layout))


def one_run(checkout: Path, project: Path, text: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bertops.cli", "predict", text], cwd=project, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: bertops predict failed: {done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", action="append", default=[], help="name=CHECKOUT:PROJECT")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--text", default="the movie was great and charming")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--make-project", type=Path)
    args = parser.parse_args()
    if args.make_project:
        make_project(args.make_project)
        return
    sides = {}
    for spec in args.side:
        name, _, paths = spec.partition("=")
        checkout, _, project = paths.partition(":")
        sides[name] = (Path(checkout), Path(project))
    seconds = {name: [] for name in sides}
    for _ in range(args.rounds):  # taking turns: a slower moment of the host hits every side alike
        for name, (checkout, project) in sides.items():
            seconds[name].append(round(one_run(checkout, project, args.text), 2))
    result = {"benchmark": "predict_startup", "host": platform.node(), "cpu_count": os.cpu_count(),
              "rounds": args.rounds, "seconds": seconds,
              "median_seconds": {name: statistics.median(v) for name, v in seconds.items()}}
    names = list(sides)
    if len(names) == 2:
        a, b = names
        result[f"{a}_over_{b}"] = round(result["median_seconds"][a] / result["median_seconds"][b], 2)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
