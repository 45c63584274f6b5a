"""Packed language-modelling data whose batches are a pure function of (seed, step).

Training draws each sequence from a random offset of a token stream (documents joined by EOS), with the offsets
drawn from ``numpy.random.default_rng([seed, step])``. So step 123 of seed 0 is the same batch whether the run
started at step 0 or resumed from a checkpoint at step 100: resuming never replays or skips data, and a resumed
run ends with the same numbers as an uninterrupted one.

Evaluation uses fixed windows: contiguous ``seq_len + 1`` token chunks from *inside* single held-out documents
(never across a document boundary), so position ``i`` of a window always has ``i`` tokens of real context.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset


def join(docs_ids: list[np.ndarray], eos_id: int = 0) -> np.ndarray:
    """Documents' ids concatenated, each followed by EOS."""
    eos = np.asarray([eos_id], dtype=docs_ids[0].dtype)
    return np.concatenate([x for d in docs_ids for x in (d, eos)])


@dataclass(frozen=True)
class Stream:
    """A token stream to sample training sequences from."""

    tokens: np.ndarray

    def sample(self, rng: np.random.Generator, n: int, seq_len: int) -> np.ndarray:
        if len(self.tokens) < seq_len + 2:
            raise ValueError(f"seq_len: {seq_len} is too long for a stream of {len(self.tokens)} tokens")
        starts = rng.integers(0, len(self.tokens) - seq_len - 1, size=n)
        return np.stack([self.tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)


@dataclass(frozen=True)
class Batches:
    """Training batches over one or more streams mixed with fixed weights (``weights`` sum to 1).

    ``batch(step)`` is (B, T+1) int64: inputs are ``[:, :-1]``, targets ``[:, 1:]``. With several streams, each
    row picks its stream independently with probability ``weights`` (a data mixture at row granularity).
    ``dataclasses.replace(b, offset=k)`` continues ``b``'s sequence after k steps (a continued run sees exactly
    what a whole run would have seen next).
    """

    streams: tuple[Stream, ...]
    weights: tuple[float, ...]
    batch_size: int
    seq_len: int
    seed: int
    offset: int = 0  # step s serves the batch of step offset + s: a run that continues another's data order

    def batch(self, step: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step + self.offset])
        if len(self.streams) == 1:
            return torch.from_numpy(self.streams[0].sample(rng, self.batch_size, self.seq_len))
        which = rng.choice(len(self.streams), size=self.batch_size, p=np.asarray(self.weights))
        rows = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        for k, stream in enumerate(self.streams):
            idx = np.flatnonzero(which == k)
            if len(idx):
                rows[idx] = stream.sample(rng, len(idx), self.seq_len)
        return torch.from_numpy(rows)


@dataclass(frozen=True)
class MaskedBatches:
    """Training batches of rows drawn from a fixed pool with a loss mask (answer-only fine-tuning): step s is
    ``batch_size`` rows drawn with ``numpy.random.default_rng([seed, step + offset])``, as a dict ``{"ids": (B, T+1),
    "loss_mask": (B, T+1) bool}`` (True on the tokens that are targets). Pure in (seed, step), as ``Batches``."""

    ids: torch.Tensor
    loss_mask: torch.Tensor
    batch_size: int
    seed: int
    offset: int = 0

    def batch(self, step: int) -> dict:
        rows = np.random.default_rng([self.seed, step + self.offset]).integers(0, len(self.ids), self.batch_size)
        idx = torch.from_numpy(rows)
        return {"ids": self.ids[idx], "loss_mask": self.loss_mask[idx]}


def eval_windows(docs_ids: list[np.ndarray], n_windows: int, seq_len: int, stride: int | None = None) -> torch.Tensor:
    """``n_windows`` fixed (seq_len + 1)-token windows from inside documents, spread evenly over the documents
    long enough to hold one, and evenly within each. Deterministic: the same windows at every checkpoint.
    ``stride`` (default: the window, no overlap) is the step between candidate window starts; with a smaller one
    windows overlap, but a given position i still holds a different token in every window (starts differ), so
    per-position means stay averages of distinct tokens."""
    need = seq_len + 1
    stride = stride or need
    slots = [(i, (len(d) - need) // stride + 1) for i, d in enumerate(docs_ids) if len(d) >= need]
    total = sum(k for _, k in slots)
    if total < n_windows:
        raise ValueError(f"eval_windows: only {total} windows of {need} tokens (stride {stride}) fit in the held-out "
                         f"documents, {n_windows} were asked for")
    # all window positions, in document order; take n_windows of them evenly spaced
    positions = [(i, j * stride) for i, k in slots for j in range(k)]
    pick = np.linspace(0, len(positions) - 1, n_windows).round().astype(int)
    rows = [docs_ids[positions[p][0]][positions[p][1] : positions[p][1] + need] for p in pick]
    return torch.from_numpy(np.stack(rows).astype(np.int64))


class _StepBatches(IterableDataset):
    """Yields the batches of global steps ``start, start + 1, ..., stop - 1``. Iterable, so Lightning has no epoch
    length to reconcile with the progress it restores from a checkpoint: the stream simply continues."""

    def __init__(self, batches: Batches, start: int, stop: int):
        self.batches, self.start, self.stop = batches, start, stop

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield self.batches.batch(step)


class LMDataModule(L.LightningDataModule):
    """Training batches by step, and named fixed evaluation sets.

    ``train_dataloader`` is built after Lightning restores a checkpoint, so it starts at the restored global
    step: the batches after a resume are exactly those an uninterrupted run would have seen.
    """

    def __init__(self, batches: Batches, max_steps: int, eval_sets: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.batches, self.max_steps = batches, max_steps
        self.eval_sets = eval_sets or {}

    def train_dataloader(self):
        start = self.trainer.global_step if self.trainer is not None else 0
        return DataLoader(_StepBatches(self.batches, start, self.max_steps), batch_size=None)
