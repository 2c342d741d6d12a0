"""train.cls_top_layer: a [CLS]-head task's top block computed for [CLS] alone in training gives the stock logits,
loss and gradients (BERT, RoBERTa, ELECTRA blocks; padded rows; with fast dropout's attention), only while
training and only for the tasks whose head reads nothing else, and it stands aside where it would not be the
same computation."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError
from torch.utils.data import DataLoader
from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification, ElectraConfig, ElectraForSequenceClassification,
                          RobertaConfig, RobertaForSequenceClassification)

from bertops.config import FinetuneParams, TrainParams
from bertops.training import cls_top_layer, fast_dropout
from bertops.training.module import auto_cls_top_layer

FAMILIES = {"bert": (BertConfig, BertForSequenceClassification),
            "roberta": (RobertaConfig, RobertaForSequenceClassification),
            "electra": (ElectraConfig, ElectraForSequenceClassification)}


def _model(family: str, **config):
    config_cls, model_cls = FAMILIES[family]
    torch.manual_seed(0)
    return model_cls(config_cls(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64, num_labels=3,
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **config)).train()


def _batch(seed: int, rows: int, length: int, padded: list[int]):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    for row, keep in enumerate(padded[:rows]):
        mask[row, max(1, keep):] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (rows,), generator=g)}


@settings(max_examples=15, deadline=None)
@given(family=st.sampled_from(sorted(FAMILIES)), seed=st.integers(0, 10_000), rows=st.integers(1, 5),
       length=st.integers(2, 20), padded=st.lists(st.integers(1, 20), max_size=5),
       routed=st.booleans())
def test_the_same_logits_and_gradients_as_the_stock_block(family, seed, rows, length, padded, routed):
    stock = _model(family)
    if routed:  # the train stage's CPU default: fast dropout's attention function (eager math in training)
        fast_dropout.install(stock)
    trimmed = copy.deepcopy(stock)
    handle = cls_top_layer.install(trimmed)
    assert handle is not None
    batch = _batch(seed, rows, length, padded)
    a, b = stock(**batch), trimmed(**batch)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-6, rtol=1e-5)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(stock.named_parameters(), trimmed.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_only_the_training_forward_changes_and_release_restores_the_stock_block():
    model = _model("bert")
    handle = cls_top_layer.install(model)
    batch = _batch(1, 3, 9, [4])
    batch.pop("labels")
    seen = []
    top = model.bert.encoder.layer[-1]
    hook = top.register_forward_hook(lambda module, args, output: seen.append(tuple(output.shape)))
    model(**batch)
    model.eval()
    model(**batch)  # validation and serving: every position, as stock
    model.train()
    handle.release()
    model(**batch)
    hook.remove()
    assert seen == [(3, 1, 32), (3, 9, 32), (3, 9, 32)]
    assert "forward" not in vars(top.attention)


def test_stands_aside_where_it_would_not_be_the_same_computation():
    torch.manual_seed(0)
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4,
                                                                  hidden_dim=64, max_position_embeddings=64))
    assert cls_top_layer.install(distil) is None  # another block layout: stays stock
    assert cls_top_layer.install(_model("bert", output_hidden_states=True)) is None  # every layer is read
    assert cls_top_layer.install(_model("bert", chunk_size_feed_forward=4)) is None
    assert cls_top_layer.install(torch.nn.Linear(3, 3)) is None


def test_auto_is_on_for_a_cpu_and_the_knob_is_validated():
    assert auto_cls_top_layer(TrainParams()) is (not torch.cuda.is_available())
    assert auto_cls_top_layer(TrainParams(cls_top_layer=False)) is False
    with pytest.raises(ValidationError, match="cls_top_layer"):
        TrainParams(cls_top_layer="sometimes")


def _fit(module, batches):
    trainer = L.Trainer(max_steps=len(batches), accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))


def test_the_train_stage_modules_use_it_for_cls_heads_only(tiny_model_dir):
    """Through a Lightning Trainer: the sequence classifier trains with the [CLS]-only top block and ends at the
    stock block's weights; the token classifier, whose head reads every position, and a scalar mix, which reads
    every layer, keep the stock block; after fit the handle is released."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from bertops.training.heads.sequence_classification import SequenceClassifier
    from bertops.training.heads.token_classification import TokenClassifier

    def tiny(cls=AutoModelForSequenceClassification):
        torch.manual_seed(0)
        return cls.from_pretrained(tiny_model_dir, num_labels=2, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0)

    vocab = tiny().config.vocab_size
    batches = []
    for seed in range(5):
        batch = _batch(seed, 4, 12, [6, 12, 3])
        batches.append({**batch, "input_ids": batch["input_ids"] % vocab, "labels": batch["labels"] % 2})
    trained, installed = {}, {}
    for setting in (True, False):
        L.seed_everything(0, verbose=False)
        module = SequenceClassifier(tiny(), set(), TrainParams(cls_top_layer=setting, max_grad_norm=1.0, lr=1e-3,
                                                               warmup_ratio=0.0))
        top = module.model.bert.encoder.layer[-1].attention
        shapes = []
        hook = module.model.bert.encoder.register_forward_hook(
            lambda m, args, out: shapes.append(tuple(out.last_hidden_state.shape)))
        _fit(module, batches)
        hook.remove()
        installed[setting] = {s[1] for s in shapes}
        assert module.cls_top is None and "forward" not in vars(top)  # released after fit
        trained[setting] = module.model.state_dict()
    assert installed == {True: {1}, False: {12}}
    for name, value in trained[False].items():
        if name.endswith("attention.self.key.bias"):
            continue  # softmax ignores it: its exact gradient is 0, and Adam scales rounding noise up to lr-sized steps
        torch.testing.assert_close(trained[True][name], value, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")

    token_batches = [{**b, "labels": torch.zeros_like(b["input_ids"])} for b in batches[:2]]
    tagger = TokenClassifier(tiny(AutoModelForTokenClassification), set(), TrainParams(cls_top_layer=True))
    assert not tagger.READS_CLS_ONLY
    _fit(tagger, token_batches)
    assert tagger.cls_top is None

    mixed = SequenceClassifier(tiny(), set(), TrainParams(cls_top_layer=True),
                               finetune=FinetuneParams(layer_features="scalar_mix"))
    seen = []

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(module.cls_top)

    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Watch()])
    trainer.fit(mixed, train_dataloaders=DataLoader(batches[:1], batch_size=None))
    assert seen == [None]
