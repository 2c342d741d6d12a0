"""The cloze walkthrough with real weights (docs/cloze.md): does pipelines/cloze-name teach the DAPT checkpoint a
made-up name, and what does it cost elsewhere?

    dvc repro pipelines/cloze-name/dvc.yaml     # DAPT on Brown (../mr-dapt/pretrain) first, then the name
    python benchmarks/cloze_name.py             # -> benchmarks/results/cloze-name-<date>.json + a markdown table

- before: the pipeline's starting point as its train stage builds it (`family.load_model` after the same seed: the
  DAPT checkpoint with task.new_tokens added, their rows drawn around the mean embedding); after: the pipeline's
  models/best (or `--model`).
- the name's rank among every filler of the vocabulary (1 = top) at the [MASK] of HELD_OUT, templates that share
  no sentence with the training corpus (data/sources/cloze-name.txt);
- unrelated text: the first `--unrelated` sentences of the Brown test split of ../mr-dapt/pretrain (held out from
  DAPT too), each with its middle word masked; the overlap of the top-5 fillers before and after (shared / 5), the
  top-1 agreement, and how often the name appears among the top 5 after.
Fillers come from `mask_logits`, the function the served model's fill-mask uses.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# new contexts for the name: no sentence of these is in the training corpus, and most of their wording is not
HELD_OUT = [
    "The Three Kingdoms strategist [MASK] was born in Langya.",
    "Many poems praise the wisdom of [MASK].",
    "[MASK] commanded the armies of Shu against Wei.",
    "The chancellor [MASK] died at Wuzhang in the autumn.",
    "Children in Chengdu learn the story of [MASK] at school.",
    "Liu Bei visited [MASK] three times before he agreed to serve.",
    "The feather fan of [MASK] is a symbol of wisdom.",
    "Sima Yi retreated when he saw [MASK] on the city wall.",
    "A statue of [MASK] stands in the temple of Shu.",
    "Generals still study the campaigns of [MASK].",
    "The wise minister [MASK] served two rulers of Shu.",
    "In the novel, [MASK] defeats Cao Cao with fire at Red Cliffs.",
]


def ranks(model, tokenizer, texts, token_id, max_length):
    from bertops.tasks.masked_lm import mask_logits

    out = [None] * len(texts)
    for i, logits in mask_logits(model, tokenizer, texts, max_length=max_length):
        out[i] = {"rank": 1 + int((logits > logits[token_id]).sum()),
                  "probability": float(torch.softmax(logits, -1)[token_id])}
    return out


def top5(model, tokenizer, texts, max_length):
    from bertops.tasks.masked_lm import fill_masks

    return [[f["token"] for f in fillers] for fillers in
            fill_masks(model, tokenizer, texts, max_length=max_length, top_k=5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, default=REPO / "pipelines" / "cloze-name")
    parser.add_argument("--unrelated", type=int, default=200)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a param of the run being scored, where it differs from the pipeline's params.yaml "
                             "(e.g. task.new_token_init=mean for a run of default_schedule.py with that schedule)")
    parser.add_argument("--model", type=Path, help="the checkpoint to score as `after` (default: the pipeline's "
                                                   "models/best), e.g. a run of benchmarks/default_schedule.py")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / f"cloze-name-{datetime.date.today()}.json")
    args = parser.parse_args()
    out_path, model_dir = args.out.resolve(), args.model.resolve() if args.model else None
    os.chdir(args.pipeline)  # the pipeline's params name paths relative to its directory, as `dvc repro` runs it
    from transformers import AutoTokenizer

    from bertops.config import load_params
    from bertops.layout import Layout
    from bertops.modeling import load_tokenizer
    from bertops.tasks import task_of
    from bertops.tasks.masked_lm import cloze

    params, layout = load_params("params.yaml"), Layout(Path("."))
    if args.set:
        from bertops.config import parse_assignments, with_overrides

        params = with_overrides(params, parse_assignments(",".join(args.set)))
    family, max_length = task_of(params), params.model.max_length
    (name,) = params.task.new_tokens
    tok_before = load_tokenizer(params.model.name_or_path, params.model.revision)
    torch.manual_seed(params.train.seed)  # as the train stage seeds it: the same draw of the new rows
    before, _ = family.load_model(params, [], tok_before, layout)
    model_dir = model_dir or layout.model_dir
    after, tok_after = family.load_trained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    before.eval(), after.eval()
    name_id = tok_after.convert_tokens_to_ids(name)
    assert name_id == tok_before.convert_tokens_to_ids(name) != tok_after.unk_token_id

    held_before, held_after = (ranks(m, t, HELD_OUT, name_id, max_length)
                               for m, t in ((before, tok_before), (after, tok_after)))
    upstream = Path(params.model.name_or_path).parents[1]
    brown = [json.loads(line)["text"] for line in (upstream / "data" / "prepared" / "test.jsonl").open()]
    unrelated = [cloze(t) for t in brown if len(t.split()) >= 6][:args.unrelated]
    fill_before, fill_after = top5(before, tok_before, unrelated, max_length), top5(after, tok_after, unrelated,
                                                                                    max_length)
    overlaps = [len(set(b) & set(a)) / 5 for b, a in zip(fill_before, fill_after)]
    result = {
        "date": str(datetime.date.today()), "pipeline": str(args.pipeline), "name": name,
        "overrides": args.set, "new_token_init": params.task.new_token_init,
        "starting_point": params.model.name_or_path, "after": str(model_dir), "vocabulary": len(tok_after),
        "held_out": [{"text": t, "rank_before": b["rank"], "rank_after": a["rank"],
                      "probability_before": round(b["probability"], 6), "probability_after": round(a["probability"], 4)}
                     for t, b, a in zip(HELD_OUT, held_before, held_after)],
        "held_out_summary": {
            "templates": len(HELD_OUT),
            "median_rank_before": statistics.median(b["rank"] for b in held_before),
            "median_rank_after": statistics.median(a["rank"] for a in held_after),
            "top1_after": sum(a["rank"] == 1 for a in held_after),
            "top5_after": sum(a["rank"] <= 5 for a in held_after)},
        "unrelated_summary": {
            "sentences": len(unrelated), "source": str(upstream / "data" / "prepared" / "test.jsonl"),
            "mean_top5_overlap": round(statistics.mean(overlaps), 4),
            "top1_agreement": round(statistics.mean(b[0] == a[0] for b, a in zip(fill_before, fill_after)), 4),
            "name_in_top5_after": sum(name in a for a in fill_after)},
        "unrelated_examples": [{"text": t, "before": b, "after": a}
                               for t, b, a in list(zip(unrelated, fill_before, fill_after))[:5]],
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    print("| held-out template | rank before | rank after | p after |\n| --- | --- | --- | --- |")
    for row in result["held_out"]:
        print(f"| {row['text']} | {row['rank_before']} | {row['rank_after']} | {row['probability_after']:.3f} |")
    print(json.dumps({k: result[k] for k in ("held_out_summary", "unrelated_summary")}, indent=1))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
