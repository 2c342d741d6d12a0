"""params.yaml validation: every mistake names the field and what is allowed, before any work starts."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bertops.config import load_params, parse_params
from bertops.errors import ParamsError

REPO = Path(__file__).resolve().parents[1]


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.task.type == "sequence_classification"
    assert params.model.name_or_path == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize("section,key,value,expected", [
    ("train", "lr", "fast", "train.lr: Input should be a valid number"),
    ("train", "epochs", 0, "train.epochs: Input should be greater than or equal to 1"),
    ("train", "precision", "fp8", "train.precision: Input should be 'auto', '32-true', 'bf16-mixed' or '16-mixed'"),
    ("train", "lr_rate", 1e-5, "train.lr_rate: unknown key"),
    ("task", "metric", "auc", "task.metric: Input should be 'accuracy' or 'macro_f1'"),
    ("corpus", "split", {"val": 0.7, "test": 0.1, "seed": 0}, "corpus.split.val: Input should be less than 0.5"),
    ("train", "adam_betas", [0.9, 1.5], "adam_betas[1] must be in [0, 1)"),
    ("train", "strategy", "deepspeed", "train.strategy: Input should be 'auto' or 'ddp'"),
    ("train", "devices", 2, "devices: 2 / num_nodes: 1 need strategy ddp"),
    ("train", "pad_to_multiple_of", 0, "pad_to_multiple_of must be auto or at least 1"),
    ("train", "compile", "maybe", "train.compile.bool: Input should be a valid boolean"),
])
def test_bad_param_names_field_and_allowed(section, key, value, expected):
    raw = repo_params()
    raw[section][key] = value
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert expected in str(err.value)


def test_gradual_unfreezing_needs_one_device():
    raw = repo_params()
    raw["finetune"]["gradual_unfreezing"] = True
    raw["train"].update(strategy="ddp", devices=2)
    with pytest.raises(ParamsError, match="finetune.gradual_unfreezing needs train.strategy: auto"):
        parse_params(raw)


def test_missing_required_field():
    raw = repo_params()
    del raw["registry"]["model_name"]
    with pytest.raises(ParamsError, match="registry.model_name: required field is missing"):
        parse_params(raw)


def test_unknown_section():
    raw = repo_params()
    raw["optimizer"] = {"name": "sgd"}
    with pytest.raises(ParamsError, match="optimizer: unknown key"):
        parse_params(raw)


def test_cli_stops_before_work_with_exit_2(tmp_path):
    raw = repo_params()
    raw["train"]["batch_size"] = -4
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "bertops.cli", "--params", str(bad), "--root", str(tmp_path),
                           "stage", "import"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "train.batch_size: Input should be greater than or equal to 1; got -4" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()  # nothing was started


def test_precision_auto_picks_bf16_only_where_the_hardware_has_it(monkeypatch):
    from bertops.training import module

    monkeypatch.setattr(module.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(module, "cpu_has_bf16_matmul", lambda: True)
    assert module.auto_precision("auto") == "bf16-mixed"
    assert module.auto_precision("auto", "cpu") == "bf16-mixed"
    assert module.auto_precision("32-true") == "32-true"  # an explicit choice is kept
    monkeypatch.setattr(module, "cpu_has_bf16_matmul", lambda: False)
    assert module.auto_precision("auto") == "32-true"


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, True), (False, True, True),
                                                         (True, True, True), (False, False, False)])
def test_a_cpu_multiplies_bf16_in_hardware_with_amx_or_avx512_bf16(monkeypatch, amx, avx512_bf16, expected):
    """AMX (Intel) and AVX-512 BF16 (AMD Zen 4, measured 2.2x fp32's products) count; a CPU with neither, or a
    torch build without the probes, trains in fp32."""
    from bertops.training import module

    monkeypatch.setattr(module.torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(module.torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert module.cpu_has_bf16_matmul() is expected
    monkeypatch.delattr(module.torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(module.torch.cpu, "_is_avx512_bf16_supported")
    assert module.cpu_has_bf16_matmul() is False


def test_one_source_of_defaults_an_empty_section_gets_the_measured_recipe():
    """params.yaml spells out the code's defaults: a section left empty trains the same measured recipe."""
    import yaml

    from bertops.config import PARAMS_FILE, Params

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / PARAMS_FILE).read_text())
    full = parse_params(raw)
    for section in ("train", "finetune", "tracking"):
        emptied = parse_params({**raw, section: {}})
        assert getattr(emptied, section) == getattr(full, section), section
    registry = parse_params({**raw, "registry": {"model_name": raw["registry"]["model_name"]}}).registry
    assert registry == full.registry
    assert Params.model_fields["task"].default is None  # filled by the default family's own defaults
    assert parse_params({k: v for k, v in raw.items() if k != "task"}).task == full.task
    assert full.train.epochs == 3 and full.train.batch_size == 16


@pytest.mark.parametrize("setting,cpu,gpu", [("auto", None, 8), (8, 8, 8), (1, None, None)])
def test_pad_multiple_follows_the_hardware(tiny_model_dir, monkeypatch, setting, cpu, gpu):
    """auto pads training batches to the longest on a CPU (docs/performance.md: pad-to-8 cost 10-17 % per step
    there) and to a multiple of 8 on a GPU; every family's collator takes it."""
    import torch

    from bertops.modeling import load_tokenizer
    from bertops.tasks import get_task
    from bertops.training.module import auto_pad_multiple
    from conftest import tiny_params

    raw = tiny_params(tiny_model_dir)
    raw["train"]["pad_to_multiple_of"] = setting
    params = parse_params(raw)
    for has_gpu, expected in ((False, cpu), (True, gpu)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: has_gpu)
        assert auto_pad_multiple(params.train) == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    features = [{"input_ids": tokenizer("the movie was great")["input_ids"], "label": 0},
                {"input_ids": tokenizer("great")["input_ids"], "label": 1}]
    batch = get_task("sequence_classification").collators(tokenizer, params).train(features)
    assert batch["input_ids"].shape[1] == (6 if cpu is None else 8)  # [CLS] 4 words [SEP]
