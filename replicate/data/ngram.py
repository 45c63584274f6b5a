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
- :class:`KneserNeyTrigram`: interpolated Kneser-Ney trigram (the same recursion one order up),

      p(c | a, b) = max(c(a, b, c) - D3, 0) / c(a, b, •)  +  D3 · N1+(a, b, •) / c(a, b, •) · p2(c | b)   (c(a, b, •) > 0)
      p(c | a, b) = p2(c | b)                                                                              (otherwise)
      p2(c | b)   = max(N1+(•, b, c) - D2, 0) / N1+(•, b, •)  +  D2 · |{c : N1+(•, b, c) > 0}| / N1+(•, b, •) · p1(c)
      p1(c)       = max(N1+(•, c) - D1, 0) / N1+(•, •)  +  D1 · |{c : N1+(•, c) > 0}| / N1+(•, •) · 1 / V

  (p2(c | b) = p1(c) where N1+(•, b, •) = 0): the middle order counts the distinct left contexts of a bigram, the
  lowest the distinct left neighbours of a token, each discount from its own count-of-counts (D3 of the trigram
  counts, D2 of N1+(•, b, c), D1 of N1+(•, c)). Positive, and each row sums to 1 (tested).
- :func:`document_nll`: a count model's nats on whole documents, each preceded by EOS as in a training stream
  (every token predicted from its full context, which windows cut at their first column).
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


def _discount(counts: np.ndarray) -> float:
    """Ney's estimate from the count-of-counts, n1 / (n1 + 2 n2) (0.75 when neither occurs)."""
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    return n1 / (n1 + 2 * n2) if n1 + n2 else 0.75


def _lookup(keys: np.ndarray, values: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``values`` at the positions of ``q`` in the sorted ``keys``; 0 where ``q`` is absent."""
    if len(keys) == 0:
        return np.zeros(np.shape(q))
    i = np.clip(np.searchsorted(keys, q), 0, len(keys) - 1)
    return np.where(keys[i] == q, values[i], 0.0)


class KneserNeyTrigram:
    """Interpolated Kneser-Ney trigram of a token stream (module docstring). ``stream``: one sequence (1-D) or rows
    of independent sequences (2-D: no n-gram is counted across two rows). ``discounts``: (D1, D2, D3), else each
    from its count-of-counts. :meth:`prob` is p(c | a, b); :meth:`prob2` the middle order p2(c | b)."""

    def __init__(self, stream: np.ndarray, vocab_size: int, discounts: tuple | None = None):
        s = np.asarray(stream, dtype=np.int64)
        s = s[None, :] if s.ndim == 1 else s
        V = self.vocab_size = int(vocab_size)
        # trigram counts c(a, b, c), keyed (a·V + b)·V + c
        tri = ((s[:, :-2] * V + s[:, 1:-1]) * V + s[:, 2:]).reshape(-1)
        self.k3, c3 = np.unique(tri, return_counts=True)
        self.c3 = c3.astype(np.float64)
        # per context (a, b): c(a, b, •) and N1+(a, b, •)
        self.kab, inv = np.unique(self.k3 // V, return_inverse=True)
        self.c_ab = np.bincount(inv, weights=self.c3)
        self.n_ab = np.bincount(inv).astype(np.float64)
        # middle order: N1+(•, b, c), the distinct left contexts of each bigram (b, c), over distinct trigrams
        self.kbc, cbc = np.unique(self.k3 % (V * V), return_counts=True)
        self.cbc = cbc.astype(np.float64)
        self.kb, invb = np.unique(self.kbc // V, return_inverse=True)
        self.n_b = np.bincount(invb, weights=self.cbc)  # N1+(•, b, •)
        self.succ_b = np.bincount(invb).astype(np.float64)  # |{c : N1+(•, b, c) > 0}|
        # lowest order: N1+(•, c), the distinct left neighbours of c, over distinct bigrams
        big = np.unique((s[:, :-1] * V + s[:, 1:]).reshape(-1))
        pred = np.bincount(big % V, minlength=V).astype(np.float64)
        D1, D2, D3 = discounts if discounts is not None else (_discount(pred[pred > 0]), _discount(cbc), _discount(c3))
        self.discounts = (float(D1), float(D2), float(D3))
        total = pred.sum()
        self.p1 = np.maximum(pred - D1, 0) / total + D1 * (pred > 0).sum() / total / V

    def prob2(self, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        """The middle order p2(c | b), elementwise."""
        b, c = np.asarray(b, dtype=np.int64), np.asarray(c, dtype=np.int64)
        D2 = self.discounts[1]
        n_b = _lookup(self.kb, self.n_b, b)
        seen = n_b > 0
        safe = np.where(seen, n_b, 1.0)
        first = np.maximum(_lookup(self.kbc, self.cbc, b * self.vocab_size + c) - D2, 0) / safe
        weight = np.where(seen, D2 * _lookup(self.kb, self.succ_b, b) / safe, 1.0)
        return np.where(seen, first, 0.0) + weight * self.p1[c]

    def prob(self, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        """p(c | a, b), elementwise over equal-shaped id arrays."""
        a, b, c = (np.asarray(x, dtype=np.int64) for x in (a, b, c))
        V, D3 = self.vocab_size, self.discounts[2]
        ab = a * V + b
        c_ab = _lookup(self.kab, self.c_ab, ab)
        seen = c_ab > 0
        safe = np.where(seen, c_ab, 1.0)
        first = np.maximum(_lookup(self.k3, self.c3, ab * V + c) - D3, 0) / safe
        weight = np.where(seen, D3 * _lookup(self.kab, self.n_ab, ab) / safe, 1.0)
        return np.where(seen, first, 0.0) + weight * self.prob2(b, c)

    def nll(self, windows) -> np.ndarray:
        """(W, T) nats on the targets of ``windows`` (W, T+1): each from the two tokens before it, the first of a
        window from the one before it only (the middle order; :func:`document_nll` gives every token its context)."""
        w = windows.numpy() if isinstance(windows, torch.Tensor) else np.asarray(windows)
        w = w.astype(np.int64)
        out = np.empty((w.shape[0], w.shape[1] - 1))
        out[:, 0] = -np.log(self.prob2(w[:, 0], w[:, 1]))
        out[:, 1:] = -np.log(self.prob(w[:, :-2], w[:, 1:-1], w[:, 2:]))
        return out


def document_nll(model, docs_ids, eos_id: int) -> np.ndarray:
    """Nats of every token of ``docs_ids`` (one id array per document, concatenated in order), each document
    preceded by EOS as in a training stream: a :class:`KneserNeyBigram` predicts a document's first token from EOS,
    a :class:`KneserNeyTrigram` from (EOS, EOS), the context of a stream's start (which no trigram of a joined
    training stream holds, so it backs off to the middle order, p2(· | EOS))."""
    out = []
    for d in docs_ids:
        d = np.asarray(d, dtype=np.int64)
        if isinstance(model, KneserNeyTrigram):
            s = np.concatenate([[eos_id, eos_id], d])
            out.append(-np.log(model.prob(s[:-2], s[1:-1], s[2:])))
        else:
            s = np.concatenate([[eos_id], d])
            out.append(-np.log(model.prob(s[:-1], s[1:])))
    return np.concatenate(out) if out else np.zeros(0)


def seen_windows(batches, steps: int) -> np.ndarray:
    """(steps x B, T+1): every training window a run of ``steps`` steps on ``batches`` (a ``replicate.data.lm``
    ``Batches``, a pure function of (seed, step)) consumes: the data a count model must be fitted on to be compared
    with that run on "the same data". A batch may be a dict (``ids`` with a loss mask or weights): its ids count."""
    rows = [batches.batch(step) for step in range(steps)]
    return np.concatenate([np.asarray(r["ids"] if isinstance(r, dict) else r) for r in rows])


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
