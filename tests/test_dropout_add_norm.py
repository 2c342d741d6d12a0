"""train.fused_dropout_add_norm: a block's dropout, residual add and LayerNorm as one C++ kernel each way give the
stock module's output and gradients up to bf16 rounding (the same fast-dropout masks), the stock module outside bf16
training, and are what the train stage's module installs under bf16 on an AMX CPU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError
from transformers.models.bert.modeling_bert import BertConfig, BertOutput

from bertops.config import TrainParams
from bertops.training import dropout_add_norm, fast_dropout
from bertops.training.module import auto_fused_dropout_add_norm, cpu_has_amx
from bertops.training.working_weights import have_compiler

needs_kernel = pytest.mark.skipif(not have_compiler(), reason="no C++ compiler to build the kernel")


def _pair(hidden: int, p: float, seed: int):
    """Two equal BertOutput modules (a Linear 2h -> h, dropout p, LayerNorm) with fast dropout, one fused."""
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=hidden, intermediate_size=2 * hidden, hidden_dropout_prob=p)
    stock, fused = BertOutput(config), BertOutput(config)
    with torch.no_grad():
        stock.LayerNorm.weight.uniform_(0.5, 1.5)
        stock.LayerNorm.bias.uniform_(-0.3, 0.3)
    fused.load_state_dict(stock.state_dict())
    holder = torch.nn.Module()
    holder.output = fused
    for module in (stock, fused):
        fast_dropout.install(module)
    assert dropout_add_norm.install(holder) == 1
    return stock.train(), fused.train()


def _run(module, x, residual, seed: int, bf16: bool = True):
    module.zero_grad()
    x, residual = x.clone().requires_grad_(), residual.clone().requires_grad_()
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = module(x, residual)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {"x": x.grad, "residual": residual.grad, **{n: p.grad.clone() for n, p in module.named_parameters()}}
    return out.detach(), grads


@needs_kernel
@settings(max_examples=20, deadline=None)
@given(hidden=st.sampled_from([8, 24, 48, 100]), rows=st.integers(1, 40), p=st.sampled_from([0.1, 0.5]),
       seed=st.integers(0, 2**31 - 1))
def test_the_kernel_is_the_stock_block_output_up_to_rounding(hidden, rows, p, seed):
    stock, fused = _pair(hidden, p, seed)
    gen = torch.Generator().manual_seed(seed)
    x, residual = torch.randn(2, rows, 2 * hidden, generator=gen), torch.randn(2, rows, hidden, generator=gen)
    ref, ref_grads = _run(stock, x, residual, seed)
    out, grads = _run(fused, x, residual, seed)
    assert out.dtype == ref.dtype == torch.float32  # autocast's layer norm: fp32 out
    # the stock path rounds dropout's output to bf16 before the add, the kernel adds in fp32: a few bf16 units
    assert (out - ref).abs().max() <= 0.03 * ref.abs().max()
    assert grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        assert (grads[name] - g).abs().max() <= 0.03 * g.abs().max() + 1e-4, name


@needs_kernel
def test_outside_bf16_training_it_is_the_stock_module():
    stock, fused = _pair(16, 0.1, 0)
    x, residual = torch.randn(2, 5, 32), torch.randn(2, 5, 16)
    ref, ref_grads = _run(stock, x, residual, 3, bf16=False)  # fp32 training: the module's own forward
    out, grads = _run(fused, x, residual, 3, bf16=False)
    assert torch.equal(out, ref) and all(torch.equal(grads[k], v) for k, v in ref_grads.items())
    stock.eval(), fused.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fused(x, residual), stock(x, residual))


def test_auto_and_the_knob():
    on_amx = cpu_has_amx() and have_compiler() and not torch.cuda.is_available()
    assert auto_fused_dropout_add_norm(TrainParams()) is on_amx
    assert auto_fused_dropout_add_norm(TrainParams(fused_dropout_add_norm=False)) is False
    assert auto_fused_dropout_add_norm(TrainParams(fused_dropout_add_norm=True, fast_dropout=False)) is False
    assert auto_fused_dropout_add_norm(TrainParams(fused_dropout_add_norm=True, precision="32-true")) is False
    assert auto_fused_dropout_add_norm(TrainParams(fused_dropout_add_norm=True, precision="bf16-mixed", accelerator="cpu", compile=True)) is False
    assert auto_fused_dropout_add_norm(TrainParams(fused_dropout_add_norm=True, precision="bf16-mixed",
                                                   accelerator="cpu")) is True
    with pytest.raises(ValidationError, match="fused_dropout_add_norm"):
        TrainParams(fused_dropout_add_norm="sometimes")


@needs_kernel
def test_the_train_stage_module_uses_it_and_trains_as_the_stock_path(tiny_model_dir):
    """Both CPU kernels on (the train stage's bf16 CPU defaults) against both off: every block's two outputs go
    through the kernel, a training step's loss and gradients match up to rounding, the state dict is the stock one."""
    from transformers import AutoModelForSequenceClassification

    from bertops.training.heads.sequence_classification import SequenceClassifier

    def module(fused: bool):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
        hp = TrainParams(precision="bf16-mixed", accelerator="cpu", fused_dropout_add_norm=fused,
                         fused_attention_probs=fused)
        return SequenceClassifier(model, set(), hp)

    ids = torch.randint(5, 40, (4, 12))
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}
    results = []
    for fused in (False, True):
        lit = module(fused)
        routed = [m for m in lit.model.modules() if "forward" in vars(m) and hasattr(m, "LayerNorm")]
        assert len(routed) == (2 * lit.model.config.num_hidden_layers if fused else 0)
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lit.model(**batch).loss
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in lit.model.named_parameters()
                                      if p.grad is not None}, lit.model.state_dict().keys()))
    (loss_stock, grads_stock, keys_stock), (loss_fused, grads_fused, keys_fused) = results
    assert keys_fused == keys_stock
    assert loss_fused == pytest.approx(loss_stock, rel=0.01)
    assert grads_fused.keys() == grads_stock.keys()
    for name, ref in grads_stock.items():
        assert (grads_fused[name] - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-4, name
