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


EXAMPLES = {
    "bertops": """examples:
  bertops init pipelines/reviews --task sequence_classification --source data/reviews.csv --text-column body
  dvc repro                                  # the pipeline: import, prepare, train, evaluate, register
  bertops predict "A gorgeous, moving film."  # the champion of registry.model_name
  bertops stage train --params pipelines/reviews/params.yaml --root pipelines/reviews""",
    "init": """examples:
  bertops init pipelines/reviews --task sequence_classification --source data/reviews.csv --text-column body
  bertops init pipelines/own --task sequence_classification --source data/own   # data/own/<label>/*.txt
  bertops init pipelines/ner-zh --task token_classification --source data/msra.conll --tag-scheme BMES""",
    "stage": """examples:
  bertops stage prepare
  bertops stage train --params pipelines/wnut-ner/params.yaml --root pipelines/wnut-ner""",
    "predict": """examples:
  bertops predict "A gorgeous, moving film." "Dull and tedious."
  bertops predict --file reviews.csv --text-column body --output scored.csv   # every class's probability
  bertops predict --model-uri models:/bertops-mr@champion --tracking-uri sqlite:///mlflow.db "Fine."
  bertops predict --pairs "A man plays a guitar.<TAB>Someone makes music." """,
    "fill-mask": """examples:
  bertops fill-mask "The film was [MASK]." --top-k 3""",
    "check-params": """examples:
  bertops check-params --params pipelines/mr-tapt/finetune/params.yaml""",
    "study": """examples:
  bertops study studies/mr-lr.yaml""",
    "promote": "examples:\n  bertops promote bertops-mr 7 --reason 'checked the new test split by hand'",
    "review": """examples:
  bertops review bertops-mr        # the latest challenger against the champion
  bertops review bertops-mr 7""",
    "rollback": """examples:
  bertops rollback bertops-mr""",
    "lineage": """examples:
  bertops lineage bertops-mr 7
  bertops lineage --data 3f2c9a1e""",
}


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    """--params and --root, before or after the subcommand: the subcommand's copies default to SUPPRESS, so
    they only override what was given before it."""
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    parser.add_argument("--params", type=Path, default=default(Path("params.yaml")),
                        help="params file (default params.yaml)")
    parser.add_argument("--root", type=Path, default=default(Path(".")),
                        help="project root (default: current directory)")


def build_parser() -> argparse.ArgumentParser:
    import bertops

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="bertops", description=__doc__, epilog=EXAMPLES["bertops"],
                                     formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"bertops {bertops.__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        made = sub.add_parser(name, help=help, description=help, epilog=EXAMPLES[name], formatter_class=fmt)
        _common(made, top=False)
        return made

    init = command("init", "scaffold a pipeline directory for your corpus (params.yaml with the task's measured "
                           "defaults, dvc.yaml) and dry-run its import and prepare")
    init.add_argument("directory", type=Path, help="the new pipeline directory, e.g. pipelines/reviews")
    init.add_argument("--task", required=True, help="the task type (sequence_classification, token_classification, "
                                                    "question_answering, masked_lm, ...)")
    init.add_argument("--source", required=True, help="your corpus file or folder")
    init.add_argument("--model", help="hub name or local path of the encoder (default: the packaged MiniLM)")
    init.add_argument("--name", help="registry.model_name (default: the directory's name)")
    init.add_argument("--max-length", type=int, help="model.max_length (default 128; at most the model's limit)")
    init.add_argument("--format", help="corpus.format (default: auto, from the suffix)")
    for column in ("text", "text-pair", "label", "tokens", "tags"):
        init.add_argument(f"--{column}-column", help=f"corpus.{column.replace('-', '_')}_column")
    init.add_argument("--tag-scheme", help="task.tag_scheme (token classification)")
    init.add_argument("--force", action="store_true", help="overwrite an existing params.yaml and dvc.yaml")
    stage = command("stage", "run one pipeline stage (dvc.yaml calls these)")
    stage.add_argument("name", choices=list(STAGE_FUNCTIONS))
    pred = command("predict", "label and probability (or the entities, the answer, the score) for each input")
    pred.add_argument("texts", nargs="*", help="texts to predict")
    pred.add_argument("--file", type=Path, help="one text per line, or a .csv/.tsv/.jsonl/.parquet file (with "
                                                "--text-column)")
    pred.add_argument("--text-column", default="text", help="--file's column holding the text (default text)")
    pred.add_argument("--pair-column", help="--file's column holding a pair's second text (or a QA context)")
    pred.add_argument("--output", type=Path, help="write the predictions to a .jsonl or .csv file (CSV: one "
                                                  "probability column per class) instead of printing them")
    pred.add_argument("--model-uri", help="registry reference (default models:/<registry.model_name>@champion)")
    pred.add_argument("--tracking-uri", help="where the registry is (default: MLFLOW_TRACKING_URI, else the "
                                             "project's tracking.uri)")
    pred.add_argument("--pairs", action="store_true", help="each input is a sentence pair: first<TAB>second")
    pred.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    fill = command("fill-mask", "top-k fillers for the [MASK] in each text (a masked-LM model)")
    fill.add_argument("texts", nargs="+", help="texts with one [MASK] each")
    fill.add_argument("--top-k", type=int, default=5)
    fill.add_argument("--model-uri", help="registry reference (default models:/<registry.model_name>@champion)")
    fill.add_argument("--tracking-uri", help="where the registry is (default: MLFLOW_TRACKING_URI, else the "
                                             "project's tracking.uri)")
    fill.add_argument("--json", action="store_true", help="print JSON lines")
    command("check-params", "validate params.yaml and print the effective values")
    stu = command("study", "run (or resume) a study file: a grid of runs summarised in reports/studies/<name>/")
    stu.add_argument("study_file", type=Path)
    prom = command("promote", "manually make VERSION the champion (recorded with who and why)")
    prom.add_argument("name")
    prom.add_argument("version")
    prom.add_argument("--reason", required=True)
    rev = command("review", "the challenger (or VERSION) against the champion: metric, gate checks, per-class F1")
    rev.add_argument("name")
    rev.add_argument("version", nargs="?")
    back = command("rollback", "move champion back to the previous champion")
    back.add_argument("name")
    lin = command("lineage", "a version's lineage tags, or the versions trained on a data hash")
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
        elif args.command == "init":
            from bertops.scaffold import init_pipeline

            init_pipeline(args)
        elif args.command == "predict":
            from bertops.predict import read_inputs, registered_predictions, write_predictions

            if args.output is not None and args.output.suffix.lower() not in (".jsonl", ".csv"):
                raise BertopsError(f"--output {args.output}: write a .jsonl or a .csv file")
            inputs = read_inputs(args.texts, args.file, text_column=args.text_column, pair_column=args.pair_column)
            family, rows = registered_predictions(args.model_uri, inputs, args.params, args.root, args.pairs,
                                                  args.tracking_uri)
            if args.output is not None:
                write_predictions(rows, args.output)
                print(f"wrote {len(rows)} predictions to {args.output}", file=sys.stderr)
            else:
                for row in rows:
                    print(json.dumps(row, ensure_ascii=False) if args.json else family.format_row(row))
        elif args.command == "fill-mask":
            from bertops.predict import fill_mask

            for row in fill_mask(args.model_uri, args.texts, args.top_k, args.params, args.root, args.tracking_uri):
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
