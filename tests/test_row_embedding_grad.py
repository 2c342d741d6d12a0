"""train.row_embedding_grad: the word embedding's gradient formed and clipped over the rows a batch read gives the
optimizer the same gradient and the model the same weights as the dense path, through the train stage's own
module and a Lightning Trainer; it stands aside where it would not be the same gradient."""

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
from bertops.training import embedding_grad
from bertops.training.module import auto_row_embedding_grad


def _tiny(path, cls=AutoModelForSequenceClassification):
    torch.manual_seed(0)
    kwargs = {"num_labels": 2} if cls is AutoModelForSequenceClassification else {}
    return cls.from_pretrained(path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kwargs)


def _batches(vocab: int, n: int, seed: int, length: int = 12) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, min(vocab, 40), (4, length), generator=g)  # few distinct ids: rows repeat
        ids[:, 0] = 2
        mask = torch.ones_like(ids)
        mask[0, length // 2:] = 0  # a padded row
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (4,), generator=g)})
    return out


@settings(max_examples=12, deadline=None)
@given(max_norm=st.sampled_from([None, 0.05, 1.0, 100.0]), seed=st.integers(0, 10_000))
def test_same_clipped_gradients_as_the_dense_path(tiny_model_dir, max_norm, seed):
    """Step by step, from the same weights (the dense model's, copied over after each AdamW step), every clipped
    gradient the optimizer would see is the dense path's; the buffer carries over between steps. Weights are not
    compared after several Adam steps: Adam turns rounding differences in near-zero gradients into lr-sized ones."""
    dense = _tiny(tiny_model_dir).train()
    rows = copy.deepcopy(dense)
    handle = embedding_grad.install(rows)
    assert handle is not None and rows.get_input_embeddings().sparse
    opt = torch.optim.AdamW(dense.parameters(), lr=1e-2, weight_decay=0.01, fused=True)
    emb = rows.get_input_embeddings().weight
    for batch in _batches(dense.config.vocab_size, 4, seed):
        rows.load_state_dict(dense.state_dict())
        for model in (dense, rows):
            model(**batch).loss.backward()
        assert emb.grad.is_sparse
        if max_norm:
            torch.nn.utils.clip_grad_norm_(dense.parameters(), max_norm, foreach=True)
        embedding_grad.clip_and_densify(rows.parameters(), max_norm, handle)
        assert not emb.grad.is_sparse  # the optimizer gets a dense gradient
        for (name, a), b in zip(dense.named_parameters(), rows.parameters()):
            torch.testing.assert_close(b.grad, a.grad, atol=1e-7, rtol=1e-5, msg=lambda m: f"{name}: {m}")
        opt.step()
        for model in (dense, rows):
            model.zero_grad(set_to_none=True)
    # last step's rows were zeroed before this step's were written: nothing stale in the buffer
    stale = torch.ones(emb.shape[0], dtype=torch.bool)
    stale[handle.rows] = False
    assert handle.buffer[stale].abs().max() == 0


def test_stands_aside_where_it_would_not_be_the_same_gradient(tiny_model_dir):
    tied = _tiny(tiny_model_dir, AutoModelForMaskedLM)  # the MLM head shares the embedding's weight
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    assert embedding_grad.install(tied) is None and not tied.get_input_embeddings().sparse
    frozen = _tiny(tiny_model_dir)
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert embedding_grad.install(frozen) is None
    assert embedding_grad.install(_tiny(tiny_model_dir), processes=2) is None  # DDP reduces dense buckets
    assert embedding_grad.install(torch.nn.Linear(3, 3)) is None


def test_auto_is_on_for_a_cpu_and_the_knob_is_validated():
    assert auto_row_embedding_grad(TrainParams()) is (not torch.cuda.is_available())
    assert auto_row_embedding_grad(TrainParams(row_embedding_grad=False)) is False
    with pytest.raises(ValidationError, match="row_embedding_grad"):
        TrainParams(row_embedding_grad="sometimes")


def test_the_train_stage_module_gives_the_dense_paths_weights(tiny_model_dir):
    from bertops.training.heads.sequence_classification import SequenceClassifier

    batches = _batches(100, 6, seed=3)
    trained, seen = {}, {}

    class Watch(L.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):  # Lightning calls it before the module's
            grad = module.model.get_input_embeddings().weight.grad
            seen.setdefault(module.hp.row_embedding_grad, set()).add((module.rows_grad is not None, grad.is_sparse))

    for setting in (True, False):
        L.seed_everything(0, verbose=False)
        module = SequenceClassifier(_tiny(tiny_model_dir), set(), TrainParams(
            row_embedding_grad=setting, fast_dropout=False, max_grad_norm=0.05, lr=1e-3, warmup_ratio=0.0))
        trainer = L.Trainer(max_steps=len(batches), accelerator="cpu", devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[Watch()])
        trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
        assert (module.rows_grad is None) and not module.model.get_input_embeddings().sparse  # released after fit
        trained[setting] = module.model.state_dict()
    assert seen == {True: {(True, True)}, False: {(False, False)}}  # the backward was sparse on the rows path only
    for name, value in trained[False].items():
        if name.endswith("attention.self.key.bias"):
            continue  # softmax ignores it: its exact gradient is 0, and Adam scales rounding noise up to lr-sized steps
        torch.testing.assert_close(trained[True][name], value, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    changed = (trained[True]["bert.embeddings.word_embeddings.weight"]
               - _tiny(tiny_model_dir).state_dict()["bert.embeddings.word_embeddings.weight"]).abs().amax(dim=1)
    assert (changed > 0).sum() > 5  # the embedding did train
