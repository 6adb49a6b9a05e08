"""Batches from a prepared split: deterministic length-grouped order, dynamic padding, optional packing.

The order of an epoch is a pure function of (seed, epoch, lengths, batch sizes), so a resumed run
rebuilds exactly the batches an uninterrupted run would see and skips the ones already consumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from lorafleet.data.dataset import IGNORE_INDEX, read_split


@dataclass(frozen=True)
class Sample:
    """One tokenized conversation; `labels[i]` is IGNORE_INDEX where token i carries no loss."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        """Tokens that contribute to the causal-LM loss (token 0 is never a target)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def load_samples(folder: Path, split: str) -> list[Sample]:
    """All rows of one split, in file order (a run opens its dataset once: ``data.open_prepared``)."""
    return samples_from_table(read_split(folder, split))


def samples_from_table(table: pa.Table) -> list[Sample]:
    """The rows of a split's table, in order."""
    return [Sample(ids, labels) for ids, labels in zip(table.column("input_ids").to_pylist(), table.column("labels").to_pylist())]


def epoch_batches(lengths: list[int], batch_size: int, world_size: int, seed: int, epoch: int, window: int) -> list[list[int]]:
    """Global batches of sample indices for one epoch (each up to batch_size * world_size samples).

    The trainer passes batch_size * grad_accum as `batch_size`: one global batch per optimizer step,
    so gradient accumulation and more processes see exactly the samples a larger batch would.

    Shuffle with (seed, epoch), sort by length inside windows of `window` global batches so that
    padding stays small, then shuffle the batch order so long batches are not always first.
    A trailing batch smaller than `world_size` is dropped so that every process gets a sample.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    global_size = batch_size * world_size
    span = global_size * window
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: -lengths[i])  # stable: ties keep shuffled order
        batches += [chunk[i : i + global_size] for i in range(0, len(chunk), global_size)]
    batches = [b for b in batches if len(b) >= world_size]
    return [batches[i] for i in rng.permutation(len(batches)).tolist()]


def split_step(step_batch: list[int], grad_accum: int, world_size: int) -> list[list[int]]:
    """Split one optimizer step's samples into up to `grad_accum` micro-batches (global, before sharding).

    Sizes are balanced and each micro-batch keeps at least `world_size` samples, so every process
    runs the same number of micro-batches and none is empty.
    """
    parts = max(1, min(grad_accum, len(step_batch) // world_size))
    bounds = np.linspace(0, len(step_batch), parts + 1).round().astype(int)
    return [step_batch[bounds[i] : bounds[i + 1]] for i in range(parts)]


def rank_shard(global_batch: list[int], rank: int, world_size: int) -> list[int]:
    """This process's contiguous share of a global batch (sizes differ by at most one)."""
    bounds = np.linspace(0, len(global_batch), world_size + 1).round().astype(int)
    return global_batch[bounds[rank] : bounds[rank + 1]]


def eval_batches(lengths: list[int], batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """This process's eval batches: a strided shard of all samples, sorted by length, no shuffling."""
    mine = sorted(range(rank, len(lengths), world_size), key=lambda i: -lengths[i])
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def collate_padded(samples: list[Sample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample of this batch: input_ids, attention_mask, labels, each (batch, seq)."""
    width = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        input_ids[row, :n] = torch.tensor(sample.input_ids)
        labels[row, :n] = torch.tensor(sample.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_causal(samples: list[Sample], pad_token_id: int, multiple: int,
                   widths: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample rounded up to a multiple of ``multiple``, or to the first of ``widths``
    (sorted; the plan's graph widths) that holds it, with no attention mask:
    input_ids and labels, each (batch, seq). Exact for causal-LM training: under the causal mask a real
    token never attends to a later (padded) position, and padded positions carry no loss, so nothing
    flows from them. Without a mask, attention can take its fused causal kernels, and a few row lengths
    cover every batch (what CUDA-graph capture per shape needs)."""
    batch = collate_padded(samples, pad_token_id)
    width = batch["input_ids"].shape[1]
    target = width + (-width % multiple)
    target = next((w for w in widths if w >= target), target)
    extra = target - width
    return {
        "input_ids": F.pad(batch["input_ids"], (0, extra), value=pad_token_id),
        "labels": F.pad(batch["labels"], (0, extra), value=IGNORE_INDEX),
    }


def collate_packed(samples: list[Sample]) -> dict[str, torch.Tensor]:
    """Concatenate samples into one row (1, total) with position_ids restarting at 0 per sample.

    Only correct with an attention backend that reads sample boundaries from position_ids
    (flash-attention varlen); preflight refuses --packing elsewhere. The first label of every
    sample is masked so the last token of one sample is never trained to predict the next sample.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for sample in samples:
        input_ids += sample.input_ids
        labels += [IGNORE_INDEX] + sample.labels[1:]
        positions += list(range(len(sample.input_ids)))
    return {
        "input_ids": torch.tensor([input_ids]),
        "position_ids": torch.tensor([positions]),
        "labels": torch.tensor([labels]),
    }
