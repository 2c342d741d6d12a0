"""train.fused_attention_probs: the attention's softmax and dropout as one C++ kernel each way give fast dropout's
eager attention (same masks, the same values and gradients up to bf16 rounding), stand aside where they do not
apply, and are what the train stage's module installs under bf16 on an AMX CPU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError

from bertops.config import TrainParams
from bertops.training import attention_probs, fast_dropout
from bertops.training.module import auto_fused_attention_probs, cpu_has_amx
from bertops.training.working_weights import have_compiler

needs_kernel = pytest.mark.skipif(not have_compiler(), reason="no C++ compiler to build the kernel")


class _Attention(torch.nn.Module):
    """What transformers passes as `module`: a training self-attention with the flag fast_dropout reads."""

    attention_head_size = 8
    scaling = 8 ** -0.5


def _attend(fused: bool, q, k, v, mask, p: float, scale: float, seed: int):
    module = _Attention().train()
    setattr(module, fast_dropout.FUSED_PROBS, fused)
    for t in (q, k, v):
        t.grad = None
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = fast_dropout.attention(module, q, k, v, mask, dropout=p, scaling=scale)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)  # a loss whose gradient differs per element
    (out.float() * weights).sum().backward()
    return out.float(), [t.grad.float().clone() for t in (q, k, v)]


@needs_kernel
@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 4), heads=st.integers(1, 3), length=st.integers(1, 40), cls_query=st.booleans(),
       mask_kind=st.sampled_from(["none", "padding", "expanded"]), p=st.sampled_from([0.1, 0.3]),
       seed=st.integers(0, 2**31 - 1))
def test_the_kernel_is_the_eager_attention_up_to_rounding(batch, heads, length, cls_query, mask_kind, p, seed):
    gen = torch.Generator().manual_seed(seed)
    lq = 1 if cls_query else length  # the [CLS]-only top block asks with one query
    q = torch.randn(batch, heads, lq, 8, generator=gen).bfloat16().requires_grad_()
    k, v = (torch.randn(batch, heads, length, 8, generator=gen).bfloat16().requires_grad_() for _ in range(2))
    keep = torch.ones(batch, length, dtype=torch.bool)
    if batch > 1 and length > 2:
        keep[-1, length // 2 + 1:] = False  # a padded row; position 0 is always attended
    mask = {"none": None, "padding": keep[:, None, None, :],
            "expanded": keep[:, None, None, :].expand(batch, 1, lq, length)}[mask_kind]
    eager, eager_grads = _attend(False, q, k, v, mask, p, 0.35, seed)
    fused, fused_grads = _attend(True, q, k, v, mask, p, 0.35, seed)
    # bf16 outputs: a few units of bf16 rounding; a different mask or a dropped keep-scale is off by far more
    assert (fused - eager).abs().max() <= 0.02 * eager.abs().max() + 1e-3
    for ours, ref in zip(fused_grads, eager_grads):  # the softmax's backward cancels: a little more rounding
        assert (ours - ref).abs().max() <= 0.06 * ref.abs().max() + 2e-3
    if mask is not None:  # masked keys take no part: their gradients are exactly zero, as in the eager path
        for grad in (fused_grads[1], fused_grads[2]):
            assert torch.count_nonzero(grad.transpose(1, 2)[~keep]) == 0


@needs_kernel
def test_it_draws_fast_dropouts_masks_and_drops_at_p():
    """With the same seed the kernel drops exactly where the eager path drops; over many elements it drops at p."""
    q = k = v = torch.ones(2, 4, 64, 8, dtype=torch.bfloat16)
    eager, _ = _attend(False, *(t.clone().requires_grad_() for t in (q, k, v)), None, 0.25, 1.0, 11)
    fused, _ = _attend(True, *(t.clone().requires_grad_() for t in (q, k, v)), None, 0.25, 1.0, 11)
    # equal scores: every probability is 1/64, so an output is (kept positions)/64 / (1 - p) per element
    assert torch.equal(fused, eager)
    torch.manual_seed(3)
    words = fast_dropout.random_words(torch.Size([2, 4, 64, 64]))
    dropped = (words < fast_dropout.keep_threshold(0.25)).double().mean().item()
    assert abs(dropped - fast_dropout.quantized_p(0.25)) < 0.01


def test_it_stands_aside_where_it_does_not_apply(monkeypatch):
    q = torch.randn(2, 2, 5, 8)
    additive = torch.zeros(2, 1, 5, 5)
    per_head = torch.ones(2, 2, 5, 5, dtype=torch.bool)
    assert attention_probs.attend(q, q, q, None, 0.1, 0.3) is None  # fp32: the eager path
    b = q.bfloat16()
    assert attention_probs.attend(b, b, b, additive, 0.1, 0.3) is None  # an additive mask
    assert attention_probs.attend(b, b, b, per_head, 0.1, 0.3) is None  # a mask per head
    monkeypatch.setattr(attention_probs, "kernels", lambda: None)  # no compiler: nothing is marked
    assert attention_probs.attend(b, b, b, None, 0.1, 0.3) is None
    model = torch.nn.Linear(2, 2)
    model.config = type("C", (), {"_attn_implementation": fast_dropout.ATTENTION})()
    assert attention_probs.install(model) == 0


def test_auto_and_the_knob():
    on_amx_bf16 = cpu_has_amx() and have_compiler() and not torch.cuda.is_available()
    assert auto_fused_attention_probs(TrainParams()) is on_amx_bf16
    assert auto_fused_attention_probs(TrainParams(fused_attention_probs=False)) is False
    assert auto_fused_attention_probs(TrainParams(fused_attention_probs=True, fast_dropout=False)) is False
    assert auto_fused_attention_probs(TrainParams(fused_attention_probs=True, precision="32-true")) is False
    assert auto_fused_attention_probs(TrainParams(fused_attention_probs=True, precision="bf16-mixed", accelerator="cpu", compile=True)) is False
    assert auto_fused_attention_probs(TrainParams(fused_attention_probs=True, precision="bf16-mixed",
                                                  accelerator="cpu")) is True
    with pytest.raises(ValidationError, match="fused_attention_probs"):
        TrainParams(fused_attention_probs="sometimes")


@needs_kernel
def test_the_train_stage_module_uses_it_and_trains_as_the_eager_path(tiny_model_dir, monkeypatch):
    """The train stage's module installs it (precision bf16-mixed on a CPU), its training attention goes through
    the kernel (in every layer, the [CLS]-only top block's one query included), and a step's loss and gradients are
    the eager path's up to rounding."""
    from transformers import AutoModelForSequenceClassification

    from bertops.training.heads.sequence_classification import SequenceClassifier

    def module(fused: bool):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
        hp = TrainParams(precision="bf16-mixed", accelerator="cpu", fused_attention_probs=fused)
        return SequenceClassifier(model, set(), hp)

    calls = []
    core = attention_probs._AttentionCore.apply
    monkeypatch.setattr(attention_probs._AttentionCore, "apply", lambda *a: calls.append(a[0].shape) or core(*a))
    ids = torch.randint(5, 40, (4, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}
    results = []
    for fused in (False, True):
        lit = module(fused)
        marked = [m for m in lit.model.modules() if getattr(m, fast_dropout.FUSED_PROBS, False)]
        assert len(marked) == (lit.model.config.num_hidden_layers if fused else 0)
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lit.model(**batch).loss
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in lit.model.named_parameters()
                                      if p.grad is not None}))
    assert len(calls) == lit.model.config.num_hidden_layers  # the fused side only, every layer
    (loss_eager, grads_eager), (loss_fused, grads_fused) = results
    assert loss_fused == pytest.approx(loss_eager, rel=0.01)
    assert grads_eager.keys() == grads_fused.keys()
    for name, ref in grads_eager.items():
        assert (grads_fused[name] - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-4, name
