"""Prepared splits -> tokenized once -> length-grouped, dynamically padded batches."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from transformers.trainer_pt_utils import LengthGroupedSampler

from bertops.corpora.splitting import read_split
from bertops.errors import BertopsError
from bertops.training import distributed


class EncodedSplit(Dataset):
    """A split tokenized once up front (no per-step tokenization, no padding until the batch is formed)."""

    def __init__(self, features: list[dict]):
        self.features = features
        self.lengths = [len(f["input_ids"]) for f in self.features]

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i]

    def real_tokens(self) -> int:
        return sum(self.lengths)


def token_ids(features: list[dict], pad_token_id: int | None) -> torch.Tensor:
    """The distinct token ids of encoded features, and the pad id: what their padded batches can hold."""
    ids = [torch.as_tensor(f["input_ids"], dtype=torch.long).reshape(-1) for f in features]
    if pad_token_id is not None:
        ids.append(torch.tensor([pad_token_id]))
    return torch.unique(torch.cat(ids))


class FineTuneData(L.LightningDataModule):
    """Splits encoded once by the task family (one feature per text, sentence, or context window), batched with
    dynamic padding by the family's collators."""

    def __init__(self, split_paths: dict[str, Path], tokenizer, labels, *, encode, collate, eval_collate=None,
                 batch_size: int, eval_batch_size: int, length_grouping: bool, num_workers: int, seed: int,
                 max_train_examples: int | None = None, train_fraction: float = 1.0, max_length: int | None = None):
        super().__init__()
        # encode(rows, tokenizer, labels) -> features; the family's collators form the batches
        self.encode, self.collate, self.eval_collate = encode, collate, eval_collate
        self.rows: dict[str, list[dict]] = {}
        self.split_paths, self.tokenizer, self.labels = split_paths, tokenizer, labels
        self.max_length, self.batch_size, self.eval_batch_size = max_length, batch_size, eval_batch_size
        self.length_grouping, self.num_workers, self.seed = length_grouping, num_workers, seed
        self.max_train_examples, self.train_fraction = max_train_examples, train_fraction
        self.splits: dict[str, EncodedSplit] = {}
        self._train_generator: torch.Generator | None = None
        self._restored: dict = {}

    def setup(self, stage: str | None = None):
        for name, path in self.split_paths.items():
            if name in self.splits:
                continue
            rows = read_split(path)
            keep = len(rows)
            if name == "train":
                keep = min(keep, max(1, round(len(rows) * self.train_fraction)), self.max_train_examples or keep)
            if keep < len(rows):
                # a random subset: split files keep the corpus order, which is often grouped by label
                rows = random.Random(self.seed).sample(rows, keep)
            self.rows[name] = rows
            self.splits[name] = EncodedSplit(self.encode(rows, self.tokenizer, self.labels))

    def train_token_ids(self) -> torch.Tensor | None:
        """Every token id a training batch can hold (the train split's and the pad token), or None where the
        collator draws ids of its own (masked-LM masking)."""
        if hasattr(self.collate, "rng") or "train" not in self.splits:
            return None
        return token_ids(self.splits["train"].features, self.tokenizer.pad_token_id)

    # ---- the data order and the masks across a kill: saved in every checkpoint, restored on resume -------------
    def state_dict(self) -> dict:
        """Where the training order's generator and the masking RNG stand (at an epoch's end, where Lightning
        checkpoints), so that a resumed run draws the epochs the uninterrupted run would have drawn."""
        state = {"train_order": self._train_generator.get_state()} if self._train_generator is not None else {}
        if hasattr(self.collate, "rng"):  # drawn in this process with num_workers 0 (the default)
            state["masking"] = self.collate.rng.getstate()
        return state

    def load_state_dict(self, state: dict) -> None:
        self._restored = state
        if "masking" in state and hasattr(self.collate, "rng"):
            self.collate.rng.setstate(state["masking"])

    def _loader(self, name: str, batch_size: int, train: bool) -> DataLoader:
        split = self.splits[name]
        generator = torch.Generator().manual_seed(self.seed)
        if train:
            if "train_order" in self._restored:
                generator.set_state(self._restored["train_order"])
            self._train_generator = generator
        trainer = self.trainer  # None outside a Trainer (predict, tests)
        world = distributed.rank_and_world(trainer)[1]
        if train:
            # train.batch_size is the global batch: each of the `world` processes takes its share of it
            if batch_size % world:
                raise BertopsError(f"train.batch_size ({batch_size}) must be a multiple of the number of training "
                                   f"processes ({world})")
            if self.length_grouping:
                sampler = LengthGroupedSampler(batch_size, lengths=split.lengths, generator=generator)
            else:
                sampler = torch.utils.data.RandomSampler(split, generator=generator)
            sampler, batch_size = distributed.train_sampler(sampler, trainer), batch_size // world
        else:
            # evaluation order does not matter for metrics: sort by length for the least padding
            sampler = distributed.eval_indices(sorted(range(len(split)), key=split.lengths.__getitem__), trainer)
        collate = self.collate if train or self.eval_collate is None else self.eval_collate
        return DataLoader(split, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        return self._loader("train", self.batch_size, train=True)

    def val_dataloader(self):
        return self._loader("val", self.eval_batch_size, train=False)

    def test_dataloader(self):
        return self._loader("test", self.eval_batch_size, train=False)
