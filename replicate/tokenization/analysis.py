"""Token-frequency analyses for LBPE (arXiv 2411.05504, spec Sec. 5 "Token-frequency analyses") and encoder speed.

Pure functions over token-id sequences, returning tidy (long-format) pandas DataFrames with an ``encoding``
column (e.g. ``"bpe"``, ``"lbpe"``), and plot helpers that are pure functions of those frames. The claims they
test (spec Sec. 2): under BPE long tokens occur far less often than short ones (claim 1); LBPE shifts occurrences
toward long tokens and flattens the distribution (claim 3).

1. ``occurrence_by_length``  total occurrences by token length L, and occurrences per vocabulary entry of length L
                             (= total / |{t in V : len(t) = L}|)                                  (analyses 1, 2)
2. ``rank_frequency``, ``frequency_summary``  Zipf curve; entropy and Gini coefficient as flatness (analysis 3)
3. ``vocab_utilisation``     fraction of V seen fewer than k times, k = 1, 10, 100                    (analysis 4)
4. ``compression``           bytes per token and total tokens                                         (analysis 5)
5. ``loss_by_token_length``  mean target loss and bits per byte by target-token length bucket          (analysis 6)
6. ``encoding_speed``        tokens/s and bytes/s of our Python encoders vs HF's Rust BPE (ours)

``token_lengths[i]`` is len(t_i) in bytes (``WordEncoder.token_lengths``); ``vocab_ids`` is V without special
tokens (``set(WordEncoder.vocab.values())``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "compression",
    "encoding_speed",
    "frequency_summary",
    "loss_by_token_length",
    "occurrence_by_length",
    "plot_encoding_speed",
    "plot_loss_by_token_length",
    "plot_occurrence_by_length",
    "plot_rank_frequency",
    "plot_vocab_utilisation",
    "rank_frequency",
    "segmentation_examples",
    "top_changed_tokens",
    "vocab_utilisation",
]

Encodings = Mapping[str, Sequence[int]]  # encoding name -> token ids of the same corpus


def _counts(ids: Sequence[int], size: int) -> np.ndarray:
    arr = np.asarray(ids, dtype=np.int64)
    return np.bincount(arr, minlength=size) if arr.size else np.zeros(size, dtype=np.int64)


def _vocab_ids(vocab_ids: Iterable[int] | None, size: int) -> np.ndarray:
    return np.arange(size) if vocab_ids is None else np.asarray(sorted(set(vocab_ids)), dtype=np.int64)


# 1. ---------------------------------------------------------------------------------------------------------------
def occurrence_by_length(
    encodings: Encodings, token_lengths: Sequence[int], vocab_ids: Iterable[int] | None = None
) -> pd.DataFrame:
    """Occurrences by token length, one row per (encoding, L) for every L present in V (analyses 1 and 2).

    Columns: encoding, token_len, n_vocab (|{t in V: len(t)=L}|), occurrences (sum of counts of those t), share
    (occurrences / all tokens of that encoding), mean_per_entry (occurrences / n_vocab).
    """
    lengths = np.asarray(token_lengths, dtype=np.int64)
    vid = _vocab_ids(vocab_ids, len(lengths))
    n_vocab = pd.Series(lengths[vid]).value_counts().sort_index()
    rows = []
    for name, ids in encodings.items():
        counts = _counts(ids, len(lengths))[vid]
        occ = pd.Series(counts).groupby(lengths[vid]).sum()
        total = counts.sum()
        for L, nv in n_vocab.items():
            o = int(occ.get(L, 0))
            rows.append((name, int(L), int(nv), o, o / total if total else 0.0, o / nv))
    return pd.DataFrame(rows, columns=["encoding", "token_len", "n_vocab", "occurrences", "share", "mean_per_entry"])


# 2. ---------------------------------------------------------------------------------------------------------------
def rank_frequency(encodings: Encodings) -> pd.DataFrame:
    """Zipf curve: columns encoding, rank (1 = most frequent), token_id, count, freq (count / all tokens).

    Only tokens that occur are listed; ties in count are ordered by token id.
    """
    frames = []
    for name, ids in encodings.items():
        c = Counter(ids)
        items = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))
        total = sum(c.values())
        frames.append(
            pd.DataFrame(
                {
                    "encoding": name,
                    "rank": np.arange(1, len(items) + 1),
                    "token_id": [k for k, _ in items],
                    "count": [v for _, v in items],
                    "freq": [v / total for _, v in items],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def gini(counts: Sequence[float]) -> float:
    """Gini coefficient of non-negative counts: 0 = all equal, (n-1)/n = all mass on one item."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, s = len(x), x.sum()
    if n == 0 or s == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(2.0 * (i * x).sum() / (n * s) - (n + 1) / n)


def frequency_summary(
    encodings: Encodings, vocab_size: int, vocab_ids: Iterable[int] | None = None
) -> pd.DataFrame:
    """Flatness of the token distribution (analysis 3): one row per encoding.

    Columns: encoding, n_tokens, n_distinct, entropy_bits (-sum p log2 p), gini (over all of V, unseen = 0).
    """
    vid = _vocab_ids(vocab_ids, vocab_size)
    rows = []
    for name, ids in encodings.items():
        counts = _counts(ids, vocab_size)
        n = counts.sum()
        p = counts[counts > 0] / n if n else np.zeros(0)
        rows.append((name, int(n), int((counts > 0).sum()), float(-(p * np.log2(p)).sum()), gini(counts[vid])))
    return pd.DataFrame(rows, columns=["encoding", "n_tokens", "n_distinct", "entropy_bits", "gini"])


# 3. ---------------------------------------------------------------------------------------------------------------
def vocab_utilisation(
    encodings: Encodings, vocab_size: int, vocab_ids: Iterable[int] | None = None, ks: Sequence[int] = (1, 10, 100)
) -> pd.DataFrame:
    """Fraction of V seen fewer than k times (analysis 4). Columns: encoding, k, n_vocab, n_below, frac_below."""
    vid = _vocab_ids(vocab_ids, vocab_size)
    rows = []
    for name, ids in encodings.items():
        counts = _counts(ids, vocab_size)[vid]
        for k in ks:
            nb = int((counts < k).sum())
            rows.append((name, int(k), len(vid), nb, nb / len(vid)))
    return pd.DataFrame(rows, columns=["encoding", "k", "n_vocab", "n_below", "frac_below"])


# 4. ---------------------------------------------------------------------------------------------------------------
def compression(
    encodings: Encodings, token_lengths: Sequence[int] | None = None, n_bytes: int | None = None
) -> pd.DataFrame:
    """Bytes per token and token count (analysis 5). Columns: encoding, n_tokens, n_bytes, bytes_per_token.

    ``n_bytes``: the corpus size in UTF-8 bytes; if omitted, the sum of token lengths of each encoding.
    """
    lengths = None if token_lengths is None else np.asarray(token_lengths, dtype=np.int64)
    if n_bytes is None and lengths is None:
        raise ValueError("give n_bytes or token_lengths")
    rows = []
    for name, ids in encodings.items():
        nb = int(lengths[np.asarray(ids, dtype=np.int64)].sum()) if n_bytes is None else int(n_bytes)
        rows.append((name, len(ids), nb, nb / len(ids) if len(ids) else math.nan))
    return pd.DataFrame(rows, columns=["encoding", "n_tokens", "n_bytes", "bytes_per_token"])


# 5. ---------------------------------------------------------------------------------------------------------------
def _bucket_labels(lengths: np.ndarray, bins: Sequence[int] | None) -> tuple[np.ndarray, list[str]]:
    if bins is None:
        uniq = sorted(set(lengths.tolist()))
        return lengths.copy(), [str(u) for u in uniq]
    edges = list(bins)
    if sorted(edges) != edges or len(set(edges)) != len(edges):
        raise ValueError(f"bins must be strictly increasing lower edges, got {bins}")
    idx = np.searchsorted(np.asarray(edges), lengths, side="right") - 1
    if (idx < 0).any():
        raise ValueError(f"token length below the first bin edge {edges[0]}")
    labels = []
    for i, lo in enumerate(edges):
        hi = edges[i + 1] - 1 if i + 1 < len(edges) else None
        labels.append(f"{lo}+" if hi is None else (str(lo) if hi == lo else f"{lo}-{hi}"))
    return idx, labels


def loss_by_token_length(
    results: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    token_lengths: Sequence[int],
    bins: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Target loss grouped by the length of the target token (analysis 6).

    ``results``: encoding -> (target token ids, per-target losses in nats), aligned. ``bins``: lower edges of
    length buckets (e.g. ``[1, 2, 3, 4, 6]`` gives 1, 2, 3, 4-5, 6+); default one bucket per length.
    Columns: encoding, bucket, n_targets, n_bytes, mean_loss (nats / token), bits_per_byte (sum loss / ln 2 /
    bytes, comparable across encodings), share_of_loss. Per-token loss is **not** comparable across encodings.
    """
    lengths_all = np.asarray(token_lengths, dtype=np.int64)
    frames = []
    for name, (ids, losses) in results.items():
        ids = np.asarray(ids, dtype=np.int64)
        losses = np.asarray(losses, dtype=np.float64)
        if ids.shape != losses.shape:
            raise ValueError(f"{name}: {ids.shape[0]} token ids but {losses.shape[0]} losses")
        L = lengths_all[ids]
        key, labels = _bucket_labels(L, bins)
        df = pd.DataFrame({"key": key, "bytes": L, "loss": losses})
        g = df.groupby("key").agg(n_targets=("loss", "size"), n_bytes=("bytes", "sum"), loss_sum=("loss", "sum"))
        order = sorted(set(L.tolist())) if bins is None else list(range(len(labels)))
        g = g.reindex(order, fill_value=0)
        total = losses.sum()
        frames.append(
            pd.DataFrame(
                {
                    "encoding": name,
                    "bucket": [str(k) for k in order] if bins is None else labels,
                    "n_targets": g["n_targets"].to_numpy(),
                    "n_bytes": g["n_bytes"].to_numpy(),
                    "mean_loss": (g["loss_sum"] / g["n_targets"].where(g["n_targets"] > 0)).to_numpy(),
                    "bits_per_byte": (g["loss_sum"] / math.log(2) / g["n_bytes"].where(g["n_bytes"] > 0)).to_numpy(),
                    "share_of_loss": (g["loss_sum"] / total if total else g["loss_sum"] * 0).to_numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# extras -------------------------------------------------------------------------------------------------------------
def top_changed_tokens(
    encodings: Encodings, id_to_token: Sequence[str | None], a: str = "bpe", b: str = "lbpe", n: int = 20
) -> pd.DataFrame:
    """Tokens whose counts change most from encoding ``a`` to ``b`` (spec Sec. 8: check the shift is not only
    whitespace runs). Columns: token_id, token, token_len, count_a, count_b, delta; sorted by |delta|."""
    ca, cb = Counter(encodings[a]), Counter(encodings[b])
    rows = [(t, id_to_token[t], len(id_to_token[t] or ""), ca[t], cb[t], cb[t] - ca[t]) for t in set(ca) | set(cb)]
    df = pd.DataFrame(rows, columns=["token_id", "token", "token_len", "count_a", "count_b", "delta"])
    df = df.reindex(df["delta"].abs().sort_values(ascending=False, kind="stable").index)
    return df.head(n).reset_index(drop=True)


def segmentation_examples(encoders: Mapping[str, object], text: str, n: int = 20) -> pd.DataFrame:
    """Most frequent words of ``text`` whose segmentation differs between the encoders (a Fig. 2-style table).

    ``encoders``: name -> ``WordEncoder``; words come from the first encoder's HF word split. Columns: word,
    count, then one column per encoder with its tokens joined by ``" | "`` (ByteLevel strings, Ġ = space).
    """
    encs = list(encoders.items())
    words = Counter(w for w in encs[0][1].words(text) if isinstance(w, str))
    rows = []
    for w, c in words.most_common():
        segs = [e.tokenize_word(w) for _, e in encs]
        if any(s != segs[0] for s in segs[1:]):
            rows.append((w, c, *[" | ".join(s) for s in segs]))
            if len(rows) == n:
                break
    return pd.DataFrame(rows, columns=["word", "count", *[k for k, _ in encs]])


# 6. ---------------------------------------------------------------------------------------------------------------
def encoding_speed(
    texts: Sequence[str],
    encoders: Mapping[str, Callable[[], Callable[[Sequence[str]], list[list[int]]]]],
    warm: Mapping[str, bool] | None = None,
    repeats: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> pd.DataFrame:
    """Encoding throughput on ``texts``, one row per (encoder, cache state).

    ``encoders``: name -> factory returning a fresh ``encode_batch`` callable (``lambda: make_encoder(tok,
    "scan").encode_batch``; for HF's Rust: ``lambda: lambda xs: [e.ids for e in tok.encode_batch(xs)]``).
    The first pass of a fresh encoder is ``cache="cold"``; if ``warm[name]`` (default True) a second pass on the
    same object is ``cache="warm"``; the best of ``repeats`` fresh runs is kept. Columns: encoder, cache,
    seconds, n_texts, n_bytes, n_tokens, tokens_per_s, bytes_per_s, slowdown (seconds / the fastest row's).
    """
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    rows = []
    for name, factory in encoders.items():
        best: dict[str, tuple[float, int]] = {}
        for _ in range(repeats):
            fn = factory()
            passes = ["cold", "warm"] if (warm or {}).get(name, True) else ["cold"]
            for state in passes:
                t0 = clock()
                out = fn(texts)
                dt = clock() - t0
                n_tok = sum(len(o) for o in out)
                if state not in best or dt < best[state][0]:
                    best[state] = (dt, n_tok)
        for state, (dt, n_tok) in best.items():
            rows.append((name, state, dt, len(texts), n_bytes, n_tok, n_tok / dt, n_bytes / dt))
    df = pd.DataFrame(
        rows, columns=["encoder", "cache", "seconds", "n_texts", "n_bytes", "n_tokens", "tokens_per_s", "bytes_per_s"]
    )
    df["slowdown"] = df["seconds"] / df["seconds"].min()
    return df


# plots (pure functions of the frames above) -------------------------------------------------------------------------
def _fig():
    from replicate import plotting

    fig, (ax,) = plotting.axes(1, 6.0, 4.0)
    return fig, ax


def plot_occurrence_by_length(df: pd.DataFrame, value: str = "occurrences", logy: bool = True):
    """Grouped bars of ``value`` (occurrences | share | mean_per_entry) by token length, one colour per encoding."""
    from replicate.plotting import grouped_bars

    fig, ax = _fig()
    grouped_bars(ax, df.pivot(index="token_len", columns="encoding", values=value), log=logy)
    ax.set_xlabel("token length (bytes)")
    names = {"occurrences": "occurrences", "share": "share of tokens", "mean_per_entry": "occurrences per entry"}
    ax.set_ylabel(names.get(value, value))
    fig.tight_layout()
    return fig


def plot_rank_frequency(df: pd.DataFrame):
    """Zipf curves (log-log frequency vs rank), one line per encoding."""
    fig, ax = _fig()
    for name, g in df.groupby("encoding", sort=False):
        ax.loglog(g["rank"].to_numpy(), g["freq"].to_numpy(), label=str(name))
    ax.set_xlabel("rank")
    ax.set_ylabel("frequency")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_vocab_utilisation(df: pd.DataFrame):
    """Grouped bars: fraction of V seen fewer than k times, per k and encoding."""
    from replicate.plotting import grouped_bars

    fig, ax = _fig()
    piv = df.pivot(index="k", columns="encoding", values="frac_below")
    grouped_bars(ax, piv, xlabels=[f"< {k}" for k in piv.index])
    ax.set_xlabel("occurrences in corpus")
    ax.set_ylabel("fraction of vocabulary")
    fig.tight_layout()
    return fig


def plot_loss_by_token_length(df: pd.DataFrame, value: str = "mean_loss"):
    """``value`` (mean_loss | bits_per_byte) by target-token length bucket, one line per encoding."""
    fig, ax = _fig()
    for name, g in df.groupby("encoding", sort=False):
        ax.plot(g["bucket"].astype(str).to_numpy(), g[value].to_numpy(), marker="o", label=str(name))
    ax.set_xlabel("target token length (bytes)")
    ax.set_ylabel({"mean_loss": "mean loss (nats / token)", "bits_per_byte": "bits per byte"}.get(value, value))
    ax.legend()
    fig.tight_layout()
    return fig


def plot_encoding_speed(df: pd.DataFrame):
    """Horizontal bars of MB/s per (encoder, cache)."""
    fig, ax = _fig()
    labels = [f"{e} ({c})" for e, c in zip(df["encoder"], df["cache"])]
    ax.barh(labels, df["bytes_per_s"].to_numpy() / 1e6)
    ax.set_xlabel("MB / s")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig
