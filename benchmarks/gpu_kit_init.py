"""A random-init model from a config directory (config.json + tokenizer files), saved as a model directory that
the benchmark runners load like any checkpoint: `python benchmarks/gpu_kit_init.py CONFIG_DIR OUT_DIR`.
Used by benchmarks/gpu_kit.sh, since weights do not travel to the GPU machine and speed does not depend on them."""

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel


def main(config_dir: str, out_dir: str) -> None:
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(config_dir)
    model = AutoModel.from_config(config)
    out = Path(out_dir)
    model.save_pretrained(out)
    for f in Path(config_dir).iterdir():
        if f.name != "config.json":
            shutil.copy(f, out / f.name)
    print(f"{out}: random-init {config.model_type}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M weights")


if __name__ == "__main__":
    main(*sys.argv[1:3])
