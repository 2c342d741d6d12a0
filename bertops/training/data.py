"""Prepared splits -> tokenized once -> length-grouped, dynamically padded batches."""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding
from transformers.trainer_pt_utils import LengthGroupedSampler

from bertops.errors import BertopsError
from bertops.training import distributed


def read_split(path: Path) -> list[dict]:
    with Path(path).open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


IGNORE_INDEX = -100  # positions the loss skips (special tokens, a word's later sub-tokens, padding)


def encode_sequences(rows: list[dict], tokenizer, labels: list[str], max_length: int) -> list[dict]:
    """Sequence (or sentence-pair) classification: one label per row."""
    label_ids = {label: i for i, label in enumerate(labels)}
    texts = [row["text"] for row in rows]
    pairs = [row["text_pair"] for row in rows] if rows and "text_pair" in rows[0] else None
    # "longest_first" trims the longer side of a pair first
    enc = tokenizer(texts, pairs, truncation="longest_first", max_length=max_length)
    features = [{k: enc[k][i] for k in enc.keys()} for i in range(len(rows))]
    for feature, row in zip(features, rows):
        feature["labels"] = label_ids[row["label"]]
    return features


def encode_words(rows: list[dict], tokenizer, labels: list[str], max_length: int) -> list[dict]:
    """Token classification: each word's tag on its first sub-token, IGNORE_INDEX on the rest.
    Words cut off by truncation get no label (evaluation maps predictions back to all words)."""
    label_ids = {label: i for i, label in enumerate(labels)}
    enc = tokenizer([list(row["tokens"]) for row in rows], is_split_into_words=True, truncation=True,
                    max_length=max_length)
    features = []
    for i, row in enumerate(rows):
        feature = {k: enc[k][i] for k in enc.keys()}
        feature["labels"] = first_subtoken_labels(enc.word_ids(i), [label_ids[t] for t in row["tags"]])
        features.append(feature)
    return features


def first_subtoken_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    out, previous = [], None
    for word in word_ids:
        out.append(word_labels[word] if word is not None and word != previous else IGNORE_INDEX)
        previous = word
    return out


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


class QuestionCollator:
    """Pads model inputs and drops the decoding-only fields; for training and validation it keeps the answer
    positions and each window's index (validation decodes by it), for inference (`inputs_only`) neither."""

    def __init__(self, tokenizer, inputs_only: bool = False):
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
        self.drop = {"example_index", "offset_mapping"}
        if inputs_only:
            self.drop |= {"feature_index", "start_positions", "end_positions"}

    def __call__(self, features):
        return self.pad([{k: v for k, v in f.items() if k not in self.drop} for f in features])


class FineTuneData(L.LightningDataModule):
    """Splits encoded once for the task (one feature per text, sentence, or context window), batched with
    dynamic padding."""

    def __init__(self, split_paths: dict[str, Path], tokenizer, labels: list[str], *, max_length: int,
                 batch_size: int, eval_batch_size: int, length_grouping: bool, num_workers: int, seed: int,
                 max_train_examples: int | None = None, train_fraction: float = 1.0, task_type: str = "sequence_classification",
                 doc_stride: int = 128, masking: dict | None = None):
        super().__init__()
        self.eval_collate = None
        if task_type == "masked_lm":
            from bertops.mlm.masking import MaskingCollator, encode_texts

            self.encode = lambda rows, tok, labels, max_len: encode_texts(rows, tok, max_len)
            self.collate = MaskingCollator(tokenizer, seed=seed, **masking)
            self.eval_collate = MaskingCollator(tokenizer, seed=seed, fixed=True, **masking)
        elif task_type == "question_answering":
            from bertops.qa.windows import encode_questions

            self.encode = lambda rows, tok, labels, max_len: encode_questions(rows, tok, max_len, doc_stride)
            self.collate = QuestionCollator(tokenizer)
        elif task_type == "token_classification":
            self.encode, self.collate = encode_words, DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8)
        else:
            self.encode, self.collate = encode_sequences, DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
        self.rows: dict[str, list[dict]] = {}
        self.split_paths, self.tokenizer, self.labels = split_paths, tokenizer, labels
        self.max_length, self.batch_size, self.eval_batch_size = max_length, batch_size, eval_batch_size
        self.length_grouping, self.num_workers, self.seed = length_grouping, num_workers, seed
        self.max_train_examples, self.train_fraction = max_train_examples, train_fraction
        self.splits: dict[str, EncodedSplit] = {}

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
            self.splits[name] = EncodedSplit(self.encode(rows, self.tokenizer, self.labels, self.max_length))

    def _loader(self, name: str, batch_size: int, train: bool) -> DataLoader:
        split = self.splits[name]
        generator = torch.Generator().manual_seed(self.seed)
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
