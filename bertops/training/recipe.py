"""The train stage's data and Lightning Trainer arguments, built from params: shared by the stage and by
benchmarks/train_speed.py's `bertops` runner (which must run where MLflow is not installed, so nothing here
imports it)."""

from __future__ import annotations

from bertops.config import Params
from bertops.training import distributed
from bertops.training.data import FineTuneData
from bertops.training.module import auto_precision


def task_data(family, params: Params, split_paths: dict, tokenizer, labels) -> FineTuneData:
    """The family's features and batches for the named splits, as the train stage builds them."""
    hp = params.train
    collators = family.collators(tokenizer, params)
    return FineTuneData(split_paths, tokenizer, labels,
                        encode=lambda rows, tok, labels: family.encode(rows, tok, labels, params),
                        collate=collators.train, eval_collate=collators.eval, max_length=params.model.max_length,
                        batch_size=hp.batch_size, eval_batch_size=hp.eval_batch_size,
                        length_grouping=hp.length_grouping, num_workers=hp.num_workers, seed=hp.seed,
                        max_train_examples=hp.max_train_examples, train_fraction=hp.train_fraction)


def trainer_kwargs(params: Params) -> dict:
    """The Lightning Trainer's arguments as the train stage sets them (benchmarks/train_speed.py uses them too)."""
    hp = params.train
    # strategy auto: one device, even on a machine with several GPUs (Lightning would pick them all)
    devices = 1 if hp.strategy == "auto" and hp.devices == "auto" else hp.devices
    return dict(max_epochs=hp.epochs, accelerator=hp.accelerator, devices=devices, num_nodes=hp.num_nodes,
                strategy=distributed.lightning_strategy(hp.strategy), precision=auto_precision(hp.precision,
                                                                                           hp.accelerator),
                logger=False, use_distributed_sampler=False,  # FineTuneData splits the data itself
                num_sanity_val_steps=0, enable_model_summary=False)
