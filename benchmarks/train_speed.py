"""Training speed, side by side in one process and taking turns: bertops's train-stage path against HF Trainer
(its defaults, and bertops's recipe) and a plain PyTorch loop, on the real MR split at its natural lengths and on
fixed-length synthetic data.

    python benchmarks/train_speed.py                       # CPU: every runner, MR + fixed length, 2 rounds
    python benchmarks/train_speed.py --sentences 640 --rounds 1 --runners bertops hf-trainer-same-recipe
    python benchmarks/train_speed.py --full --data mr --rounds 1   # full runs: every epoch, then test accuracy

Runners (the `runner` key of each row):
- bertops: the train stage's own objects: `task_data` (FineTuneData: encoded once, length-grouped batches, the
  family's collator), `family.build_module` (FineTuner: AdamW with bias correction, warmup + linear decay,
  clipping) and a Lightning Trainer with the stage's arguments (`trainer_kwargs`);
- hf-trainer: `transformers.Trainer` as its docs run it: batch 32, random order, DataCollatorWithPadding;
- hf-trainer-same-recipe: Trainer with bertops's batch size, `train_sampling_strategy="group_by_length"`,
  learning-rate schedule, clipping, precision and loader workers;
- plain: a plain PyTorch loop over the same length-grouped batches (AdamW, clipping, the schedule).

Each runner trains a fresh copy of the model (params.yaml's model.name_or_path: the packaged MiniLM) on the same
`--sentences` training sentences; the first `--warmup` steps are not timed. Rows: sentences/s, real (non-pad)
tokens/s, and seconds per MR epoch at that speed; `ratio_vs_*` compare runners of one round and data set.
Results go to benchmarks/results/<host>-<date>.json (the host's CPU model or GPU name; -2, -3 ... for later runs
of the day); on a GPU with a known peak, rows carry `mfu` too (model FLOPs: `model_flops_per_token`).
`--full` trains each runner for whole epochs over the whole training split (`train.epochs`; HF Trainer's own
default of 3 for `hf-trainer`) and scores its final model on MR's test split with the evaluate stage's batched
inference (`bertops.inference.predict_proba`: the same scorer for every runner), so that a speed row never hides a
loss of accuracy: rows then carry `test_accuracy`, `epochs` (as the trainer counted them) and `total_seconds`
(model load to last step).
`--variant NAME:section.key=value` adds an A/B row of the bertops runner with params changed (a lever against the
default), e.g. `--variant pad8:train.pad_to_multiple_of=8 --variant compile:train.compile=true`.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import random
import statistics
import tempfile
import time
import typing
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


# ---- data ----------------------------------------------------------------------------------------------------
def prepared_mr(params_path: Path, workdir: Path):
    """The MR corpus imported and prepared as `dvc repro` does (same params, same split), in `workdir`."""
    from bertops.config import load_params
    from bertops.layout import Layout
    from bertops.stages.import_corpus import import_corpus
    from bertops.stages.prepare import prepare

    params = load_params(params_path)
    source = Path(params.corpus.source)
    if not source.is_absolute():
        source = (params_path.parent / source).resolve()
    params = params.model_copy(update={"corpus": params.corpus.model_copy(update={"source": str(source)})})
    layout = Layout(workdir)
    import_corpus(params, layout)
    prepare(params, layout)
    return params, layout


def mr_train_features(params_path: Path):
    """MR's training split encoded as its task family encodes it: (params, tokenizer, labels, features)."""
    from bertops.corpora.splitting import read_split
    from bertops.modeling import load_tokenizer
    from bertops.tasks.sequence_classification import encode_sequences

    with tempfile.TemporaryDirectory() as tmp:
        params, layout = prepared_mr(params_path, Path(tmp))
        tokenizer = load_tokenizer(params.model.name_or_path)
        labels = json.loads(layout.labels_file.read_text())
        features = encode_sequences(read_split(layout.split("train")), tokenizer, labels, params.model.max_length)
    return params, tokenizer, labels, features


def length_grouped_batches(features: list[dict], steps: int, batch_size: int = 16, seed: int = 0) -> list[list]:
    """`steps` batches as the train stage groups them: a shuffled pool sorted by length, cut into batches."""
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed)).tolist()
    pool = sorted(order[: batch_size * steps], key=lambda i: len(features[i]["input_ids"]))
    return [[features[i] for i in pool[k:k + batch_size]] for k in range(0, len(pool), batch_size)]


def length_grouped_mr_batches(params_path: Path, steps: int, batch_size: int = 16, seed: int = 0):
    """`steps` MR training batches as the train stage groups them, encoded as its task family encodes them:
    (params, tokenizer, labels, batches of feature dicts). The paired step A/Bs (pad_multiple.py, paired_steps.py)
    run both sides over these."""
    params, tokenizer, labels, features = mr_train_features(params_path)
    return params, tokenizer, labels, length_grouped_batches(features, steps, batch_size, seed)


def fixed_length_rows(n: int, tokenizer, length: int) -> list[dict]:
    """Texts that encode to exactly `length` tokens (random vocabulary words), with random labels."""
    rng = random.Random(0)
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 3][:5000]
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(length))
        ids = tokenizer(text, truncation=True, max_length=length)["input_ids"]
        rows.append({"text": tokenizer.decode(ids[1:-1]), "label": rng.choice(["negative", "positive"])})
    return rows


class CountingCollator:
    """Wraps a collator and counts the real (attention-mask) tokens, the computed (padded) positions and the
    sentences of every batch it forms."""

    def __init__(self, inner):
        self.inner, self.tokens, self.positions, self.sentences = inner, 0, 0, 0

    def __call__(self, features):
        batch = self.inner(features)
        self.tokens += int(batch["attention_mask"].sum())
        self.positions += batch["attention_mask"].numel()
        self.sentences += int(batch["attention_mask"].shape[0])
        return batch


def padding_share(params, rows_path: Path) -> dict:
    """One epoch of the bertops runner's training batches, formed and counted, not trained on: the share of the
    computed positions that are padding, which bounds what packing sentences into rows could save."""
    from bertops.modeling import load_tokenizer
    from bertops.training.recipe import task_data
    from bertops.tasks import task_of

    labels = json.loads((rows_path.parent / "labels.json").read_text())
    tokenizer = load_tokenizer(params.model.name_or_path, params.model.revision)
    data = task_data(task_of(params), params, {"train": rows_path, "val": rows_path}, tokenizer, labels)
    data.collate = counter = CountingCollator(data.collate)
    data.setup("fit")
    batches = sum(1 for _ in data.train_dataloader())
    return {"batches": batches, "sentences": counter.sentences, "real_tokens": counter.tokens,
            "computed_positions": counter.positions,
            "padding_share": round(1 - counter.tokens / counter.positions, 4)}


class Clock:
    """Wall time from the end of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.counted = warmup, None, None, (0, 0)
        self.created = time.perf_counter()  # the untimed warmup (setup, the first steps, any compilation)

    def step_end(self, step: int, counter: CountingCollator):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if step == self.warmup:
            self.start, self.counted = time.perf_counter(), (counter.sentences, counter.tokens)
        self.end = time.perf_counter()

    def rates(self, counter: CountingCollator) -> tuple[float, float, float, float]:
        seconds = self.end - self.start
        sentences, tokens = counter.sentences - self.counted[0], counter.tokens - self.counted[1]
        return sentences / seconds, tokens / seconds, seconds, self.start - self.created


class Trained(typing.NamedTuple):
    """What a runner returns: its rates (`Clock.rates`) and the model it trained, with the tokenizer and labels."""
    sentences_per_s: float
    tokens_per_s: float
    seconds: float
    warmup_seconds: float
    model: torch.nn.Module
    tokenizer: object
    labels: list
    epochs: float  # as the trainer counted them


# ---- runners -------------------------------------------------------------------------------------------------
def run_bertops(params, rows_path: Path, steps: int, warmup: int, epochs: int | None = None):
    import lightning as L

    from bertops.modeling import load_tokenizer
    from bertops.training.recipe import task_data, trainer_kwargs
    from bertops.tasks import task_of

    family = task_of(params)
    labels = json.loads((rows_path.parent / "labels.json").read_text())
    tokenizer = load_tokenizer(params.model.name_or_path, params.model.revision)
    L.seed_everything(params.train.seed, verbose=False)
    model, new_params = family.load_model(params, labels, tokenizer, None)
    data = task_data(family, params, {"train": rows_path, "val": rows_path}, tokenizer, labels)
    data.collate = counter = CountingCollator(data.collate)
    module = family.build_module(model, new_params, params)
    clock = Clock(warmup)

    class Tick(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            clock.step_end(trainer.global_step, counter)

    kwargs = {**trainer_kwargs(params), "max_epochs": epochs or -1}
    trainer = L.Trainer(**kwargs, max_steps=-1 if epochs else steps, callbacks=[Tick()], enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    return Trained(*clock.rates(counter), module.model, tokenizer, labels, trainer.current_epoch)


def _hf_features(params, rows_path: Path, tokenizer, labels):
    from bertops.corpora.splitting import read_split
    from bertops.tasks.sequence_classification import encode_sequences

    rows = read_split(rows_path)
    return encode_sequences(rows, tokenizer, labels, params.model.max_length)


def run_hf(params, rows_path: Path, steps: int, warmup: int, epochs: int | None = None, *, same_recipe: bool):
    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainerCallback,
                              TrainingArguments)

    from bertops.modeling import load_tokenizer, resolve_model_path
    from bertops.training.module import auto_precision

    labels = json.loads((rows_path.parent / "labels.json").read_text())
    tokenizer = load_tokenizer(params.model.name_or_path, params.model.revision)
    features = _hf_features(params, rows_path, tokenizer, labels)
    torch.manual_seed(params.train.seed)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(params.model.name_or_path),
                                                               num_labels=len(labels), dtype=torch.float32)
    counter, clock = CountingCollator(DataCollatorWithPadding(tokenizer)), Clock(warmup)

    class Tick(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            clock.step_end(state.global_step, counter)

    hp = params.train
    if same_recipe:
        bf16 = auto_precision(hp.precision, hp.accelerator) == "bf16-mixed"
        recipe = dict(per_device_train_batch_size=hp.batch_size, learning_rate=hp.lr, weight_decay=hp.weight_decay,
                      warmup_steps=hp.warmup_ratio, max_grad_norm=hp.max_grad_norm, bf16=bf16,  # a float: a ratio
                      use_cpu=not torch.cuda.is_available(), dataloader_num_workers=hp.num_workers,
                      train_sampling_strategy="group_by_length")
    else:
        recipe = dict(per_device_train_batch_size=32, use_cpu=not torch.cuda.is_available())
    with tempfile.TemporaryDirectory() as out:
        # full runs: the recipe's epochs, or Trainer's own default (3) for its defaults
        length = ({"num_train_epochs": epochs} if same_recipe else {}) if epochs else {"max_steps": steps}
        args = TrainingArguments(output_dir=out, report_to=[], save_strategy="no", logging_steps=10_000,
                                 disable_tqdm=True, seed=hp.seed, **length, **recipe)
        trainer = Trainer(model=model, args=args, train_dataset=features, data_collator=counter, callbacks=[Tick()])
        trainer.train()
    return Trained(*clock.rates(counter), model, tokenizer, labels, trainer.state.epoch)


def run_plain(params, rows_path: Path, steps: int, warmup: int, epochs: int | None = None):
    from torch.utils.data import DataLoader
    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding,
                              get_linear_schedule_with_warmup)
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from bertops.modeling import load_tokenizer, resolve_model_path

    hp = params.train
    labels = json.loads((rows_path.parent / "labels.json").read_text())
    tokenizer = load_tokenizer(params.model.name_or_path, params.model.revision)
    features = _hf_features(params, rows_path, tokenizer, labels)
    torch.manual_seed(hp.seed)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(params.model.name_or_path),
                                                               num_labels=len(labels), dtype=torch.float32)
    model.train()
    sampler = LengthGroupedSampler(hp.batch_size, lengths=[len(f["input_ids"]) for f in features],
                                   generator=torch.Generator().manual_seed(hp.seed))
    counter, clock = CountingCollator(DataCollatorWithPadding(tokenizer)), Clock(warmup)
    loader = DataLoader(features, batch_size=hp.batch_size, sampler=sampler, collate_fn=counter)
    steps = epochs * len(loader) if epochs else steps
    opt = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    schedule = get_linear_schedule_with_warmup(opt, int(hp.warmup_ratio * steps), steps)
    step = 0
    while step < steps:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
            opt.step()
            schedule.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            clock.step_end(step, counter)
            if step == steps:
                break
    return Trained(*clock.rates(counter), model, tokenizer, labels, step / len(loader))


RUNNERS = {
    "bertops": run_bertops,
    "hf-trainer": lambda *a: run_hf(*a, same_recipe=False),
    "hf-trainer-same-recipe": lambda *a: run_hf(*a, same_recipe=True),
    "plain": run_plain,
}


def score_on_test(trained: "Trained", test_path: Path, max_length: int) -> float:
    """The trained model's accuracy on a prepared test split, scored by the evaluate stage's batched inference
    (length-sorted batches; fp32 on a CPU, bf16 on a GPU), the same scorer for every runner."""
    from bertops.corpora.splitting import read_split
    from bertops.inference import predict_proba

    rows = read_split(test_path)
    probs = predict_proba(trained.model, trained.tokenizer, [r["text"] for r in rows], max_length=max_length)
    return float(sum(trained.labels[int(i)] == r["label"] for i, r in zip(probs.argmax(axis=1), rows)) / len(rows))


def parse_variant(text: str) -> tuple[str, dict]:
    """`name:train.key=value,...` -> (name, {"train.key": parsed value})."""
    from bertops.config import parse_assignments

    name, _, assignments = text.partition(":")
    overrides = parse_assignments(assignments)
    if not name or not overrides:
        raise SystemExit(f"--variant {text!r}: write NAME:section.key=value[,section.key=value]")
    return name, overrides


def label(row: dict) -> str:
    return f"{row['runner']}+{row['variant']}" if row.get("variant") else row["runner"]


def summarize(rows: list[dict], datas: list[str], names: list[str]) -> list[dict]:
    """Per data and runner: the best round's sentences/s and its ratios to the reference runners, and the median
    over rounds of the ratio within each round (runners take turns, so a round's rows ran minutes apart: on a
    shared host whose rounds spread by 20 % or more, the within-round ratio is the steadier figure)."""
    rate = {(r["data"], label(r), r["round"]): r["sentences_per_s"] for r in rows}
    rounds = sorted({r["round"] for r in rows})
    summary = []
    for data in datas:
        best = {n: max((rate[(data, n, k)] for k in rounds if (data, n, k) in rate), default=None) for n in names}
        for runner in names:
            entry = {"data": data, "runner": runner, "best_sentences_per_s": best[runner]}
            accuracies = [r["test_accuracy"] for r in rows if r["data"] == data and label(r) == runner
                          and "test_accuracy" in r]
            if accuracies:  # full runs: every round's, so that a faster round never stands for a worse model
                entry["test_accuracy"] = accuracies
            for other in ("hf-trainer", "hf-trainer-same-recipe", "bertops"):
                if other in best and other != runner and best[other] and best[runner]:
                    entry[f"ratio_vs_{other}"] = round(best[runner] / best[other], 2)
                    within = [rate[(data, runner, k)] / rate[(data, other, k)] for k in rounds
                              if (data, runner, k) in rate and (data, other, k) in rate]
                    entry[f"median_round_ratio_vs_{other}"] = round(statistics.median(within), 2)
            summary.append(entry)
    return summary


def host_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "-").lower()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "cpu")
    vendor = "".join(c for c in model.split()[0].lower() if c.isalnum())  # "Intel(R)" -> "intelr"
    return f"cpu-{vendor}-{torch.get_num_threads()}t"


PEAK_BF16_TFLOPS = {"h100": 989.4, "h200": 989.4, "a100": 312.0, "l40s": 362.0}  # dense, SXM where both exist


def peak_flops(override: float | None) -> float | None:
    """The device's dense bf16 peak in FLOP/s: `--peak-tflops`, else a known GPU's datasheet figure; None on a CPU."""
    if override:
        return override * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0).lower()
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS.items() if key in name), None)


def model_flops_per_token(name_or_path: str):
    """Training FLOPs per real token as a function of the mean sequence length: 6 x the non-embedding weights
    (forward and backward of every matrix) + 12 x layers x hidden x length (attention scores and values)."""
    from transformers import AutoConfig, AutoModel

    from bertops.modeling import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    with torch.device("meta"):
        encoder = AutoModel.from_config(config)
    embedding = sum(p.numel() for n, p in encoder.named_parameters() if "embeddings" in n)
    weights = sum(p.numel() for p in encoder.parameters()) - embedding
    return lambda length: 6 * weights + 12 * config.num_hidden_layers * config.hidden_size * length


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--runners", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    ap.add_argument("--data", nargs="+", default=["mr", "fixed"], choices=["mr", "fixed"])
    ap.add_argument("--sentences", type=int, default=1280, help="timed training sentences per runner")
    ap.add_argument("--warmup", type=int, default=5, help="steps before the clock starts")
    ap.add_argument("--fixed-length", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="an A/B row of the bertops runner with params overridden, e.g. "
                         "pad8:train.pad_to_multiple_of=8 (repeatable; rows carry `variant`)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--model", help="a model directory or hub name instead of params.yaml's model.name_or_path "
                                    "(the GPU kit passes random-init bert-base and MiniLM directories)")
    ap.add_argument("--batch-size", type=int, help="train.batch_size for bertops and hf-trainer-same-recipe")
    ap.add_argument("--mr-split", type=Path, help="a prepared MR train.jsonl (labels.json beside it) instead of "
                                                  "importing and preparing the corpus (a machine without the sdist)")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU (default: known GPUs)")
    ap.add_argument("--full", action="store_true",
                    help="full runs on MR: whole epochs over the whole training split, then test accuracy")
    ap.add_argument("--padding", action="store_true",
                    help="only count one MR epoch of the bertops runner's batches: how much of them is padding")
    args = ap.parse_args()
    if args.full and args.data != ["mr"]:
        ap.error("--full scores on MR's test split: pass --data mr (the fixed-length data's labels are random)")
    if args.full and args.mr_split and not (args.mr_split.parent / "test.jsonl").is_file():
        ap.error(f"--full needs the test split beside --mr-split: {args.mr_split.parent / 'test.jsonl'} is missing")
    variants = dict(parse_variant(v) for v in args.variant)
    from bertops.config import with_overrides

    rows_out = []
    with tempfile.TemporaryDirectory(prefix="bertops-speed-") as tmp:
        if args.mr_split:
            from bertops.config import load_params

            params, train_path = load_params(args.params), args.mr_split
        else:
            params, layout = prepared_mr(args.params, Path(tmp) / "mr")
            train_path = layout.split("train")
        overrides = {**({"model.name_or_path": args.model} if args.model else {}),
                     **({"train.batch_size": args.batch_size} if args.batch_size else {})}
        params = with_overrides(params, overrides) if overrides else params
        flops_per_token = model_flops_per_token(params.model.name_or_path)
        peak = peak_flops(args.peak_tflops)
        if args.padding:
            print(json.dumps({"data": "mr", "runner": "bertops", **padding_share(params, train_path)}))
            return
        epoch_sentences = sum(1 for _ in train_path.open())
        from bertops.modeling import load_tokenizer

        tokenizer = load_tokenizer(params.model.name_or_path, params.model.revision)
        data_paths = {"mr": train_path}
        if "fixed" in args.data:
            fixed = Path(tmp) / "fixed" / "train.jsonl"
            fixed.parent.mkdir(parents=True)
            n = args.sentences + (args.warmup + 2) * 32
            fixed.write_text("".join(json.dumps(r) + "\n" for r in fixed_length_rows(n, tokenizer, args.fixed_length)))
            (fixed.parent / "labels.json").write_text(json.dumps(["negative", "positive"]))
            data_paths["fixed"] = fixed
        plan = [(r, None) for r in args.runners] + [("bertops", v) for v in variants]
        for round_ in range(1, args.rounds + 1):
            for data in args.data:
                for runner, variant in plan:
                    batch = 32 if runner == "hf-trainer" else params.train.batch_size
                    steps = args.warmup + args.sentences // batch
                    run_params = with_overrides(params, variants[variant]) if variant else params
                    started = time.perf_counter()
                    trained = RUNNERS[runner](run_params, data_paths[data], steps, args.warmup,
                                              run_params.train.epochs if args.full else None)
                    total_s = time.perf_counter() - started
                    sps, tps, seconds, warm_s = trained[:4]
                    full = {}
                    if args.full:
                        full = {"epochs": round(trained.epochs, 2),
                                "total_seconds": round(total_s, 1),
                                "test_accuracy": round(score_on_test(trained, data_paths[data].parent / "test.jsonl",
                                                                     run_params.model.max_length), 4)}
                    del trained
                    row = {"runner": runner, **({"variant": variant, "overrides": variants[variant]}
                                                if variant else {}),
                           "data": data, "round": round_, "batch_size": batch,
                           "timed_steps": None if args.full else steps - args.warmup,
                           "sentences_per_s": round(sps, 1), **full,
                           "real_tokens_per_s": round(tps, 1), "timed_seconds": round(seconds, 2),
                           "warmup_seconds": round(warm_s, 2),
                           "s_per_mr_epoch": round(epoch_sentences / sps, 1) if data == "mr" else None,
                           **({"mfu": round(tps * flops_per_token(tps / sps) / peak, 4)} if peak else {}),
                           "threads": torch.get_num_threads(), "torch": torch.__version__,
                           "date": datetime.date.today().isoformat()}
                    print(json.dumps(row), flush=True)
                    rows_out.append(row)
                    gc.collect()
    summary = summarize(rows_out, args.data, [*args.runners, *(f"bertops+{v}" for v in variants)])
    for entry in summary:
        print(json.dumps(entry), flush=True)
    out = args.out or REPO / "benchmarks" / "results" / f"{host_name()}-{datetime.date.today().isoformat()}.json"
    for n in range(2, 100):  # a second run on the same day and host gets its own file, never overwrites the first
        if args.out or not out.exists():
            break
        out = out.with_name(f"{host_name()}-{datetime.date.today().isoformat()}-{n}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python benchmarks/train_speed.py " + " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {' '.join(map(str, v)) if isinstance(v, list) else v}")
        for k, v in vars(args).items() if k not in ("params", "out") and v not in (None, False, [])),
        "rows": rows_out, "best": summary},
        indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
