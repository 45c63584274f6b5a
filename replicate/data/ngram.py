"""Count models: the bar a neural LM must clear before it is compared (DESIGN.md §7, PAPER_DONE item 10).

A model that has not beaten a smoothed bigram on its own training text has not learned the text yet, and a comparison
of two such models measures how fast each starts, not how well each models language. Both models here are fitted
on a training token stream and score held-out windows position by position, in nats, like
``replicate.models.lm.per_token_nll`` does for a network, so they sit in the same tables and buckets.

- :func:`unigram_nll`: add-one unigram, p(b) = (c(b) + 1) / (N + V).
- :func:`seen_windows`: the training windows a run consumed, for a count model fitted on exactly the run's data.
- :func:`count_bars` / :func:`learning_row`: a paper's bars and one run's validity columns
  (``replicate.claims.learning_validity`` turns a table of them into the check).
- :class:`KneserNeyBigram`: interpolated Kneser-Ney (Chen & Goodman 1999, "interpolated KN" with one discount),

      p(b | a)   = max(c(a, b) - D, 0) / c(a)  +  D · N1+(a, •) / c(a) · p_cont(b)        (c(a) > 0)
      p(b | a)   = p_cont(b)                                                                 (c(a) = 0)
      p_cont(b)  = max(N1+(•, b) - D, 0) / N1+(•, •)  +  D · |{b : N1+(•, b) > 0}| / N1+(•, •) · 1 / V

  with N1+(a, •) the number of distinct successors of a, N1+(•, b) the number of distinct predecessors of b, and
  the discount from the count-of-counts, D = n1 / (n1 + 2 n2) (Ney, Essen & Kneser 1994): nothing is tuned on the
  held-out text. Every probability is positive and each row sums to 1 (tested).
"""

from __future__ import annotations

import numpy as np
import torch


def _targets(windows) -> tuple[np.ndarray, np.ndarray]:
    w = windows.numpy() if isinstance(windows, torch.Tensor) else np.asarray(windows)
    return w[:, :-1].astype(np.int64), w[:, 1:].astype(np.int64)


def unigram_nll(stream: np.ndarray, vocab_size: int, windows) -> np.ndarray:
    """(W, T) nats of the add-one unigram of ``stream`` on the targets of ``windows`` (W, T+1)."""
    counts = np.bincount(np.asarray(stream, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    p = (counts + 1.0) / (counts.sum() + vocab_size)
    return -np.log(p[_targets(windows)[1]])


class KneserNeyBigram:
    """Interpolated Kneser-Ney bigram of a token stream (module docstring); :meth:`nll` scores held-out windows.
    ``stream``: one sequence (1-D), or rows of independent sequences (2-D, e.g. the training windows a run saw:
    no pair is counted across two rows)."""

    def __init__(self, stream: np.ndarray, vocab_size: int, discount: float | None = None):
        s = np.asarray(stream, dtype=np.int64)
        s = s[None, :] if s.ndim == 1 else s
        V = self.vocab_size = int(vocab_size)
        a_, b_ = s[:, :-1].reshape(-1), s[:, 1:].reshape(-1)
        keys, counts = np.unique(a_ * V + b_, return_counts=True)  # distinct bigrams and c(a, b)
        self.keys, self.counts = keys, counts.astype(np.float64)
        a, b = keys // V, keys % V
        if discount is None:
            n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
            discount = n1 / (n1 + 2 * n2) if n1 + n2 else 0.75
        self.discount = D = float(discount)
        self.c_a = np.bincount(a_, minlength=V).astype(np.float64)  # c(a) as a context
        self.succ_a = np.bincount(a, minlength=V).astype(np.float64)  # N1+(a, •)
        pred_b = np.bincount(b, minlength=V).astype(np.float64)  # N1+(•, b)
        total = pred_b.sum()  # N1+(•, •) = number of distinct bigrams
        self.p_cont = np.maximum(pred_b - D, 0) / total + D * (pred_b > 0).sum() / total / V

    def prob(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """p(b | a), elementwise over equal-shaped id arrays."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        q = a * self.vocab_size + b
        i = np.clip(np.searchsorted(self.keys, q), 0, len(self.keys) - 1)
        c_ab = np.where(self.keys[i] == q, self.counts[i], 0.0)
        c_a = self.c_a[a]
        seen = c_a > 0
        safe = np.where(seen, c_a, 1.0)
        first = np.maximum(c_ab - self.discount, 0) / safe
        weight = np.where(seen, self.discount * self.succ_a[a] / safe, 1.0)
        return np.where(seen, first, 0.0) + weight * self.p_cont[b]

    def nll(self, windows) -> np.ndarray:
        """(W, T) nats on the targets of ``windows`` (W, T+1), each predicted from the token before it."""
        a, b = _targets(windows)
        return -np.log(self.prob(a, b))


def seen_windows(batches, steps: int) -> np.ndarray:
    """(steps x B, T+1): every training window a run of ``steps`` steps on ``batches`` (a ``replicate.data.lm``
    ``Batches``, a pure function of (seed, step)) consumes: the data a count model must be fitted on to be compared
    with that run on "the same data"."""
    return np.concatenate([np.asarray(batches.batch(step)) for step in range(steps)])


def count_bars(stream: np.ndarray, vocab_size: int, windows, batches_of, steps: int, seeds) -> tuple:
    """The validity bars of a paper's runs on its held-out ``windows``, in nats per token: ``(unigram, bigram,
    seen)`` — the add-one unigram and the Kneser-Ney bigram of the whole training ``stream``, and ``seen[seed]``,
    the bigram of exactly the windows a run of ``steps`` steps on ``batches_of(seed)`` trains on (the bar: a network
    that has not beaten a bigram of its own data is still learning the text)."""
    unigram = float(unigram_nll(stream, vocab_size, windows).mean())
    bigram = float(KneserNeyBigram(stream, vocab_size).nll(windows).mean())
    seen = {s: float(KneserNeyBigram(seen_windows(batches_of(s), steps), vocab_size).nll(windows).mean())
            for s in seeds}
    return unigram, bigram, seen


def learning_row(loss: float, seed: int, unigram: float, bigram: float, seen: dict, vocab_size: int,
                 margin: float) -> dict:
    """One run's validity columns: the bars beside its final held-out ``loss``; ``learned`` (clearly below the
    unigram, by ``margin`` nats), ``beats_bigram`` (below the bigram of its own training windows: the condition),
    ``beats_full_bigram`` (below the whole split's: reported only, a run of less than an epoch need not),
    ``in_range`` ((0, ln V])."""
    return {"unigram": unigram, "seen_bigram": seen[seed], "full_bigram": bigram,
            "learned": bool(loss < unigram - margin), "beats_bigram": bool(loss < seen[seed]),
            "beats_full_bigram": bool(loss < bigram), "in_range": bool(0 < loss <= np.log(vocab_size))}
