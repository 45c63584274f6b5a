"""Held-out evaluation by the byte, and training budgets in bytes: what makes models over different token
sequences of the same text comparable (a tokenizer paper, a vocabulary change, a data mixture).

- :class:`EvalSet` / :func:`eval_set`: held-out documents encoded whole and cut into windows in which every token
  is predicted exactly once, so the evaluated bytes are exactly the text's UTF-8 size under any encoding.
- :func:`bits_per_byte`: Σ nats over the predicted tokens / ln 2 / Σ their bytes; :func:`nats_per_token` (not
  comparable across encodings).
- :func:`steps_for_bytes` / :func:`eval_steps_at`: a run's step count from a byte budget, counted exactly, batch
  by batch, from the (seed, step)-pure batches; evaluation steps at equal fractions of the bytes.
- :func:`budget_docs`: a bounded sample of documents, each cut at a line end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from replicate.data.corpora import Document

LN2 = math.log(2.0)


def byte_lengths(token_lengths, special_ids) -> np.ndarray:
    """bytes(t) for every id: the UTF-8 bytes the token decodes to; special tokens (EOS) count 0 bytes."""
    out = np.asarray(token_lengths, dtype=np.int64).copy()
    out[list(special_ids)] = 0
    return out


@dataclass(frozen=True)
class EvalSet:
    """Held-out documents encoded whole, cut into windows in which every token is predicted exactly once.

    ``windows`` (W, T+1) int64; ``mask`` (W, T) bool marks the real predictions (False on right padding);
    ``n_bytes`` is the UTF-8 size of the evaluated text, equal to Σ bytes(target) over the mask."""

    windows: torch.Tensor
    mask: torch.Tensor
    n_bytes: int

    @property
    def targets(self) -> torch.Tensor:
        return self.windows[:, 1:]


def eval_set(docs_ids: list[np.ndarray], seq_len: int, eos_id: int, byte_len: np.ndarray) -> EvalSet:
    """Each document as [EOS, t_1, ..., t_n] (the EOS that precedes it in the training stream), split into
    consecutive windows of ``seq_len`` predictions overlapping by one token; the last window is right-padded
    with EOS and masked. Causal attention makes the padding invisible to the real positions."""
    rows, masks = [], []
    for ids in docs_ids:
        seq = np.concatenate([[eos_id], np.asarray(ids, dtype=np.int64)])
        for s in range(0, len(seq) - 1, seq_len):
            w = seq[s : s + seq_len + 1]
            m = np.ones(seq_len, dtype=bool)
            if len(w) < seq_len + 1:
                m[len(w) - 1 :] = False
                w = np.concatenate([w, np.full(seq_len + 1 - len(w), eos_id)])
            rows.append(w)
            masks.append(m)
    windows = torch.from_numpy(np.stack(rows).astype(np.int64))
    mask = torch.from_numpy(np.stack(masks))
    n_bytes = int((torch.from_numpy(byte_len)[windows[:, 1:]] * mask).sum())
    return EvalSet(windows, mask, n_bytes)


def bits_per_byte(loss_WT: torch.Tensor, ev: EvalSet, byte_len: np.ndarray) -> float:
    """Σ nats over the predicted tokens / ln 2 / Σ their bytes (= the evaluated text's UTF-8 size)."""
    m = ev.mask
    nats = float(loss_WT.double()[m].sum())
    n_bytes = int(torch.from_numpy(byte_len)[ev.targets][m].sum())
    return nats / LN2 / n_bytes


def nats_per_token(loss_WT: torch.Tensor, ev: EvalSet) -> float:
    """Mean loss per predicted token (nats). NOT comparable across encodings (different token sequences)."""
    return float(loss_WT.double()[ev.mask].mean())


def steps_for_bytes(batches, byte_len: np.ndarray, budget: int, max_steps: int = 10**8) -> np.ndarray:
    """Cumulative training bytes after each step, up to the first step at which they reach ``budget``: the run
    then takes ``len(result)`` steps. Bytes are those of the predicted (target) tokens, batch by batch."""
    cum, out = 0, []
    for s in range(max_steps):
        cum += int(byte_len[batches.batch(s)[:, 1:].numpy()].sum())
        out.append(cum)
        if cum >= budget:
            return np.asarray(out, dtype=np.int64)
    raise ValueError(f"train_bytes: {budget} bytes need more than {max_steps} steps")


def eval_steps_at(cum_bytes: np.ndarray, n: int) -> tuple[int, ...]:
    """Steps (1-based, as ``trainer.global_step`` after the step) at which 1/(n+1), ..., n/(n+1) of the final
    byte count have been seen; the final evaluation is separate."""
    total = cum_bytes[-1]
    steps = {int(np.searchsorted(cum_bytes, k / (n + 1) * total)) + 1 for k in range(1, n + 1)}
    return tuple(sorted(s for s in steps if 1 <= s < len(cum_bytes)))


def cut_text(text: str, max_bytes: int) -> str:
    """The first ``max_bytes`` bytes of ``text``, ending at a line end (whole text if it fits)."""
    if max_bytes <= 0 or len(text.encode("utf-8")) <= max_bytes:
        return text
    head = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    nl = head.rfind("\n")
    return head[: nl + 1] if nl > 0 else head


def budget_docs(docs, max_bytes: int) -> tuple[Document, ...]:
    """Documents in order, each cut to an equal share of ``max_bytes`` (at least 1,000 bytes, at a line end),
    until ``max_bytes`` are reached: a bounded sample spread over many documents."""
    share = max(1_000, max_bytes // max(1, len(docs)))
    out, total = [], 0
    for d in docs:
        if total >= max_bytes:
            break
        cut = Document(d.name, cut_text(d.text, share))
        out.append(cut)
        total += len(cut.text.encode("utf-8"))
    return tuple(out)
