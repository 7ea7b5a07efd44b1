"""Tokenised examples -> padded batches with little padding.

Examples are grouped by length (sorted inside shuffled buckets of 50 batches), so a
batch holds examples of similar length and padding stays small, while the order of
batches still changes every epoch. The order depends only on (seed, epoch), so a
resumed run can skip to the exact batch it stopped at.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from tunekit.data.documents import tokenize_text
from tunekit.data.records import Record, load_records
from tunekit.data.template import IGNORE, Tokenized, tokenize_chat
from tunekit.errors import DataError

BUCKET = 50


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T) 0/1 padding mask, or (B, 1, T, T) bool block mask when packed
    labels: torch.Tensor  # (B, T), IGNORE where no loss
    tokens: int  # real (unpadded) tokens
    position_ids: torch.Tensor | None = None  # (B, T) when packed (restarting per example); else the model's default
    distill: torch.Tensor | None = None  # (B, T) bool: tokens of replay examples (train.replay.kl); None when none

    @property
    def supervised(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())


def load_examples(path, tokenizer, train_on: str = "all_assistant") -> list[Tokenized]:
    """Tokenise a file the prepare stage wrote; any invalid line means it was edited since."""
    records, rejects = load_records(path)
    if rejects:
        raise DataError(f"{path} was changed after the prepare stage ({rejects[0].reason} at line {rejects[0].line}); "
                        "rerun prepare with --force")
    return [to_example(tokenizer, r, train_on) for r in records]


def to_example(tokenizer, record: Record, train_on: str = "all_assistant") -> Tokenized:
    """Ids and labels of a prepared record: a conversation, or a window of a document."""
    if record.text is None:
        return tokenize_chat(tokenizer, record.messages, train_on)
    x = record.extra
    return tokenize_text(tokenizer, record.text, x.get("context", ""), x.get("doc_start", True), x.get("doc_end", True))


def epoch_batches(examples: list[Tokenized], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Index lists of one epoch's batches; deterministic in (seed, epoch)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    span = batch_size * BUCKET
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: len(examples[i].input_ids))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[Tokenized], indices: list[int], pad_id: int) -> Batch:
    """Right-pad a batch; padded positions are masked out of attention and loss."""
    width = max(len(examples[i].input_ids) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    labels = torch.full((len(indices), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    tokens = 0
    distill = torch.zeros((len(indices), width), dtype=torch.bool)
    for row, i in enumerate(indices):
        ex = examples[i]
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
        distill[row, :n] = ex.distill
        tokens += n
    return Batch(ids, mask, labels, tokens, distill=distill if distill.any() else None)
