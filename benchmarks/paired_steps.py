"""A/B of one of the train stage's CPU step levers, with the noise of a shared host taken out: training steps of
the packaged MiniLM (forward and backward under bf16 autocast where the CPU multiplies bf16, fast dropout, the word
embedding's gradient by rows, the top block for [CLS] only, clipping to the params' max_grad_norm, fused AdamW,
zeroing: the train stage's CPU defaults) on the same MR batches (length-grouped, batch 16, padded to the longest, as
the train stage forms them on a CPU), with the lever on (A) and off (B), alternating A and B step by step on one
model. Clipping and the densifying are `bertops.training.embedding_grad.clip_and_densify`, the function the train
stage's module calls. Reports each side's median step time and where the step's time went.

    --lever row-embedding-grad: train.row_embedding_grad (off: the dense word-embedding gradient)
    --lever cls-top-layer: train.cls_top_layer (off: the stock top block over every position)
    --lever lazy-embedding-decay: train.lazy_embedding_decay (off: AdamW over the whole word-embedding table). The
      two sides are two copies of the model, each with its own AdamW, since the lever changes the parameters;
      the rows trained are those the whole MR train split reads (or the fixed-length data's)
    --lever compile: train.compile=true (off: eager, the default), on two copies of the model, every other lever
      on; the model is compiled as the train stage's module compiles it (`model.compile(dynamic=True)`, inductor),
      and the first step's seconds (the compile) are reported apart from the medians
    --lever bf16-working-weights: train.bf16_working_weights (off: autocast's casts of the Linear weights, their fp32
      gradients, clipping's scaling and fused AdamW over them), on two copies of the model, every other lever on;
      the fused update compiles at the first step, whose seconds are reported apart from the medians
    --lever fused-attention-probs: train.fused_attention_probs (off: fast dropout's eager attention), on one model
      with every other CPU lever on (bf16 working weights and the dropout-add-norm kernel included), the kernel
      switched per step
    --lever fused-dropout-add-norm: train.fused_dropout_add_norm (off: the blocks' own dropout, add and LayerNorm),
      likewise on one model with every other CPU lever on (the fused attention included)

    python benchmarks/paired_steps.py --lever cls-top-layer --steps 40 [--fixed-length 64] --out r.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lever", choices=("row-embedding-grad", "cls-top-layer", "lazy-embedding-decay", "compile",
                                                "bf16-working-weights", "fused-attention-probs",
                                                "fused-dropout-add-norm"), required=True)
    ap.add_argument("--steps", type=int, default=40, help="distinct batches; each runs twice on each side")
    ap.add_argument("--fixed-length", type=int, default=0,
                    help="batches of synthetic sentences of exactly this many tokens (train_speed.py's fixed data) "
                         "instead of MR's")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_speed import fixed_length_rows, length_grouped_batches, mr_train_features
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    from bertops.modeling import resolve_model_path
    from bertops.training import (attention_probs, cls_top_layer, dropout_add_norm, embedding_grad, fast_dropout,
                                  lazy_embedding_decay, working_weights)
    from bertops.training.data import token_ids
    from bertops.training.module import cpu_has_bf16_matmul
    from bertops.training.optim import build_optimizer

    if args.fixed_length:  # no MR import: train_speed.py's synthetic rows and their two labels
        from bertops.config import load_params
        from bertops.modeling import load_tokenizer
        from bertops.tasks.sequence_classification import encode_sequences

        params = load_params(REPO / "params.yaml")
        tokenizer = load_tokenizer(params.model.name_or_path)
        labels = ["negative", "positive"]
        rows = fixed_length_rows(16 * args.steps, tokenizer, args.fixed_length)
        features = encode_sequences(rows, tokenizer, labels, params.model.max_length)
        batches = [features[k:k + 16] for k in range(0, len(features), 16)]
    else:
        params, tokenizer, labels, features = mr_train_features(REPO / "params.yaml")
        batches = length_grouped_batches(features, args.steps)
    read_ids = token_ids(features, tokenizer.pad_token_id)  # the rows train.lazy_embedding_decay trains
    collate = DataCollatorWithPadding(tokenizer)

    def build(lazy: bool, compiled: bool = False, working: bool = False):
        torch.manual_seed(0)  # the new classifier head's initialisation
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(params.model.name_or_path),
                                                                   num_labels=len(labels), dtype=torch.float32)
        fast_dropout.install(model)
        model.train()
        if lazy:
            assert lazy_embedding_decay.install(model, read_ids) is not None
        rows_grad = embedding_grad.install(model)
        assert rows_grad is not None, "the packaged model's embedding should take the row path"
        top = cls_top_layer.install(model)
        assert top is not None, "the packaged model's top block should take the [CLS] path"
        if compiled:  # after the installs, as FineTuner.setup does
            model.compile(dynamic=True)
        opt = build_optimizer([{"params": list(model.parameters()), "lr": 1e-5, "weight_decay": 0.01}],
                              betas=(0.9, 0.999), eps=1e-8)
        handle = working_weights.install(model, opt) if working else None
        assert handle is not None or not working, "the packaged model's Linears should take the working copies"
        return model, rows_grad, top, opt, handle

    two = args.lever in ("lazy-embedding-decay", "compile", "bf16-working-weights")
    bf16 = cpu_has_bf16_matmul()
    if args.lever == "compile":  # the train stage's CPU defaults on both sides
        sides = {"on": build(True, compiled=True), "off": build(True)}
    elif args.lever == "bf16-working-weights":
        assert bf16, "the lever applies under bf16 autocast only (a CPU with AMX or AVX-512 BF16)"
        sides = {"on": build(True, working=True), "off": build(True)}
    elif args.lever == "fused-attention-probs":
        assert bf16, "the lever applies under bf16 autocast only (a CPU with AMX or AVX-512 BF16)"
        sides = dict.fromkeys(("on", "off"), build(True, working=True))
        assert attention_probs.install(sides["on"][0]) > 0, "the kernel should build and the attention be routed"
        assert dropout_add_norm.install(sides["on"][0]) > 0, "the blocks' outputs should take their kernel"
        attention_modules = [m for m in sides["on"][0].modules() if hasattr(m, fast_dropout.FUSED_PROBS)]
    elif args.lever == "fused-dropout-add-norm":
        assert bf16, "the lever applies under bf16 autocast only (a CPU with AMX or AVX-512 BF16)"
        sides = dict.fromkeys(("on", "off"), build(True, working=True))
        assert attention_probs.install(sides["on"][0]) > 0, "the kernels should build and the attention be routed"
        assert dropout_add_norm.install(sides["on"][0]) > 0, "the blocks' outputs should take the kernel"
        fused_outputs = [m for m in sides["on"][0].modules() if "forward" in vars(m) and hasattr(m, "LayerNorm")]
    else:
        sides = {"on": build(True), "off": build(False)} if two else dict.fromkeys(("on", "off"), build(False))
    one_model_all_on = ("fused-attention-probs", "fused-dropout-add-norm")
    lazy_side = {"on": two or args.lever in one_model_all_on,
                 "off": args.lever in ("compile", "bf16-working-weights", *one_model_all_on)}
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    max_norm = params.train.max_grad_norm
    parts = {k: {"forward_backward": [], "clip": [], "adamw": [], "zero": [], "step": []} for k in ("on", "off")}
    for rep, batch in enumerate(batches * 2):
        for name in (("on", "off") if rep % 2 else ("off", "on")):
            inputs = collate(batch)
            on = name == "on"
            model, rows_grad, top, opt, handle = sides[name]
            if lazy_side[name]:
                model.get_input_embeddings().decay(1e-5, 0.01)  # what the train stage's module does each step
            rows_on = on or args.lever != "row-embedding-grad"
            rows_grad.embedding.sparse = rows_on
            top.set(on or args.lever != "cls-top-layer")
            if args.lever == "fused-attention-probs":
                for module in attention_modules:
                    setattr(module, fast_dropout.FUSED_PROBS, on)
            if args.lever == "fused-dropout-add-norm":
                for module in fused_outputs:
                    module.forward = types.MethodType(dropout_add_norm._forward if on else type(module).forward,
                                                      module)
            t0 = time.perf_counter()
            with autocast():
                loss = model(**inputs).loss
            loss.backward()
            t1 = time.perf_counter()
            embedding_grad.clip_and_densify(list(model.parameters()), max_norm, rows_grad if rows_on else None,
                                            handle)
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            t4 = time.perf_counter()
            for key, seconds in (("forward_backward", t1 - t0), ("clip", t2 - t1), ("adamw", t3 - t2),
                                 ("zero", t4 - t3), ("step", t4 - t0)):
                parts[name][key].append(seconds)
    row = {"lever": args.lever, "data": f"fixed {args.fixed_length} tokens" if args.fixed_length else "mr",
           "steps_each": len(parts["on"]["step"]), "batch_size": 16, "bf16_autocast": bf16,
           "max_grad_norm": max_norm, **({"rows_trained": int(read_ids.numel())} if two else {}),
           **{f"first_step_s_{name}": round(p["step"][0], 2) for name, p in parts.items()},
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "date": datetime.date.today().isoformat(),
           **{f"median_ms_{name}_{key}": round(1000 * statistics.median(v), 1)
              for name, p in parts.items() for key, v in p.items()}}
    paired = [off / on for off, on in zip(parts["off"]["step"], parts["on"]["step"])]
    row["median_paired_ratio_off_vs_on"] = round(statistics.median(paired), 3)
    row["time_ratio_off_vs_on"] = round(row["median_ms_off_step"] / row["median_ms_on_step"], 3)
    print(json.dumps(row))
    if args.out:
        command = f"python benchmarks/paired_steps.py --lever {args.lever} --steps {args.steps}" + (
            f" --fixed-length {args.fixed_length}" if args.fixed_length else "")
        args.out.write_text(json.dumps({"command": command, "row": row}, indent=1) + "\n")


if __name__ == "__main__":
    main()
