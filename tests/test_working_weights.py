"""train.bf16_working_weights: the Linears read bf16 working copies, and one fused pass steps their fp32 masters as
torch's AdamW does (clipping included): the same weights as the stock bf16 path, through the train stage's own module
and a Lightning Trainer; the optimizer's state and the checkpoints keep the stock layout; it stands aside elsewhere."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification

from bertops.config import TrainParams
from bertops.training import working_weights
from bertops.training.embedding_grad import clip_and_densify
from bertops.training.module import auto_bf16_working_weights, cpu_has_amx
from bertops.training.optim import BertAdam, build_optimizer
from bertops.training.working_weights import WorkingLinear


def _tiny(path):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, hidden_dropout_prob=0.0,
                                                              attention_probs_dropout_prob=0.0)


def _batches(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 40, (4, 10), generator=g)
        ids[:, 0] = 2
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (4,), generator=g)})
    return out


class _Data(L.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.train, self.val = _batches(8, seed=3), _batches(2, seed=4)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=None)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=None)


def _fit(model_dir, root, setting, ckpt_path=None, epochs=2, callbacks=()):
    from bertops.training.heads.sequence_classification import SequenceClassifier

    L.seed_everything(0, verbose=False)
    module = SequenceClassifier(_tiny(model_dir), set(), TrainParams(
        bf16_working_weights=setting, fast_dropout=False, max_grad_norm=0.5, lr=1e-2, weight_decay=0.1,
        warmup_ratio=0.25))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, precision="bf16-mixed", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                        num_sanity_val_steps=0, callbacks=list(callbacks))
    trainer.fit(module, datamodule=_Data(), ckpt_path=ckpt_path)
    return module, trainer


def test_the_train_stage_module_gives_the_stock_bf16_paths_weights(tiny_model_dir, tmp_path):
    seen = {}

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.setdefault(module.hp.bf16_working_weights, set()).update(
                type(m).__name__ for m in module.model.modules() if isinstance(m, nn.Linear))

    trained, val = {}, {}
    for setting in (True, False):
        module, trainer = _fit(tiny_model_dir, tmp_path / str(setting), setting, callbacks=[Watch()])
        assert module.working is None
        assert {type(m) for m in module.model.modules() if isinstance(m, nn.Linear)} == {nn.Linear}
        trained[setting], val[setting] = module.model.state_dict(), float(trainer.callback_metrics["val_loss"])
        ckpt = torch.load(next((tmp_path / str(setting)).rglob("*.ckpt")), weights_only=False)
        assert all(v.dtype == torch.float32 for k, v in ckpt["state_dict"].items() if v.is_floating_point())
        assert {k for k in ckpt["state_dict"]} == {f"model.{k}" for k in trained[setting]}
    assert seen == {True: {"WorkingLinear"}, False: {"Linear"}}
    storages = {v.untyped_storage().data_ptr() for v in trained[True].values()}
    assert len(storages) == len(trained[True])  # released: every parameter has its own storage again
    assert val[True] == pytest.approx(val[False], rel=1e-3)
    initial = _tiny(tiny_model_dir).state_dict()
    worst = {}
    for name, value in trained[False].items():
        if name.endswith("attention.self.key.bias"):
            continue  # softmax ignores it: its exact gradient is 0, and Adam scales rounding noise up to lr-sized steps
        # bf16 rounds differently where the masters differ in their last fp32 bit, and Adam turns a near-zero
        # gradient's rounding into an lr-sized step: a few elements move apart, the tensor as a whole does not
        worst[name] = float((trained[True][name] - value).norm() / (value - initial[name]).norm())
    assert max(worst.values()) < 0.02, worst


def test_a_resume_loads_adamws_state_into_the_fused_buffers(tiny_model_dir, tmp_path):
    """A run resumed from its checkpoint after epoch 1 ends where the uninterrupted run ends."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    every = ModelCheckpoint(dirpath=tmp_path / "every", filename="{epoch}", save_top_k=-1)
    whole, _ = _fit(tiny_model_dir, tmp_path / "whole", True, epochs=2, callbacks=[every])
    ckpt = tmp_path / "every" / "epoch=0.ckpt"
    saved = torch.load(ckpt, weights_only=False)["optimizer_states"][0]["state"]
    assert saved and all(set(s) == {"step", "exp_avg", "exp_avg_sq"} for s in saved.values())  # AdamW's own
    resumed, _ = _fit(tiny_model_dir, tmp_path / "resumed", True, ckpt_path=str(ckpt), epochs=2)
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, msg=lambda m: f"{name}: {m}")


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.norm = nn.Linear(6, 5), nn.Linear(5, 3, bias=False), nn.LayerNorm(5)
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        return self.b(self.norm(self.a(x)))


def _groups(net, lrs, decays):
    return [{"params": [net.a.weight, net.b.weight], "lr": lrs[0], "weight_decay": decays[0]},
            {"params": [net.a.bias, net.norm.weight, net.norm.bias, *net.unused.parameters()], "lr": lrs[1],
             "weight_decay": decays[1]}]


def _steps(seed, lrs, decays, max_norm, steps, compiled):
    """The stock path (fp32 gradients, torch's clipping, fused AdamW) and the lever, on the same bf16 gradients."""
    torch.manual_seed(seed)
    stock = _Net()
    lever = copy.deepcopy(stock)
    opts = {name: build_optimizer(_groups(net, lrs, decays), betas=(0.9, 0.98), eps=1e-6)
            for name, net in (("stock", stock), ("lever", lever))}
    handle = working_weights.install(lever, opts["lever"], compiled=compiled)
    assert handle is not None
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 6, generator=g)
        for name, net in (("stock", stock), ("lever", lever)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                net(x).float().square().mean().backward()
            clip_and_densify(list(net.parameters()), max_norm, None, handle if name == "lever" else None)
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
    assert type(lever.unused) is nn.Linear and type(lever.a) is WorkingLinear  # handed back: never reached
    return stock, lever, opts, handle


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), lr=st.floats(1e-4, 3e-2), head_lr=st.floats(1e-4, 3e-2),
       decay=st.floats(0.0, 0.3), max_norm=st.sampled_from([None, 0.05, 1.0, 100.0]))
def test_the_fused_update_is_adamws_with_clipping(seed, lr, head_lr, decay, max_norm):
    stock, lever, _, handle = _steps(seed, (lr, head_lr), (decay, 0.0), max_norm, steps=4, compiled=False)
    for (name, a), b in zip(stock.named_parameters(), lever.parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    for group in handle.groups:  # the next forward's copy: the masters rounded to bf16
        torch.testing.assert_close(group.working, group.master.bfloat16(), atol=0, rtol=0)


def test_the_compiled_update_equals_the_uncompiled_one():
    if not working_weights.have_compiler():
        pytest.skip("no C++ compiler: inductor cannot compile, the lever runs uncompiled")
    eager = _steps(7, (1e-2, 3e-3), (0.1, 0.0), 0.5, steps=3, compiled=False)
    compiled = _steps(7, (1e-2, 3e-3), (0.1, 0.0), 0.5, steps=3, compiled=True)
    for a, b in zip(eager[1].parameters(), compiled[1].parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_the_optimizer_state_round_trips_through_a_stock_adamw():
    """The lever's optimizer state dict is AdamW's: a stock AdamW continues it, and the lever takes a stock one."""
    stock, lever, opts, handle = _steps(3, (1e-2, 1e-2), (0.1, 0.0), 1.0, steps=3, compiled=False)
    state = opts["lever"].state_dict()
    handle.release()
    moved = copy.deepcopy(lever)
    moved_opt = build_optimizer(_groups(moved, (1e-2, 1e-2), (0.1, 0.0)), betas=(0.9, 0.98), eps=1e-6)
    again = working_weights.install(moved, moved_opt, compiled=False)
    moved_opt.load_state_dict(opts["stock"].state_dict())  # the stock run's moments into the fused buffers
    torch.testing.assert_close(again.groups[0].exp_avg[:30], opts["stock"].state[stock.a.weight]["exp_avg"].reshape(-1))
    assert float(again.step) == 3.0
    plain = build_optimizer(_groups(copy.deepcopy(lever), (1e-2, 1e-2), (0.1, 0.0)), betas=(0.9, 0.98), eps=1e-6)
    plain.load_state_dict(state)
    assert all(float(s["step"]) == 3.0 for s in plain.state.values() if "step" in s)


def test_it_stands_aside_where_it_would_not_be_the_same_update(tiny_model_dir):
    net = _Net()
    assert working_weights.install(net, BertAdam(net.parameters())) is None
    frozen = _Net().requires_grad_(False)
    assert working_weights.install(frozen, torch.optim.AdamW(_Net().parameters())) is None
    tied = _Net()
    tied.unused.weight = tied.b.weight  # shared: not its own
    assert tied.b not in working_weights.trainable_linears(tied)
    bf16 = TrainParams(bf16_working_weights="auto")
    assert auto_bf16_working_weights(bf16, "32-true") is False
    assert auto_bf16_working_weights(TrainParams(bf16_working_weights=True, optimizer="bertadam"), "bf16-mixed") is False
    assert auto_bf16_working_weights(TrainParams(bf16_working_weights=True, compile=True), "bf16-mixed") is False
    assert auto_bf16_working_weights(TrainParams(bf16_working_weights=False), "bf16-mixed") is False
    if not torch.cuda.is_available():  # measured with AMX: auto is on there only
        assert auto_bf16_working_weights(bf16, "bf16-mixed") is (cpu_has_amx() and working_weights.have_compiler())
    with pytest.raises(ValidationError, match="bf16_working_weights"):
        TrainParams(bf16_working_weights="sometimes")
