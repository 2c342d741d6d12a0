"""`bertops init pipelines/<name> --task <type> --source <file>`: a pipeline directory for a user's own corpus.

- params.yaml: every knob at its default (config.py is the one source of defaults), the task family's measured
  training schedule where it has one (`TaskFamily.train_defaults`), and a comment on each knob from its field's
  description;
- dvc.yaml: written by bertops/pipeline_files.py, the code scripts/sync_pipelines.py uses;
- a dry run of import and prepare in a scratch directory (nothing of it stays in the pipeline): the row count,
  labels, duplicates, lengths in tokens and the [UNK] share, or the corpus's first bad line;
- the next commands: dvc repro, the flow, predict, and serving.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

import yaml
from pydantic import BaseModel

from bertops.config import Params, parse_params
from bertops.errors import BertopsError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # resolves to the packaged copy when installed
HEADER = """# Written by `bertops init`. Every knob of this pipeline, at bertops's defaults unless noted;
# `bertops check-params --params {params}` validates it. Run: dvc repro {dvc}
"""


def find_repo_root(start: Path) -> Path:
    """The bertops checkout that holds `start`: the nearest directory above it with dvc.yaml and bertops/."""
    for candidate in [start, *start.parents]:
        if (candidate / "dvc.yaml").is_file() and (candidate / "bertops" / "__init__.py").is_file():
            return candidate
    raise BertopsError(f"{start}: not inside a bertops checkout (a directory with dvc.yaml and bertops/); run "
                       "`bertops init` in your clone")


def _scalar(value) -> str:
    """One YAML value on one line (flow style for lists and mappings)."""
    return yaml.safe_dump([value], default_flow_style=True, width=10_000, sort_keys=False).strip()[1:-1]


def _emit(model: BaseModel, notes: dict[str, str], indent: int) -> list[str]:
    lines, pad = [], " " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        comment = notes.get(name) or field.description
        if isinstance(value, BaseModel) and name != "lora":
            lines.append(f"{pad}{name}:" + (f"  # {comment}" if comment else ""))
            lines.extend(_emit(value, {}, indent + 2))
            continue
        dumped = value.model_dump(mode="json") if isinstance(value, BaseModel) else _plain(value)
        line = f"{pad}{name}: {_scalar(dumped)}"
        lines.append(f"{line:<40}  # {comment}" if comment else line)
    return lines


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def commented_params(params: Params, notes: dict[str, dict[str, str]], header: str) -> str:
    """params.yaml text: each section's knobs with a comment on each (`notes` first, else the field's own
    description). Reading it back gives `params` again."""
    lines = [header.rstrip("\n")]
    for section in Params.model_fields:
        lines += ["", f"{section}:", *_emit(getattr(params, section), notes.get(section, {}), 2)]
    return "\n".join(lines) + "\n"


def scaffold_params(task: str, source: str, name: str, model: str | None, corpus: dict,
                    max_length: int | None = None) -> tuple[Params, dict]:
    """The validated params of a new pipeline and the comments that explain the family's measured values."""
    from bertops.tasks import get_task

    family = get_task(task)
    corpus = dict(corpus)
    task_section = {"type": task, **({"tag_scheme": corpus.pop("tag_scheme")} if "tag_scheme" in corpus else {})}
    raw = {"corpus": {"source": source, **corpus},
           "model": {"name_or_path": model or DEFAULT_MODEL, **({"max_length": max_length} if max_length else {})},
           "task": task_section, "registry": {"model_name": name}, "train": dict(family.train_defaults)}
    params = parse_params(raw, "bertops init")
    notes = {"train": {key: f"{family.train_defaults_note} (default {_scalar(_default('train', key))})"
                       for key in family.train_defaults}}
    return params, notes


def _default(section: str, key: str):
    field = Params.model_fields[section].default
    return _plain(getattr(field, key))


def dry_run(params: Params, pipeline_dir: Path) -> dict:
    """Import and prepare into a scratch directory; what a user should know about the corpus before training."""
    from bertops.layout import Layout
    from bertops.modeling import check_max_length, load_tokenizer
    from bertops.stages.import_corpus import import_corpus
    from bertops.stages.prepare import prepare

    source = Path(params.corpus.source)
    if not source.is_absolute():
        source = (pipeline_dir / source).resolve()
    scratch_params = params.model_copy(update={"corpus": params.corpus.model_copy(update={"source": str(source)})})
    check_max_length(params.model.name_or_path, params.model.revision, params.model.max_length)
    with tempfile.TemporaryDirectory(prefix="bertops-init-") as scratch:
        layout = Layout(Path(scratch))
        import_corpus(scratch_params, layout)
        stats = prepare(scratch_params, layout) or {}
        labels = json.loads(layout.labels_file.read_text()) if layout.labels_file.is_file() else None
        texts = _prepared_texts(layout)
        tokenizer = load_tokenizer(params.model.name_or_path, params.model.revision)
        sizes = {split: sum(1 for _ in layout.split(split).open()) for split in ("train", "val", "test")}
    report = {"rows": stats.get("rows") or sum(sizes.values()), "labels": labels, "stats": stats, "splits": sizes}
    if texts:
        lengths = [len(ids) for ids in tokenizer(texts[:5000], add_special_tokens=True)["input_ids"]]
        limit = params.model.max_length
        report["tokens"] = {"median": statistics.median(lengths), "p95": sorted(lengths)[int(0.95 * (len(lengths) - 1))],
                            "max": max(lengths), "over_max_length": round(sum(n > limit for n in lengths) / len(lengths), 4),
                            "max_length": limit}
        from bertops.vocab_coverage import vocab_coverage

        coverage = vocab_coverage(tokenizer, [t.split() for t in texts[:5000]])
        report["unk_word_ratio"] = coverage["unk_word_ratio"]
    return report


def _prepared_texts(layout) -> list[str]:
    path = layout.prepared_dir / "train.jsonl"
    if not path.is_file():
        return []
    from bertops.corpora.splitting import read_split

    texts = []
    for row in read_split(path):
        text = row.get("text") or " ".join(row.get("tokens", [])) or row.get("context", "")
        if text:
            texts.append(text)
    return texts


def next_commands(pipeline_dir: Path, repo_root: Path, params: Params) -> str:
    rel = os.path.relpath(pipeline_dir, repo_root)
    name = params.registry.model_name
    return f"""next:
  dvc repro {rel}/dvc.yaml                                  # import, prepare, train, evaluate, register
  python -m flows.retrain --project-dir {rel}               # the same stages as a Prefect flow, with the gate
  bertops predict --params {rel}/params.yaml --root {rel} "some text"
  MLFLOW_TRACKING_URI=sqlite:///{rel}/mlflow.db mlflow models serve -m models:/{name}@champion --env-manager local -p 5001"""


def init_pipeline(args) -> Path:
    from bertops.pipeline_files import pipeline_dvc_yaml

    pipeline_dir = Path(args.directory).resolve()
    repo_root = find_repo_root(Path.cwd().resolve())
    if repo_root not in pipeline_dir.parents:
        raise BertopsError(f"{args.directory}: the pipeline directory must be inside {repo_root}")
    source = Path(args.source).resolve()
    if not source.exists():
        raise BertopsError(f"--source {args.source}: file not found")
    params_file, dvc_file = pipeline_dir / "params.yaml", pipeline_dir / "dvc.yaml"
    if not args.force and (params_file.exists() or dvc_file.exists()):
        raise BertopsError(f"{pipeline_dir} already has a params.yaml or dvc.yaml (--force overwrites them)")
    corpus = {key: value for key, value in {
        "format": args.format, "text_column": args.text_column, "text_pair_column": args.text_pair_column,
        "label_column": args.label_column, "tokens_column": args.tokens_column, "tags_column": args.tags_column,
        "tag_scheme": args.tag_scheme}.items() if value is not None}
    name = args.name or pipeline_dir.name
    params, notes = scaffold_params(args.task, os.path.relpath(source, pipeline_dir), name, args.model, corpus,
                                    args.max_length)
    report = dry_run(params, pipeline_dir)  # a bad corpus stops here, before anything is written
    rel = os.path.relpath(pipeline_dir, repo_root)
    pipeline_dir.mkdir(parents=True, exist_ok=True)
    params_file.write_text(commented_params(params, notes, HEADER.format(params=f"{rel}/params.yaml",
                                                                         dvc=f"{rel}/dvc.yaml")))
    dvc_file.write_text(pipeline_dvc_yaml(pipeline_dir, repo_root))
    print(f"wrote {rel}/params.yaml and {rel}/dvc.yaml\n")
    print(describe(report))
    print()
    print(next_commands(pipeline_dir, repo_root, params))
    return pipeline_dir


def describe(report: dict) -> str:
    stats = report["stats"]
    lines = [f"corpus: {report['rows']} rows"]
    dropped = {k: v for k, v in stats.items() if k.endswith("dropped") and v}
    if dropped:
        lines.append("  dropped: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in dropped.items()))
    if report.get("labels"):
        labels = report["labels"]
        lines.append(f"  labels ({len(labels)}): " + ", ".join(labels[:20]) + (" ..." if len(labels) > 20 else ""))
    for split, size in report["splits"].items():
        counts = (stats.get("splits") or {}).get(split)
        per_label = isinstance(counts, dict) and len(counts) <= 10 and all(isinstance(v, int) for v in counts.values())
        lines.append(f"  {split}: {size}" + (f"  {json.dumps(counts, ensure_ascii=False)}" if per_label else ""))
    if "tokens" in report:
        t = report["tokens"]
        lines.append(f"  length in tokens: median {t['median']}, p95 {t['p95']}, max {t['max']}; "
                     f"{100 * t['over_max_length']:.1f}% over model.max_length = {t['max_length']} (cut)")
    if "unk_word_ratio" in report:
        lines.append(f"  words with [UNK] pieces: {100 * report['unk_word_ratio']:.2f}%")
    return "\n".join(lines)
