"""train.lazy_embedding_decay: holding the word-embedding rows no training batch reads apart, and decaying them once
when next needed, gives the weights, validation and checkpoints of full AdamW over the whole table, through the
train stage's own module and a Lightning Trainer; it stands aside where it would not be full AdamW."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError
from torch.utils.data import DataLoader
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

from bertops.config import TrainParams
from bertops.errors import BertopsError
from bertops.training import embedding_grad, lazy_embedding_decay
from bertops.training.lazy_embedding_decay import LazyDecayEmbedding
from bertops.training.module import auto_lazy_embedding_decay

READ = 40  # training batches hold ids 2 and 5..39 only


def _tiny(path, cls=AutoModelForSequenceClassification):
    torch.manual_seed(0)
    kwargs = {"num_labels": 2} if cls is AutoModelForSequenceClassification else {}
    return cls.from_pretrained(path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kwargs)


def _batches(n: int, seed: int, low: int = 5, high: int = READ) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(low, high, (4, 10), generator=g)
        ids[:, 0] = 2
        mask = torch.ones_like(ids)
        mask[0, 5:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (4,), generator=g)})
    return out


class _Data(L.LightningDataModule):
    """Training batches that read few ids; validation batches that read the others too."""

    def __init__(self, vocab: int):
        super().__init__()
        self.train, self.val = _batches(8, seed=3), _batches(2, seed=4, high=vocab)

    def train_token_ids(self):
        return torch.unique(torch.cat([b["input_ids"].reshape(-1) for b in self.train]))

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=None)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=None)


def test_the_train_stage_module_gives_full_adamws_weights_and_validation(tiny_model_dir, tmp_path):
    from bertops.training.heads.sequence_classification import SequenceClassifier

    trained, val, installed = {}, {}, {}

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            installed.setdefault(module.hp.lazy_embedding_decay, set()).add(
                type(module.model.get_input_embeddings()).__name__)

    vocab = _tiny(tiny_model_dir).config.vocab_size
    for setting in (True, False):
        L.seed_everything(0, verbose=False)
        module = SequenceClassifier(_tiny(tiny_model_dir), set(), TrainParams(
            lazy_embedding_decay=setting, fast_dropout=False, max_grad_norm=1.0, lr=1e-2, weight_decay=0.1,
            warmup_ratio=0.25))
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path / str(setting),
                            callbacks=[Watch()], num_sanity_val_steps=0)
        trainer.fit(module, datamodule=_Data(vocab))
        assert type(module.model.get_input_embeddings()) is torch.nn.Embedding  # the stock table after fit
        assert module.lazy_decay is None and module.rows_grad is None
        trained[setting], val[setting] = module.model.state_dict(), float(trainer.callback_metrics["val_loss"])
        # the checkpoint Lightning wrote mid-run (after validation, the lazy table in place) has the stock layout
        ckpt = torch.load(next((tmp_path / str(setting)).rglob("*.ckpt")), weights_only=False)["state_dict"]
        assert ckpt["model.bert.embeddings.word_embeddings.weight"].shape == (vocab, 32)
    assert installed == {True: {"LazyDecayEmbedding"}, False: {"Embedding"}}
    assert val[True] == pytest.approx(val[False], rel=1e-5)  # validation read the unread rows, brought up to date
    initial = _tiny(tiny_model_dir).state_dict()["bert.embeddings.word_embeddings.weight"]
    for name, value in trained[False].items():
        if name.endswith("attention.self.key.bias"):
            continue  # softmax ignores it: its exact gradient is 0, and Adam scales rounding noise up to lr-sized steps
        torch.testing.assert_close(trained[True][name], value, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    table = trained[True]["bert.embeddings.word_embeddings.weight"]
    read = torch.zeros(vocab, dtype=torch.bool)
    read[_Data(vocab).train_token_ids()] = True
    unread = ~read & (initial.abs().amax(dim=1) > 0)  # not the padding row (zeros)
    ratio = table[unread] / initial[unread]
    assert 0.99 < float(ratio.min()) and float(ratio.max()) < 0.9999  # decayed, by one factor for every row
    assert float(ratio.max() - ratio.min()) < 1e-5
    assert (table[read] - initial[read]).abs().amax(dim=1).min() > 1e-4  # the read rows trained


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), factor=st.floats(0.5, 1.0), reads=st.integers(1, 99))
def test_the_permuted_table_looks_up_and_saves_like_the_stock_one(seed, factor, reads):
    g = torch.Generator().manual_seed(seed)
    stock = torch.nn.Embedding(100, 8, padding_idx=0)
    with torch.no_grad():
        stock.weight.copy_(torch.randn(100, 8, generator=g))
    read_ids = torch.randperm(100, generator=g)[:reads]
    lazy = LazyDecayEmbedding(copy.deepcopy(stock), read_ids)
    lazy.decay(1 - factor, 1.0)  # one step's 1 - lr x wd = factor
    expected = stock.weight.detach().clone()
    unread = torch.ones(100, dtype=torch.bool)
    unread[read_ids] = False
    expected[unread] *= factor
    ids = torch.randint(0, 100, (3, 7), generator=g)
    lazy.eval()
    torch.testing.assert_close(lazy(ids), expected[ids])
    torch.testing.assert_close(lazy.state_dict()["weight"], expected)
    assert list(lazy.state_dict()) == ["weight"]
    moved = LazyDecayEmbedding(copy.deepcopy(stock), read_ids)
    moved.load_state_dict(lazy.state_dict())
    torch.testing.assert_close(moved.full_table(), expected)
    torch.testing.assert_close(moved.release().weight.detach(), expected)


def test_a_training_batch_outside_the_train_split_is_an_error(tiny_model_dir):
    model = _tiny(tiny_model_dir).train()
    handle = lazy_embedding_decay.install(model, torch.arange(READ))
    assert handle is not None
    model(**_batches(1, seed=0)[0]).loss.backward()  # inside: fine
    with pytest.raises(BertopsError, match="train.lazy_embedding_decay"):
        model(**_batches(1, seed=0, low=READ, high=READ + 5)[0])


def test_it_and_the_sparse_gradient_work_together(tiny_model_dir):
    model = _tiny(tiny_model_dir).train()
    lazy_embedding_decay.install(model, torch.arange(READ))
    rows = embedding_grad.install(model)
    assert rows is not None and model.get_input_embeddings().sparse
    model(**_batches(1, seed=0)[0]).loss.backward()
    embedding_grad.clip_and_densify(list(model.parameters()), 1.0, rows)
    assert model.get_input_embeddings().weight.grad.shape == (READ, 32)  # AdamW's pass covers the read rows only


def test_stands_aside_where_it_would_not_be_full_adamw(tiny_model_dir):
    ids = torch.arange(READ)
    tied = _tiny(tiny_model_dir, AutoModelForMaskedLM)  # the MLM head reads every row of the shared weight
    assert lazy_embedding_decay.install(tied, ids) is None
    assert type(tied.get_input_embeddings()) is torch.nn.Embedding
    frozen = _tiny(tiny_model_dir)
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert lazy_embedding_decay.install(frozen, ids) is None
    assert lazy_embedding_decay.install(_tiny(tiny_model_dir), ids, processes=2) is None
    assert lazy_embedding_decay.install(_tiny(tiny_model_dir), ids, precision="16-mixed") is None  # skipped steps
    assert lazy_embedding_decay.install(_tiny(tiny_model_dir), None) is None  # a collator drawing its own ids
    every = _tiny(tiny_model_dir)
    assert lazy_embedding_decay.install(every, torch.arange(every.config.vocab_size)) is None  # nothing to skip
    assert lazy_embedding_decay.install(torch.nn.Linear(3, 3), ids) is None


def test_auto_is_on_for_a_cpu_and_the_knob_is_validated():
    assert auto_lazy_embedding_decay(TrainParams()) is (not torch.cuda.is_available())
    assert auto_lazy_embedding_decay(TrainParams(lazy_embedding_decay=False)) is False
    with pytest.raises(ValidationError, match="lazy_embedding_decay"):
        TrainParams(lazy_embedding_decay="sometimes")
