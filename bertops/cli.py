"""The `bertops` command: the pipeline's stages (what dvc.yaml runs) and `predict`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from bertops.errors import BertopsError

from bertops.stages import STAGE_FUNCTIONS, run_stage  # noqa: F401 - `bertops stage` runs these


def registry_command(args) -> None:
    from mlflow import MlflowClient

    from bertops import registry, tracking
    from bertops.config import load_params
    from bertops.layout import Layout

    tracking.configure(load_params(args.params), Layout(args.root.resolve()))
    client = MlflowClient()
    if args.command == "promote":
        registry.promote(client, args.name, args.version, args.reason)
        print(f"{args.name} v{args.version} is now champion")
    elif args.command == "review":
        print(registry.review(client, args.name, args.version))
    elif args.command == "rollback":
        print(f"{args.name}: champion moved back to v{registry.rollback(client, args.name)}")
    elif args.data:
        for name, version in registry.versions_trained_on(client, args.data):
            print(f"{name}\t{version}")
    elif args.name and args.version:
        for key, value in registry.lineage_of(client, args.name, args.version).items():
            print(f"{key}\t{value}")
    else:
        raise BertopsError("lineage: give NAME VERSION, or --data HASH")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertops", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default params.yaml)")
    parser.add_argument("--root", type=Path, default=Path("."), help="project root (default: current directory)")
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage", help="run one pipeline stage (dvc.yaml calls these)")
    stage.add_argument("name", choices=list(STAGE_FUNCTIONS))
    pred = sub.add_parser("predict", help="label and probability (or the entities) for each input text")
    pred.add_argument("texts", nargs="*", help="texts to classify")
    pred.add_argument("--file", type=Path, help="a file with one text per line")
    pred.add_argument("--model-uri", help="registry reference (default models:/<registry.model_name>@champion)")
    pred.add_argument("--pairs", action="store_true", help="each input is a sentence pair: first<TAB>second")
    pred.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    fill = sub.add_parser("fill-mask", help="top-k fillers for the [MASK] in each text (a masked-LM model)")
    fill.add_argument("texts", nargs="+", help="texts with one [MASK] each")
    fill.add_argument("--top-k", type=int, default=5)
    fill.add_argument("--model-uri", help="registry reference (default models:/<registry.model_name>@champion)")
    fill.add_argument("--json", action="store_true", help="print JSON lines")
    sub.add_parser("check-params", help="validate params.yaml and print the effective values")
    stu = sub.add_parser("study", help="run (or resume) a study file: a grid of runs summarised in "
                                       "reports/studies/<name>/")
    stu.add_argument("study_file", type=Path)
    prom = sub.add_parser("promote", help="manually make VERSION the champion (recorded with who and why)")
    prom.add_argument("name")
    prom.add_argument("version")
    prom.add_argument("--reason", required=True)
    rev = sub.add_parser("review", help="the challenger (or VERSION) against the champion: metric, gate checks, "
                                        "per-class F1")
    rev.add_argument("name")
    rev.add_argument("version", nargs="?")
    back = sub.add_parser("rollback", help="move champion back to the previous champion")
    back.add_argument("name")
    lin = sub.add_parser("lineage", help="a version's lineage tags, or the versions trained on a data hash")
    lin.add_argument("name", nargs="?")
    lin.add_argument("version", nargs="?")
    lin.add_argument("--data", help="a DVC md5 of data/raw or data/prepared")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("BERTOPS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "stage":
            result = run_stage(args.name, args.params, args.root)
            if isinstance(result, dict):
                print(json.dumps(result, indent=1, default=str))
        elif args.command == "predict":
            from bertops.config import load_params
            from bertops.predict import predict
            from bertops.tasks import task_of

            family = task_of(load_params(args.params))
            for row in predict(args.model_uri, args.texts, args.file, args.params, args.root, args.pairs):
                print(json.dumps(row, ensure_ascii=False) if args.json else family.format_row(row))
        elif args.command == "fill-mask":
            from bertops.predict import fill_mask

            for row in fill_mask(args.model_uri, args.texts, args.top_k, args.params, args.root):
                fillers = "  ".join(f"{f['token']} {f['probability']:.3f}" for f in row["fillers"])
                print(json.dumps(row, ensure_ascii=False) if args.json else f"{row['text']}\n    {fillers}")
        elif args.command in ("promote", "review", "rollback", "lineage"):
            registry_command(args)
        elif args.command == "study":
            from bertops.study import load_study
            from flows.study import run_study

            load_study(args.study_file, args.root)  # a bad study file stops here, before Prefect starts
            summary = run_study(str(args.study_file), str(args.root))
            print((Path(args.root) / "reports" / "studies" / summary["study"] / "summary.md").read_text())
        elif args.command == "check-params":
            from bertops.config import load_params

            print(load_params(args.params).model_dump_json(indent=1))
    except BertopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
