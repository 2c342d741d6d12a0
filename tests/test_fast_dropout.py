"""train.fast_dropout: the cheaper CPU dropout keeps torch's dropout's distribution, changes nothing outside
training, and is what the train stage's module uses on a CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError

from bertops.config import TrainParams
from bertops.training import fast_dropout
from bertops.training.module import auto_fast_dropout


@settings(max_examples=25, deadline=None)
@given(p=st.floats(0.01, 0.9), seed=st.integers(0, 2**31 - 1))
def test_masks_drop_at_p_and_keep_the_expectation(p, seed):
    torch.manual_seed(seed)
    n = 200_003  # not a multiple of 4: the last 64-bit draw is used in part
    out = fast_dropout.fast_dropout(torch.ones(n), p)
    q = fast_dropout.quantized_p(p)
    assert abs(q - p) <= 2**-17
    dropped = (out == 0).double().mean().item()
    sigma = math.sqrt(q * (1 - q) / n)
    assert abs(dropped - q) < 5 * sigma
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - q)))
    assert abs(out.double().mean().item() - 1.0) < 5 * sigma / (1 - q)


def test_each_16_bit_slice_of_a_draw_is_used():
    """A 64-bit word holds four decisions; each of the four positions must drop at p (torch's plain random_()
    leaves the top bit 0, which would never drop the fourth)."""
    torch.manual_seed(0)
    keep = fast_dropout.keep_mask(torch.Size([400_000]), 0.1).view(-1, 4)
    rates = 1 - keep.double().mean(dim=0)
    assert torch.all((rates - 0.1).abs() < 0.003), rates


def test_masks_follow_the_seed_and_gradients_are_the_mask():
    torch.manual_seed(7)
    a = fast_dropout.keep_mask(torch.Size([64, 33]), 0.1)
    torch.manual_seed(7)
    assert torch.equal(a, fast_dropout.keep_mask(torch.Size([64, 33]), 0.1))
    assert not torch.equal(a, fast_dropout.keep_mask(torch.Size([64, 33]), 0.1))

    x = torch.randn(8, 16, requires_grad=True)
    torch.manual_seed(3)
    out = fast_dropout.FastDropout(0.25)(x)
    out.sum().backward()
    scale = 1 / (1 - fast_dropout.quantized_p(0.25))
    assert torch.allclose(x.grad, (out != 0).float() * scale)


def test_eval_and_zero_p_are_the_identity():
    x = torch.randn(4, 5)
    layer = fast_dropout.FastDropout(0.5).eval()
    assert layer(x) is x
    assert fast_dropout.fast_dropout(x, 0.0) is x
    assert torch.equal(fast_dropout.fast_dropout(x, 1.0), torch.zeros_like(x))


def _tiny(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)


def _batch():
    ids = torch.randint(5, 40, (4, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[3, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_installed_model_is_the_stock_model_outside_training(tiny_model_dir, tmp_path):
    stock, fast = _tiny(tiny_model_dir), _tiny(tiny_model_dir)
    swapped = fast_dropout.install(fast)
    assert swapped["dropout_modules"] >= 5 and swapped["attention"] == 1  # embeddings, 2 x 2 per layer, head
    assert fast.config._attn_implementation == fast_dropout.ATTENTION
    assert stock.state_dict().keys() == fast.state_dict().keys()
    batch = _batch()
    stock.eval(), fast.eval()
    with torch.no_grad():
        assert torch.equal(stock(**batch).logits, fast(**batch).logits)
    fast.train()
    with torch.no_grad():
        assert not torch.allclose(fast(**batch).logits, stock(**batch).logits)  # dropout is on in training
    # what is saved is the stock model: the custom attention never reaches config.json
    fast.save_pretrained(tmp_path)
    assert fast_dropout.ATTENTION not in json.dumps(json.loads((tmp_path / "config.json").read_text()))


def test_training_attention_is_sdpa_when_nothing_is_dropped(tiny_model_dir):
    """The training path's eager attention, with every element kept (p below 2**-17 quantizes to 0), equals
    sdpa on a padded batch: same scores, mask and softmax."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    model = _tiny(tiny_model_dir).train()
    layer = model.bert.encoder.layer[0].attention.self
    q, k, v = (torch.randn(3, 2, 9, 16) for _ in range(3))
    bool_mask = torch.ones(3, 1, 9, 9, dtype=torch.bool)
    bool_mask[1, :, :, 5:] = False
    additive = torch.zeros(3, 1, 9, 9).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
    for mask in (None, bool_mask, additive):
        ours, _ = fast_dropout.attention(layer, q, k, v, mask, dropout=1e-9, scaling=0.25)
        layer.eval()
        ref, _ = sdpa_attention_forward(layer, q, k, v, mask, dropout=0.0, scaling=0.25)
        layer.train()
        assert torch.allclose(ours, ref, atol=1e-6)


def test_auto_is_on_for_a_cpu_and_the_knob_is_validated():
    assert auto_fast_dropout(TrainParams()) is (not torch.cuda.is_available())
    assert auto_fast_dropout(TrainParams(fast_dropout=False)) is False
    assert auto_fast_dropout(TrainParams(fast_dropout=True)) is True
    with pytest.raises(ValidationError, match="fast_dropout"):
        TrainParams(fast_dropout="sometimes")


def test_the_train_stage_module_trains_with_it(tiny_model_dir):
    from bertops.training.heads.sequence_classification import SequenceClassifier
    from bertops.training.fast_dropout import FastDropout

    on = SequenceClassifier(_tiny(tiny_model_dir), set(), TrainParams(fast_dropout=True))
    off = SequenceClassifier(_tiny(tiny_model_dir), set(), TrainParams(fast_dropout=False))
    assert any(isinstance(m, FastDropout) for m in on.modules())
    assert not any(isinstance(m, FastDropout) for m in off.modules())
