#!/usr/bin/env bash
# Issue 17's GPU rows in one call on a bare GPU machine, prepared here on the CPU beforehand.
#
#   bash benchmarks/gpu_kit.sh pack            # here: wheels the GPU image lacks -> .whl/, data + configs -> .gpu/
#   bash benchmarks/gpu_kit.sh run [OUT_DIR]   # there: install the wheels, build random-init models, run the rows
#
# The device tool's call (both folders are git-ignored, so they must be carried):
#   run(command="bash benchmarks/gpu_kit.sh run $OUT", carry=[".whl", ".gpu"], timeout_s=540)
#
# What the GPU image has (/work/.library/device/KINDS.md): torch, transformers, lightning, accelerate, numpy,
# pandas, pyyaml, safetensors, tokenizers. It lacks pydantic (bertops.config), so its wheels travel. mlflow, dvc and
# prefect are not needed: benchmarks/train_speed.py's runners import none of them (checked by `pack`, which runs a
# tiny round with those packages blocked). Weights do not travel (the packaged MiniLM is over the 64 MiB a call
# carries): speed does not depend on the values, so `run` builds random-init bert-base and MiniLM-L6 models with
# the packaged tokenizer (bert-base-uncased's vocabulary). The prepared MR training split travels as it is.
#
# Rows (at most about 8 minutes together on an H100/H200):
#   1. bert-base, fixed 128 tokens, batch 128: bertops, hf-trainer, hf-trainer-same-recipe, with `mfu`
#      (targets: bertops >= 45 % MFU and >= 3x hf-trainer);
#   2. MiniLM, one MR epoch at natural lengths: the same runners (target: bertops >= 4x hf-trainer).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
PY=${PY:-python3}

wheels="pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 typing_extensions==4.16.0"

pack() {
  PY=.venv/bin/python
  rm -rf .whl .gpu && mkdir -p .whl .gpu/mr .gpu/config/bert-base .gpu/config/minilm
  # the GPU image's Python is 3.12 (KINDS.md)
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl $wheels
  test -s data/prepared/train.jsonl || { echo "no data/prepared/train.jsonl: run dvc repro first" >&2; exit 1; }
  cp data/prepared/train.jsonl data/prepared/labels.json .gpu/mr/
  $PY - <<'EOF'
from pathlib import Path
import shutil

from transformers import AutoConfig, BertConfig

from bertops.modeling import resolve_model_path

packaged = Path(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
for name, config in (("bert-base", BertConfig()),  # BertConfig's defaults are bert-base: 12 x 768, 110M
                     ("minilm", AutoConfig.from_pretrained(packaged))):
    out = Path(".gpu/config") / name
    config.save_pretrained(out)
    for f in tokenizer_files:
        shutil.copy(packaged / f, out / f)
EOF
  du -sh .whl .gpu
  # the runners must not need what the GPU image lacks: a tiny round on a copy of site-packages without those
  # packages (links to every other entry; python -S, so nothing else is on the path)
  site=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  rm -rf /tmp/gpu-kit-site && mkdir /tmp/gpu-kit-site
  for entry in "$site"/*; do
    case "$(basename "$entry" | tr 'A-Z-' 'a-z_')" in
      mlflow*|dvc*|prefect*|boto3*|botocore*|s3transfer*|fastapi*|sqlalchemy*|alembic*|pydantic*|annotated_types*|typing_inspection*|typing_extensions*) ;;
      *) ln -s "$entry" /tmp/gpu-kit-site/ ;;
    esac
  done
  # the carried pydantic wheels are cp312 (the image's Python); this venv's own pydantic stands in for them here
  ln -sf "$site"/pydantic* "$site"/annotated_types* "$site"/typing_inspection* "$site"/typing_extensions* /tmp/gpu-kit-site/
  # and with the image's own transformers, huggingface_hub and tokenizers (KINDS.md's pip list), not this venv's
  rm -rf /tmp/gpu-kit-image && $PY -m pip download -q --no-deps -d /tmp/gpu-kit-image/wheels \
      transformers==5.17.0 huggingface_hub==1.33.0 tokenizers==0.23.2
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-kit-image/site /tmp/gpu-kit-image/wheels/*
  check="env PYTHONPATH=/tmp/gpu-kit-image/site:/tmp/gpu-kit-site:$PWD $PY -S"
  $check benchmarks/gpu_kit_init.py .gpu/config/minilm /tmp/gpu-kit-minilm
  $check benchmarks/train_speed.py --model /tmp/gpu-kit-minilm \
      --mr-split .gpu/mr/train.jsonl --data mr fixed --fixed-length 16 --sentences 32 --warmup 1 --rounds 1 \
      --runners bertops hf-trainer hf-trainer-same-recipe --peak-tflops 1 --out /tmp/gpu-kit-check.json \
      > /tmp/gpu-kit-check.log 2>&1 \
      || { tail -30 /tmp/gpu-kit-check.log; exit 1; }
  grep -q '"mfu"' /tmp/gpu-kit-check.json || { echo "pack: no mfu in the check's rows" >&2; exit 1; }
  echo "pack: ok (a tiny round ran on transformers 5.17 without mlflow, dvc, prefect or boto3: /tmp/gpu-kit-check.log)"
}

run() {
  out=${1:-benchmarks/results}
  mkdir -p "$out"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu-kit-device.txt"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  $PY -c "import torch, transformers, lightning; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'lightning', lightning.__version__)" | tee -a "$out/gpu-kit-device.txt"
  $PY benchmarks/gpu_kit_init.py .gpu/config/bert-base /tmp/bert-base-random
  $PY benchmarks/gpu_kit_init.py .gpu/config/minilm /tmp/minilm-random
  set +e
  # 1. bert-base s128 b128: 40 timed steps of bertops's batch (hf-trainer: batch 32, so 160 of its steps)
  timeout 300 $PY benchmarks/train_speed.py --model /tmp/bert-base-random --batch-size 128 --mr-split .gpu/mr/train.jsonl \
      --data fixed --fixed-length 128 --sentences 5120 --warmup 5 --rounds 2 \
      --runners bertops hf-trainer hf-trainer-same-recipe --out "$out/gpu-bert-base-s128-b128.json" 2>&1 \
      | tee "$out/gpu-kit-bert-base.log" | grep -E '^\{'
  # 2. MiniLM, one MR epoch (8,461 sentences) at natural lengths, params.yaml's batch size
  timeout 180 $PY benchmarks/train_speed.py --model /tmp/minilm-random --mr-split .gpu/mr/train.jsonl \
      --data mr --sentences 8461 --warmup 5 --rounds 1 \
      --runners bertops hf-trainer hf-trainer-same-recipe --out "$out/gpu-mr-epoch.json" 2>&1 \
      | tee "$out/gpu-kit-mr.log" | grep -E '^\{'
}

case "$mode" in
  pack) pack ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash benchmarks/gpu_kit.sh pack | run [OUT_DIR]" >&2; exit 2 ;;
esac
