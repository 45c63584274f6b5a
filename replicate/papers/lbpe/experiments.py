"""LBPE's experiments, as one plan (``run_experiments(cfg)`` -> the bundle ``report.py`` reads).

Steps, in order (the notebook runs one per cell):

- ``data``: a byte-level BPE trained on the training documents; the BPE, LBPE and other arms' encodings
  (``extra_arms``: longest-prefix match, the merge-loop reading) of the training, held-out and evaluation text (the
  same bytes, exactly), the training streams and the evaluation sets.
- ``frequency``, ``freq_boot``, ``single_bytes``, ``tie_break_check``, ``ablation``, ``segmentation``: the
  frequency analyses of spec §5 on every encoding, their bootstrap over documents (the frequency claims, per-length
  ratios) and over byte blocks of the held-out text (the three flatness metrics), where single-byte tokens sit in
  their words, the length-group ratios under both tie-breaks, the vocabulary-size ablation (table2) and the words
  segmented differently.
- ``lm_runs``, ``loss_by_length``: one LM per (encoding, seed) at equal training bytes on byte-aligned batches
  (the same text in the same order for every encoding), scored in bits per byte, with the count-model bars of
  validity; the loss by target-token length.
- ``count_arm``: the deterministic count-model arm (ours): Kneser-Ney bigrams and trigrams at equal training
  bytes, all held-out text, a paired block bootstrap and the gap of every held-out play.
- ``cpt``: continual pre-training, BPE then BPE or LBPE data (paper scale; on at smoke to test the path).
- ``scaffold_data``, ``scaffold_summary``, ``scaffold_lm``: Scaffold-BPE and LBPE on it (Table 4; its LMs at
  paper scale, on at smoke).
- ``speed``, ``complexity``: encoding throughput against HF's Rust BPE, and the O(m·|T|) claim (counted operations
  and median timings of LBPE, heap BPE and naive BPE; the m sweep).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from replicate.data import corpora, lm, tokenizer
from replicate.data.evaluation import (
    LN2,
    bits_per_byte,
    budget_docs,
    byte_lengths,
    cut_text,
    eval_set,
    eval_steps_at,
    nats_per_token,
    steps_for_bytes,
)
from replicate.experiments import Plan
from replicate.models.lm import LRMap
from replicate.data.ngram import KneserNeyBigram, KneserNeyTrigram, document_nll, seen_windows, unigram_nll
from replicate.models.trainer import TrainSpec, continued, prefetch, train
from replicate.papers.lbpe import ENCODINGS, PAPER_ID, LBPEConfig
from replicate.papers.lbpe.baselines import HeapBPEEncoder, MaxMatchEncoder, count_ops
from replicate.papers.lbpe.method import lbpe_encode_word, make_encoder, make_scaffold_encoder
from replicate.tokenization import analysis as A
from replicate.tokenization.scaffold import train_scaffold_bpe
from replicate.tokenization.words import bpe_encode_word

plan = Plan(PAPER_ID)


# ==================================================================================================== data


def load_corpus(cfg: LBPEConfig) -> tuple[corpora.Document, ...]:
    docs = corpora.huggingface(cfg.corpus[3:], limit=cfg.hf_docs) if cfg.corpus.startswith("hf:") \
        else corpora.load(cfg.corpus)
    if cfg.doc_max_bytes:
        docs = tuple(corpora.Document(d.name, cut_text(d.text, cfg.doc_max_bytes)) for d in docs)
    return docs


@dataclass(frozen=True)
class Data:
    tok: object
    encoders: dict  # encoding -> WordEncoder (ours; "bpe" equals HF's ids)
    byte_len: np.ndarray  # (ids,) bytes per id, EOS = 0
    train_docs: tuple
    heldout_docs: tuple
    eval_docs: tuple  # held-out documents cut to the evaluation budget
    train_ids: dict  # encoding -> list of per-document id arrays
    heldout_ids: dict
    eval_ids: dict
    streams: dict  # encoding -> training stream (documents joined by EOS)
    eval_sets: dict  # encoding -> EvalSet
    eos_id: int
    description: str
    n_ids: int  # the model's vocabulary (embedding rows): every id an encoder can emit is below it


def lbpe_name(cfg: LBPEConfig) -> str:
    return f"lbpe-{cfg.lbpe_mode}-{cfg.tie_break}"


def encoding_tag(cfg: LBPEConfig, encoding: str) -> str:
    """What fixes an encoding given its tokenizer: names its token cache and its training runs."""
    if encoding == "scaffold_lbpe":
        return f"scaffold_{lbpe_name(cfg)}-{cfg.scaffold_compose}"
    return {"lbpe": lbpe_name(cfg)}.get(encoding, encoding)


def arm_encoder(tok, arm: str):
    """The encoder of one of the other arms (spec §4.3): ``maxmatch`` or ``lbpe_merge`` (variant B)."""
    return MaxMatchEncoder(tok) if arm == "maxmatch" else make_encoder(tok, mode="merge")


def _tokenizer_name(cfg: LBPEConfig) -> str:
    return f"lbpe-{cfg.corpus.replace('/', '_')}"


def _encode_all(cfg: LBPEConfig, tok, encs: dict, train_docs, heldout_docs, n_ids: int, description: str,
                rust: tuple = (), cache_suffix: str = "") -> Data:
    """Every encoding of the training, held-out and evaluation documents, and the evaluation sets. Encodings in
    ``rust`` go through HF's Rust encoder (ids equal to our Python rank BPE's, tested). Token caches are named by
    :func:`encoding_tag` plus ``cache_suffix``."""

    def enc(e, docs):
        return tokenizer.encode_documents(tok, docs, encoder=None if e in rust else encs[e].encode_batch,
                                          encoder_name=encoding_tag(cfg, e) + cache_suffix)

    eval_docs = budget_docs(heldout_docs, cfg.eval_max_bytes)
    eos = tok.token_to_id(tokenizer.EOS)
    enc0 = next(iter(encs.values()))
    byte_len = byte_lengths(enc0.token_lengths, enc0.special_ids)
    train_ids = {e: enc(e, train_docs) for e in encs}
    eval_ids = {e: enc(e, eval_docs) for e in encs}
    eval_sets = {e: eval_set(eval_ids[e], cfg.seq_len, eos, byte_len) for e in encs}
    text_bytes = sum(len(d.text.encode("utf-8")) for d in eval_docs)
    for e, ev in eval_sets.items():  # the same bytes under every encoding, exactly
        if ev.n_bytes != text_bytes:
            raise RuntimeError(f"{e}: evaluation covers {ev.n_bytes} bytes, the text has {text_bytes}")
    return Data(
        tok=tok, encoders=encs, byte_len=byte_len, train_docs=train_docs, heldout_docs=heldout_docs,
        eval_docs=eval_docs, train_ids=train_ids, heldout_ids={e: enc(e, heldout_docs) for e in encs},
        eval_ids=eval_ids, streams={e: lm.join(train_ids[e], eos) for e in encs}, eval_sets=eval_sets,
        eos_id=eos, n_ids=n_ids,
        description=description + f";train={corpora.fingerprint(train_docs)};eval={corpora.fingerprint(eval_docs)}",
    )


@plan.step
def data(cfg: LBPEConfig) -> Data:
    """Tokenizer trained on the training documents; both encodings of train, held-out and evaluation text."""
    train_docs, heldout_docs = corpora.split(load_corpus(cfg))
    tok = tokenizer.train_bpe(train_docs, cfg.vocab_size, name=_tokenizer_name(cfg))
    encs = {"bpe": make_encoder(tok, mode="bpe"), "lbpe": make_encoder(tok, mode=cfg.lbpe_mode, tie_break=cfg.tie_break)}
    encs.update({a: arm_encoder(tok, a) for a in cfg.extra_arms})
    return _encode_all(cfg, tok, encs, train_docs, heldout_docs, tok.get_vocab_size(),
                       f"tok=bpe{cfg.vocab_size}:{tokenizer.tokenizer_fingerprint(tok)}", rust=("bpe",))


@plan.step
def scaffold_data(cfg: LBPEConfig, data: Data) -> Data:
    """Scaffold-BPE (``replicate.tokenization.scaffold``) trained on the same training documents with as many usable
    tokens as BPE, and its two encodings: Scaffold-BPE (rank BPE, scaffolds demolished) and Scaffold-BPE + LBPE
    (``scaffold_compose``). Usable ids are ``range(vocab_size)``, so the models have BPE's embedding size."""
    sb = train_scaffold_bpe(data.train_docs, cfg.vocab_size, name=_tokenizer_name(cfg), unflag=cfg.scaffold_unflag)
    encs = {"scaffold_bpe": make_scaffold_encoder(sb, "bpe"),
            "scaffold_lbpe": make_scaffold_encoder(sb, cfg.lbpe_mode, compose=cfg.scaffold_compose,
                                                   tie_break=cfg.tie_break)}
    tag = f"unflag={cfg.scaffold_unflag}"
    return _encode_all(cfg, sb.tokenizer, encs, data.train_docs, data.heldout_docs, sb.vocab_size,
                       f"tok=scaffold_bpe{cfg.vocab_size}:{tag}:{tokenizer.tokenizer_fingerprint(sb.tokenizer)}",
                       cache_suffix=f"-{tag}")


# ===================================================================================== frequency analyses


def freq_ids(cfg: LBPEConfig, data: Data) -> dict[str, list[np.ndarray]]:
    """Per-document ids of the text the frequency analyses count (``freq_corpus``)."""
    pick = {"train": (data.train_ids,), "heldout": (data.heldout_ids,), "all": (data.train_ids, data.heldout_ids)}
    return {e: [d for src in pick[cfg.freq_corpus] for d in src[e]] for e in data.encoders}


def _flat(docs_ids: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(d, dtype=np.int64) for d in docs_ids])


@plan.step
def frequency(cfg: LBPEConfig, data: Data) -> dict[str, pd.DataFrame]:
    """Analyses 1-5 of spec §5 on the same text and vocabulary under both encodings (tidy frames)."""
    ids = {e: _flat(d) for e, d in freq_ids(cfg, data).items()}
    enc = data.encoders["bpe"]
    vocab_ids = sorted(enc.vocab.values())
    lengths = enc.token_lengths
    n_bytes = int(data.byte_len[ids["bpe"]].sum())
    return {
        "occurrence": A.occurrence_by_length(ids, lengths, vocab_ids),
        "rank_frequency": A.rank_frequency(ids),
        "summary": A.frequency_summary(ids, enc.vocab_size, vocab_ids),
        "utilisation": A.vocab_utilisation(ids, enc.vocab_size, vocab_ids, ks=cfg.util_ks),
        "compression": A.compression(ids, n_bytes=n_bytes),
        "top_changed": A.top_changed_tokens(ids, enc.id_to_token, "bpe", "lbpe", n=25),
    }


def block_counts(docs_ids: list[np.ndarray], size: int, n_blocks: int = 200) -> np.ndarray:
    """(n_blocks', size) token counts of contiguous groups of documents (one document per block when there are
    at most ``n_blocks`` documents): the resampling unit of the frequency claims' bootstrap."""
    groups = np.array_split(np.arange(len(docs_ids)), min(n_blocks, len(docs_ids)))
    return np.stack([np.bincount(_flat([docs_ids[i] for i in g]) if len(g) else np.zeros(0, np.int64),
                                 minlength=size) for g in groups])


def length_groups(token_lengths, vocab_ids, long_min: int) -> dict[str, np.ndarray]:
    """Vocabulary ids by length group: single bytes, short multi-byte (2..long_min-1), long (>= long_min)."""
    L = np.asarray(token_lengths)
    v = np.asarray(sorted(vocab_ids))
    return {"single": v[L[v] == 1], "short": v[(L[v] >= 2) & (L[v] < long_min)], "long": v[L[v] >= long_min]}


def entropy_bits(counts: np.ndarray) -> float:
    """Entropy of the token distribution, -Σ p log2 p (higher = flatter)."""
    c = np.asarray(counts, dtype=np.float64)
    p = c[c > 0] / c.sum()
    return float(-(p * np.log2(p)).sum())


def frequency_stats(counts: dict[str, np.ndarray], groups: dict[str, np.ndarray], other: str = "lbpe",
                    lengths: np.ndarray | None = None) -> dict[str, float]:
    """The numbers behind claims C1 and C3 from total counts per id of BPE and ``other`` (LBPE by default).

    Flatness (C3-flat) is read on three metrics that express it (DESIGN §7, metrics that agree), each ``other``
    minus BPE: the Gini coefficient over V (negative = flatter), the entropy in bits (positive = flatter) and the
    number of vocabulary entries never emitted (negative = flatter). ``lengths`` (bytes per id) adds the
    occurrence ratio of every token length (``len_ratio_<L>``, fig3's intervals)."""
    b, l = counts["bpe"], counts[other]
    vid = np.concatenate(list(groups.values()))
    short_all = np.concatenate([groups["single"], groups["short"]])
    out = {
        # C1: BPE occurrences per vocabulary entry, short (< long_min bytes) over long
        "c1_ratio": (b[short_all].sum() / len(short_all)) / max(b[groups["long"]].sum() / len(groups["long"]), 1e-12),
        "gini_delta": A.gini(l[vid]) - A.gini(b[vid]),
        "entropy_delta": entropy_bits(l[vid]) - entropy_bits(b[vid]),
        "unused_delta": float((l[vid] == 0).sum() - (b[vid] == 0).sum()),
        # the paper's coarser grouping: every token shorter than long_min bytes (single bytes included)
        "ratio_lt_long": l[short_all].sum() / max(b[short_all].sum(), 1),
    }
    for g, ids in groups.items():
        out[f"ratio_{g}"] = l[ids].sum() / max(b[ids].sum(), 1)
    if lengths is not None:
        L = np.asarray(lengths)[vid]
        bl = np.bincount(L, weights=b[vid].astype(np.float64))
        ll = np.bincount(L, weights=l[vid].astype(np.float64), minlength=len(bl))
        for k in np.unique(L):
            out[f"len_ratio_{int(k)}"] = ll[k] / bl[k] if bl[k] > 0 else float("nan")
    return out


@dataclass(frozen=True)
class FrequencyBootstrap:
    point: dict  # frequency_stats on the whole text
    boot: pd.DataFrame  # one row per resample
    arms: pd.DataFrame  # the point statistics of every other encoding against BPE (extra_arms table)
    heldout_point: dict  # frequency_stats on the held-out text only (C3-flat: the text BPE was not trained on)
    heldout_boot: pd.DataFrame  # its paired bootstrap over blocks of ``block_bytes`` of the held-out text
    heldout_blocks: int


def byte_block_counts(docs_ids: list[np.ndarray], byte_len: np.ndarray, block_bytes: int, size: int) -> np.ndarray:
    """(n_blocks, size) token counts of consecutive ``block_bytes``-byte blocks of the text ``docs_ids`` encode (a
    token belongs to the block its first byte falls in): the same text gives the same blocks under every encoding,
    so resampling blocks is paired across encodings."""
    ids = _flat(docs_ids)
    block = token_starts(ids, byte_len) // block_bytes
    n = int(byte_len[ids].sum()) // block_bytes + 1
    out = np.zeros((n, size), dtype=np.int64)
    np.add.at(out, (block, ids), 1)
    return out


@plan.step
def freq_boot(cfg: LBPEConfig, data: Data) -> FrequencyBootstrap:
    """Point values of :func:`frequency_stats` and their bootstrap over documents (blocks resampled with
    replacement, the same resample for both encodings); the point values of every other arm beside them."""
    enc = data.encoders["bpe"]
    groups = length_groups(enc.token_lengths, enc.vocab.values(), cfg.long_min_len)
    lengths = np.asarray(enc.token_lengths)
    ids = freq_ids(cfg, data)
    blocks = {e: block_counts(ids[e], enc.vocab_size) for e in ENCODINGS}
    point = frequency_stats({e: b.sum(0) for e, b in blocks.items()}, groups, lengths=lengths)
    rng = np.random.default_rng(cfg.seed)
    n = len(blocks["bpe"])
    rows = []
    for _ in range(cfg.n_boot):
        w = np.bincount(rng.integers(0, n, n), minlength=n)
        rows.append(frequency_stats({e: w @ b for e, b in blocks.items()}, groups, lengths=lengths))
    totals = {e: np.bincount(_flat(x), minlength=enc.vocab_size) for e, x in ids.items()}
    arms = []
    for e in data.encoders:
        if e == "bpe":
            continue
        st = frequency_stats(totals, groups, other=e)
        arms.append({"encoding": e, "tokens": int(totals[e].sum()), "long_ratio": st["ratio_long"],
                     "short_ratio": st["ratio_short"], "single_ratio": st["ratio_single"],
                     "lt_long_ratio": st["ratio_lt_long"], "gini_delta": st["gini_delta"],
                     "entropy_delta_bits": st["entropy_delta"], "unused_delta": int(st["unused_delta"])})
    hb = {e: byte_block_counts(data.heldout_ids[e], data.byte_len, cfg.block_bytes, enc.vocab_size)
          for e in ENCODINGS}
    h_point = frequency_stats({e: b.sum(0) for e, b in hb.items()}, groups, lengths=lengths)
    nh = len(hb["bpe"])
    h_rows = []
    for _ in range(cfg.n_boot):
        w = np.bincount(rng.integers(0, nh, nh), minlength=nh)
        h_rows.append(frequency_stats({e: w @ b for e, b in hb.items()}, groups))
    return FrequencyBootstrap(point, pd.DataFrame(rows), pd.DataFrame(arms), h_point, pd.DataFrame(h_rows), nh)


@plan.step
def single_bytes(cfg: LBPEConfig, data: Data) -> pd.DataFrame:
    """Where the single-byte tokens of each encoding sit inside their pre-token (C3-single's mechanism), counted over
    every word occurrence of the frequency text: ``whole`` (a one-byte word), ``first`` / ``last`` / ``interior``
    unit of a longer word, and of the ``first`` ones how many are the word's leading space (Ġ). The LBPE scan is not
    anchored at the word start: a long vocabulary string found inside the word can leave its first unit (often the
    space) or its last ones stranded, and at equal length the leftmost window wins."""
    words: dict[str, int] = {}
    pick = {"train": (data.train_docs,), "heldout": (data.heldout_docs,),
            "all": (data.train_docs, data.heldout_docs)}[cfg.freq_corpus]
    enc0 = data.encoders["bpe"]
    for docs in pick:
        for d in docs:
            for w in enc0.words(d.text):
                if isinstance(w, str):
                    words[w] = words.get(w, 0) + 1
    rows = []
    for e in ENCODINGS:
        enc = data.encoders[e]
        tally = {"whole": 0, "first": 0, "first_space": 0, "interior": 0, "last": 0}
        for w, c in words.items():
            toks = enc.tokenize_word(w)
            if len(toks) == 1:
                tally["whole"] += c * (len(toks[0]) == 1)
                continue
            for i, t in enumerate(toks):
                if len(t) != 1:
                    continue
                pos = "first" if i == 0 else "last" if i == len(toks) - 1 else "interior"
                tally[pos] += c
                if pos == "first" and t == "Ġ":
                    tally["first_space"] += c
        rows.append({"encoding": e, **tally, "total": tally["whole"] + tally["first"] + tally["interior"]
                     + tally["last"]})
    return pd.DataFrame(rows)


@plan.step
def tie_break_check(cfg: LBPEConfig, data: Data) -> pd.DataFrame:
    """The UNCONFIRMED tie-break (spec §3.4) against the length-group ratios: the held-out plays encoded by LBPE
    under both ``tie_break`` readings, occurrences of single bytes, short and long tokens over BPE's."""
    enc0 = data.encoders["bpe"]
    groups = length_groups(enc0.token_lengths, enc0.vocab.values(), cfg.long_min_len)
    texts = [d.text for d in data.heldout_docs]
    counts = {"bpe": np.bincount(_flat(data.heldout_ids["bpe"]), minlength=enc0.vocab_size)}
    rows = []
    for tb in ("leftmost", "rank"):
        ids = data.heldout_ids["lbpe"] if (cfg.lbpe_mode, tb) == ("scan", cfg.tie_break) else \
            [np.asarray(x) for x in make_encoder(data.tok, mode="scan", tie_break=tb).encode_batch(texts)]
        st = frequency_stats({**counts, "lbpe": np.bincount(_flat(ids), minlength=enc0.vocab_size)}, groups)
        rows.append({"tie_break": tb, "default": tb == cfg.tie_break, "single_ratio": st["ratio_single"],
                     "short_ratio": st["ratio_short"], "long_ratio": st["ratio_long"]})
    return pd.DataFrame(rows)


@plan.step
def ablation(cfg: LBPEConfig, data: Data) -> pd.DataFrame:
    """table2: the frequency shift and compression for each vocabulary size (tokenizer trained on the same
    training documents; counts on up to ``ablation_max_bytes`` of the held-out documents)."""
    rows = []
    for v in cfg.ablation_vocab_sizes:
        tok = tokenizer.train_bpe(data.train_docs, v, name=_tokenizer_name(cfg))
        encs = {"bpe": make_encoder(tok, mode="bpe"), "lbpe": make_encoder(tok, mode=cfg.lbpe_mode,
                                                                          tie_break=cfg.tie_break)}
        texts = [d.text for d in budget_docs(data.heldout_docs, cfg.ablation_max_bytes)]
        ids = {e: _flat([np.asarray(x) for x in encs[e].encode_batch(texts)])
               for e in ENCODINGS}
        groups = length_groups(encs["bpe"].token_lengths, encs["bpe"].vocab.values(), cfg.long_min_len)
        counts = {e: np.bincount(ids[e], minlength=encs["bpe"].vocab_size) for e in ENCODINGS}
        st = frequency_stats(counts, groups)
        bl = byte_lengths(encs["bpe"].token_lengths, encs["bpe"].special_ids)
        nb = int(bl[ids["bpe"]].sum())
        util = {e: float((counts[e][list(encs["bpe"].vocab.values())] == 0).mean()) for e in ENCODINGS}
        rows.append({"vocab_size": v, "max_token_len": encs["bpe"].max_len,
                     "bytes_per_token_bpe": nb / len(ids["bpe"]), "bytes_per_token_lbpe": nb / len(ids["lbpe"]),
                     "long_ratio_lbpe_over_bpe": st["ratio_long"], "short_ratio_lbpe_over_bpe": st["ratio_short"],
                     "single_ratio_lbpe_over_bpe": st["ratio_single"],
                     "lt_long_ratio_lbpe_over_bpe": st["ratio_lt_long"], "gini_lbpe_minus_bpe": st["gini_delta"],
                     "entropy_lbpe_minus_bpe_bits": st["entropy_delta"],
                     "unused_frac_bpe": util["bpe"], "unused_frac_lbpe": util["lbpe"]})
    return pd.DataFrame(rows)


@plan.step
def segmentation(cfg: LBPEConfig, data: Data) -> pd.DataFrame:
    """fig2's content: the spec's worked example (toy vocabulary) and frequent held-out words segmented
    differently by BPE and LBPE (ByteLevel strings, Ġ = space)."""
    ranks = {("a", "b"): 0, ("b", "c"): 1, ("bc", "d"): 2}
    vocab = {"a": -1, "b": -1, "c": -1, "d": -1, "x": -1, "ab": 0, "bc": 1, "bcd": 2}
    toy = pd.DataFrame([{"word": "abcd (toy: merges a+b, b+c, bc+d)", "count": None,
                         "bpe": " | ".join(bpe_encode_word(list("abcd"), ranks)),
                         "lbpe": " | ".join(lbpe_encode_word(list("abcd"), vocab, 3, tie_break=cfg.tie_break))}])
    text = "".join(d.text for d in data.eval_docs)
    ex = A.segmentation_examples({"bpe": data.encoders["bpe"], "lbpe": data.encoders["lbpe"]}, text, n=12)
    return pd.concat([toy, ex], ignore_index=True)


@plan.step
def scaffold_summary(cfg: LBPEConfig, data: Data, scaffold_data: Data) -> pd.DataFrame:
    """extra_scaffold: the four encodings on the same text (``freq_corpus``): BPE, LBPE, Scaffold-BPE and
    Scaffold-BPE + LBPE. Usable vocabulary = the ids a model embeds (specials excluded); scaffolds are the extra
    entries Scaffold-BPE keeps for merging only (never emitted: ``scaffold_ids_emitted`` must be 0)."""
    rows = []
    for d in (data, scaffold_data):
        enc0 = next(iter(d.encoders.values()))
        lengths = np.asarray(enc0.token_lengths)
        usable = np.asarray([i for i in range(d.n_ids) if i not in enc0.special_ids])
        for e, docs in freq_ids(cfg, d).items():
            ids = _flat(docs)
            counts = np.bincount(ids, minlength=len(lengths))
            cu = counts[usable]
            rows.append({"encoding": e, "usable_vocab": len(usable), "scaffolds": len(lengths) - d.n_ids,
                         "tokens": len(ids), "bytes_per_token": float(d.byte_len[ids].sum()) / len(ids),
                         f"share_tokens_ge_{cfg.long_min_len}_bytes": float(cu[lengths[usable] >= cfg.long_min_len].sum()
                                                                          / cu.sum()),
                         "gini": A.gini(cu), "unused_frac": float((cu == 0).mean()),
                         "scaffold_ids_emitted": int(counts[d.n_ids:].sum())})
    return pd.DataFrame(rows)


# ============================================================================================ LM training


@dataclass(frozen=True)
class AlignedBatches:
    """Training batches that put the same text, in the same order, in front of every encoding (DESIGN §7, pair what
    can be paired): step s of seed k draws ``batch_size`` byte offsets of the training stream from
    ``default_rng([k, s + offset])``; each row is the ``seq_len + 1`` tokens of this encoding's stream starting at
    the first token that starts at or after that byte (so two encodings' rows start at the same byte, or within one
    token of it). ``starts[i]``: the byte offset of token i (EOS counts 0 bytes); ``limit``: the largest offset
    drawn, the same for every encoding (each has ``seq_len + 1`` tokens after it). Pure in (seed, step), as
    ``replicate.data.lm.Batches``."""

    tokens: np.ndarray
    starts: np.ndarray
    limit: int
    batch_size: int
    seq_len: int
    seed: int
    offset: int = 0

    def batch(self, step: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step + self.offset])
        offs = rng.integers(0, self.limit, size=self.batch_size)
        first = np.searchsorted(self.starts, offs, side="left")
        rows = first[:, None] + np.arange(self.seq_len + 1)[None, :]
        return torch.from_numpy(self.tokens[rows].astype(np.int64))


def token_starts(stream: np.ndarray, byte_len: np.ndarray) -> np.ndarray:
    """Byte offset of every token of ``stream`` in the text it encodes."""
    b = byte_len[np.asarray(stream, dtype=np.int64)]
    return np.concatenate([[0], np.cumsum(b)[:-1]]).astype(np.int64)


def aligned_limit(data: Data, seq_len: int) -> int:
    """The largest byte offset every encoding of ``data`` can start a training row at."""
    return int(min(token_starts(st, data.byte_len)[len(st) - seq_len - 2] for st in data.streams.values()))


def lm_batches(cfg: LBPEConfig, data: Data, encoding: str, seed: int) -> AlignedBatches:
    """The training batches of one encoding and seed (a pure function of (seed, step), aligned by byte offset)."""
    stream = data.streams[encoding]
    return AlignedBatches(stream, token_starts(stream, data.byte_len), aligned_limit(data, cfg.seq_len),
                          cfg.batch_size, cfg.seq_len, seed)


def eval_schedule(cfg: LBPEConfig, cum: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(every evaluation step but the final one, the steps whose mean is the run's metric): ``n_eval_checkpoints``
    along the run for the curve, and ``last_evals`` spread over the last ``last_eval_span`` of the bytes (the final
    evaluation, at ``len(cum)``, is the last of them)."""
    n = len(cum)
    k = cfg.last_evals
    fr = [1 - cfg.last_eval_span * i / (k - 1) for i in range(1, k)] if k > 1 else []
    last = {min(n, int(np.searchsorted(cum, f * cum[-1])) + 1) for f in fr} | {n}
    last = tuple(sorted(last))
    return tuple(sorted(set(eval_steps_at(cum, cfg.n_eval_checkpoints)) | {s for s in last if s < n})), last


def lm_spec(cfg: LBPEConfig, data: Data, e: str, seed: int):
    """(spec, batches, cumulative bytes, last-evaluation steps) of one LM run; equal training bytes for every
    encoding, and the model's initial weights are the seed's (the same for every encoding)."""
    batches = lm_batches(cfg, data, e, seed)
    cum = steps_for_bytes(batches, data.byte_len, cfg.train_bytes)
    evals, last = eval_schedule(cfg, cum)
    spec = TrainSpec(cfg.decoder(data.n_ids), cfg.optim(len(cum)),
                     data.description + f";enc={encoding_tag(cfg, e)};aligned={batches.limit}", cfg.batch_size,
                     cfg.seq_len, seed, eval_steps=evals, ckpt_every=max(10, len(cum) // 4))
    return spec, batches, cum, last


def train_one(cfg: LBPEConfig, data: Data, e: str, seed: int) -> dict:
    spec, batches, _, _ = lm_spec(cfg, data, e, seed)
    return train(PAPER_ID, spec, batches, {"heldout": data.eval_sets[e].windows}, **cfg.trainer_kwargs())


def run_lm(cfg: LBPEConfig, data: Data, arms=None) -> list[dict]:
    """One run per (encoding, seed) at ``train_bytes`` training bytes each (with ``workers`` > 1 trained side by
    side first, ``replicate.models.trainer.prefetch``); returns one record per run."""
    arms = tuple(arms or cfg.lm_arms)
    seeds = range(cfg.seed, cfg.seed + cfg.n_seeds)
    prefetch([functools.partial(train_one, cfg, data, e, s) for s in seeds for e in arms], cfg.workers, cfg.threads)
    out = []
    for seed in seeds:
        for e in arms:
            spec, _, cum, last = lm_spec(cfg, data, e, seed)
            res = train_one(cfg, data, e, seed)
            out.append({"encoding": e, "seed": seed, "result": res, "cum_bytes": cum, "steps": len(cum),
                        "last_steps": last, "tokens_per_step": cfg.batch_size * cfg.seq_len})
    return out


@dataclass(frozen=True)
class LMArm:
    runs: list  # one record per (encoding, seed): the training result, its byte counts
    frame: pd.DataFrame  # one row per (encoding, seed, evaluated step): bits per byte, per-token loss, ...
    bars: pd.DataFrame  # the count models on the same held-out text, per encoding (and seed): the validity bars


def _scatter(values: np.ndarray, ev) -> torch.Tensor:
    """A (W, T) loss tensor holding ``values`` (one per predicted token, in text order) at the mask's positions."""
    out = torch.zeros(ev.mask.shape, dtype=torch.float64)
    out[ev.mask] = torch.from_numpy(np.asarray(values, dtype=np.float64))
    return out


def count_bars(cfg: LBPEConfig, data: Data, runs: list[dict]) -> pd.DataFrame:
    """The validity bars of every run (DESIGN §7: a model must beat a count model before it is compared), on its own
    encoding's evaluation set, in nats per token and bits per byte: the add-one unigram, and the interpolated
    Kneser-Ney bigram and trigram of the whole training stream (``full_*``: 1/epochs times the text a run saw) and
    of exactly the windows the run trained on (``seen_*``, ``replicate.data.ngram.seen_windows``: the same data).
    Every token is scored from its full context (the trigram through ``document_nll``)."""
    rows = []
    full = {}
    for r in runs:
        e, ev = r["encoding"], data.eval_sets[r["encoding"]]
        if e not in full:
            full[e] = (torch.from_numpy(unigram_nll(data.streams[e], data.n_ids, ev.windows)),
                       torch.from_numpy(KneserNeyBigram(data.streams[e], data.n_ids).nll(ev.windows)),
                       _scatter(document_nll(KneserNeyTrigram(data.streams[e], data.n_ids), data.eval_ids[e],
                                             data.eos_id), ev))
        uni, big, tri = full[e]
        seen_w = seen_windows(lm_batches(cfg, data, e, r["seed"]), r["steps"])
        seen = torch.from_numpy(KneserNeyBigram(seen_w, data.n_ids).nll(ev.windows))
        seen3 = _scatter(document_nll(KneserNeyTrigram(seen_w, data.n_ids), data.eval_ids[e], data.eos_id), ev)
        row = {"encoding": e, "seed": r["seed"]}
        for name, loss in (("unigram", uni), ("full_bigram", big), ("seen_bigram", seen), ("full_trigram", tri),
                           ("seen_trigram", seen3)):
            row[name] = nats_per_token(loss, ev)
            row[f"{name}_bpb"] = bits_per_byte(loss, ev, data.byte_len)
        rows.append(row)
    return pd.DataFrame(rows)


@plan.step
def lm_runs(cfg: LBPEConfig, data: Data) -> LMArm:
    runs = run_lm(cfg, data)
    return LMArm(runs, lm_frame(runs, data), count_bars(cfg, data, runs))


COUNT_MODELS = {"bigram": KneserNeyBigram, "trigram": KneserNeyTrigram}  # the count-model arm's two orders


@dataclass(frozen=True)
class CountArm:
    """The deterministic count-model arm (ours): an interpolated Kneser-Ney bigram and trigram of each encoding's
    whole training stream (the same training bytes), scored on all the held-out text (every token from its full
    context); blocks of ``block_bytes`` of that text resampled together for every encoding and model (a paired
    block bootstrap), and the gap of every play on its own (the blocks of one play are correlated)."""

    frame: pd.DataFrame  # one row per (model, encoding): bits per byte, nats per token, tokens, bytes
    boot: pd.DataFrame  # one row per resample: bits per byte of every "<model>:<encoding>"
    per_doc: pd.DataFrame  # one row per (model, encoding, held-out play): bits per byte
    n_blocks: int
    block_bytes: int


@plan.step
def count_arm(cfg: LBPEConfig, data: Data) -> CountArm:
    rows, docs, per_block, n_blocks = [], [], {}, 0
    for e in data.encoders:
        targets = np.concatenate([np.asarray(d, dtype=np.int64) for d in data.heldout_ids[e]])
        doc = np.concatenate([np.full(len(d), i) for i, d in enumerate(data.heldout_ids[e])])
        tb = data.byte_len[targets]
        block = token_starts(targets, data.byte_len) // cfg.block_bytes
        n_blocks = int(tb.sum()) // cfg.block_bytes + 1  # the same text, so the same blocks, for every encoding
        for m, cls in COUNT_MODELS.items():
            nll = document_nll(cls(data.streams[e], data.n_ids), data.heldout_ids[e], data.eos_id)
            per_block[f"{m}:{e}"] = (np.bincount(block, weights=nll, minlength=n_blocks),
                                     np.bincount(block, weights=tb, minlength=n_blocks))
            rows.append({"model": m, "encoding": e, "bpb": float(nll.sum() / LN2 / tb.sum()),
                         "nats_per_token_NOT_COMPARABLE": float(nll.mean()), "tokens": len(nll),
                         "bytes": int(tb.sum()), "train_tokens": len(data.streams[e])})
            for i, d in enumerate(data.heldout_docs):
                k = doc == i
                docs.append({"model": m, "encoding": e, "play": d.name, "bytes": int(tb[k].sum()),
                             "bpb": float(nll[k].sum() / LN2 / tb[k].sum())})
    rng = np.random.default_rng(cfg.seed)
    boot = []
    for _ in range(cfg.n_boot):
        w = np.bincount(rng.integers(0, n_blocks, n_blocks), minlength=n_blocks)
        boot.append({k: float(w @ nb / LN2 / (w @ bb)) for k, (nb, bb) in per_block.items()})
    return CountArm(pd.DataFrame(rows), pd.DataFrame(boot), pd.DataFrame(docs), n_blocks, cfg.block_bytes)


@plan.step
def loss_by_length(cfg: LBPEConfig, data: Data, lm_runs: LMArm) -> pd.DataFrame:
    """Analysis 6: loss and bits per byte by target-token length, per encoding (loss averaged over seeds)."""
    res = {}
    for e in ENCODINGS:
        ev = data.eval_sets[e]
        losses = torch.stack([r["result"]["final"]["heldout"] for r in lm_runs.runs if r["encoding"] == e]).mean(0)
        res[e] = (ev.targets[ev.mask].numpy(), losses[ev.mask].numpy())
    return A.loss_by_token_length(res, data.byte_len, bins=list(cfg.loss_length_bins))


def run_cpt(cfg: LBPEConfig, data: Data) -> list[dict]:
    """Continual pre-training: BPE for ``cpt_switch_frac`` of the bytes, then the rest on BPE (control) or on
    LBPE (the same vocabulary and ids; the weights are kept, the cosine schedule continues)."""
    out = []
    model = cfg.decoder(data.n_ids)
    for seed in range(cfg.seed, cfg.seed + cfg.cpt_n_seeds):
        base = lm_batches(cfg, data, "bpe", seed)
        full = steps_for_bytes(base, data.byte_len, cfg.train_bytes)
        schedule = cfg.optim(len(full))  # the schedule a whole BPE run would follow
        s1 = int(np.searchsorted(full, cfg.cpt_switch_frac * full[-1])) + 1
        # phase 1: the first s1 steps of that whole run (its learning rate follows the whole schedule)
        spec1 = TrainSpec(model, dataclasses.replace(schedule, max_steps=s1),
                          data.description + f";enc=bpe;aligned={base.limit}",
                          cfg.batch_size, cfg.seq_len, seed, ckpt_every=max(10, s1 // 4), lr_map=LRMap(schedule))
        p1 = train(PAPER_ID, spec1, base, {"heldout": data.eval_sets["bpe"].windows}, keep_weights=True,
                   **cfg.trainer_kwargs())
        rest = int(cfg.train_bytes - full[s1 - 1])
        for e in ENCODINGS:
            # phase 2 continues the base data order (offset s1): the BPE arm sees exactly what a whole run would
            batches = dataclasses.replace(lm_batches(cfg, data, e, seed), offset=s1)
            cum = steps_for_bytes(batches, data.byte_len, max(rest, 1))
            stretch = (len(full) - s1) / len(cum)  # phase 2's own steps mapped onto the rest of the schedule
            desc = data.description + f";enc={encoding_tag(cfg, e)};aligned={base.limit};data_offset={s1}"
            spec2 = continued(TrainSpec(model, dataclasses.replace(schedule, max_steps=len(cum)), desc,
                                        cfg.batch_size, cfg.seq_len, seed, ckpt_every=max(10, len(cum) // 4)),
                              p1, lr_map=LRMap(schedule, offset=s1, stretch=round(stretch, 6)))
            res = train(PAPER_ID, spec2, batches, {"heldout": data.eval_sets[e].windows}, parent=p1,
                        **cfg.trainer_kwargs())
            out.append({"arm": f"BPE → {e.upper()}", "encoding": e, "seed": seed, "result": res,
                        "phase1_steps": s1, "phase1_bytes": int(full[s1 - 1]), "phase2_steps": len(cum),
                        "phase2_bytes": int(cum[-1]), "phase1_bpb": bits_per_byte(p1["final"]["heldout"],
                                                                                  data.eval_sets["bpe"], data.byte_len)})
    return out


@plan.step
def cpt(cfg: LBPEConfig, data: Data) -> pd.DataFrame | None:
    """table3: bits per byte after continual pre-training on BPE vs LBPE data, per seed (None unless run_cpt)."""
    return cpt_frame(run_cpt(cfg, data), data) if cfg.run_cpt else None


@plan.step
def scaffold_lm(cfg: LBPEConfig, scaffold_data: Data) -> pd.DataFrame | None:
    """table4's runs: Scaffold-BPE vs Scaffold-BPE + LBPE at equal bytes, paired by seed (None unless run_scaffold)."""
    return lm_frame(run_lm(cfg, scaffold_data, arms=tuple(scaffold_data.encoders)), scaffold_data) \
        if cfg.run_scaffold else None


def lm_frame(runs: list[dict], data: Data) -> pd.DataFrame:
    """One row per (encoding, seed, evaluated step): bits per byte, per-token loss, training bytes and tokens."""
    rows = []
    for r in runs:
        ev = data.eval_sets[r["encoding"]]
        res = r["result"]
        points = sorted(res["evals"].get("heldout", {}).items()) + [(r["steps"], res["final"]["heldout"])]
        for step, loss in points:
            rows.append({"encoding": r["encoding"], "seed": r["seed"], "step": step, "final": step == r["steps"],
                         "last": step in r.get("last_steps", (r["steps"],)),
                         "train_bytes": int(r["cum_bytes"][step - 1]), "train_tokens": step * r["tokens_per_step"],
                         "bpb": bits_per_byte(loss, ev, data.byte_len), "nats_per_token": nats_per_token(loss, ev),
                         "wall_s": res["wall_s"], "n_params": res["n_params"]})
    return pd.DataFrame(rows)


def cpt_frame(runs: list[dict], data: Data) -> pd.DataFrame:
    """table3: bits per byte after continual pre-training on BPE vs LBPE data, per seed."""
    rows = []
    for r in runs:
        ev = data.eval_sets[r["encoding"]]
        loss = r["result"]["final"]["heldout"]
        rows.append({"arm": r["arm"], "encoding": r["encoding"], "seed": r["seed"],
                     "phase1_steps": r["phase1_steps"], "phase1_bytes": r["phase1_bytes"],
                     "phase1_bpb_on_bpe": r["phase1_bpb"], "phase2_steps": r["phase2_steps"],
                     "phase2_bytes": r["phase2_bytes"], "bpb": bits_per_byte(loss, ev, data.byte_len),
                     "nats_per_token_NOT_COMPARABLE": nats_per_token(loss, ev), "final": True})
    return pd.DataFrame(rows)


# ============================================================================================ speed


@plan.step
def speed(cfg: LBPEConfig, data: Data) -> pd.DataFrame:
    """Encoding throughput on the held-out text: HF's Rust BPE, our Python BPE, our LBPE (both readings)."""
    texts = [d.text for d in budget_docs(data.heldout_docs, cfg.speed_max_bytes)]
    tok = data.tok
    def hf_one_thread(xs):  # Rust, without its thread pool (a fairer match for our single-threaded Python)
        before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            return [e.ids for e in tok.encode_batch(xs)]
        finally:
            os.environ.pop("TOKENIZERS_PARALLELISM") if before is None else os.environ.update(
                TOKENIZERS_PARALLELISM=before)

    encoders = {
        "HF tokenizers BPE (Rust)": lambda: (lambda xs: [e.ids for e in tok.encode_batch(xs)]),
        "HF tokenizers BPE (Rust, 1 thread)": lambda: hf_one_thread,
        "BPE (ours, Python)": lambda: make_encoder(tok, mode="bpe").encode_batch,
        "BPE heap (ours, Python)": lambda: HeapBPEEncoder(tok).encode_batch,
        "LBPE scan (ours, Python)": lambda: make_encoder(tok, mode="scan", tie_break=cfg.tie_break).encode_batch,
        "LBPE merge loop (ours, Python)": lambda: make_encoder(tok, mode="merge").encode_batch,
    }
    df = A.encoding_speed(texts, encoders, repeats=cfg.speed_repeats)
    hf = [e.ids for e in tok.encode_batch(texts)]
    same = make_encoder(tok, mode="bpe").encode_batch(texts) == hf
    heap = HeapBPEEncoder(tok).encode_batch(texts) == hf
    df["ids_equal_hf_bpe"] = [True if "Rust" in n else (heap if n.startswith("BPE heap") else same
                                                         if n.startswith("BPE") else False) for n in df["encoder"]]
    rust = df[(df["encoder"] == "HF tokenizers BPE (Rust)") & (df["cache"] == "cold")]["seconds"].iloc[0]
    df["times_slower_than_rust"] = df["seconds"] / rust
    return df.drop(columns=["slowdown"], errors="ignore")  # relative to the fastest row: read times_slower_than_rust


def long_word(data: Data, n: int) -> str:
    """One pre-token of ``n`` byte units: the held-out text's ASCII letters run together (real letter statistics,
    no word boundary, so the encoders' per-word cost is exposed)."""
    letters = "".join(c for d in data.heldout_docs for c in d.text if c.isascii() and c.isalpha())
    while len(letters) < n:
        letters += letters
    return letters[:n]


COMPLEXITY_ENCODERS = {"lbpe": "LBPE scan", "bpe_heap": "BPE, heap (linear-time)", "bpe_naive": "BPE, naive rescan"}


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def complexity_frame(cfg: LBPEConfig, data: Data) -> pd.DataFrame:
    """Work and time to encode one long pre-token of each length (no cache): the LBPE scan, the heap BPE and the
    naive BPE loop (up to ``naive_max_len``). ``ops``: the deterministic operation count (``baselines.count_ops``);
    ``seconds``: the median of ``complexity_repeats`` timings (the machine may be shared)."""
    tok = data.tok
    encs = {"lbpe": make_encoder(tok, mode="scan", tie_break=cfg.tie_break), "bpe_heap": HeapBPEEncoder(tok),
            "bpe_naive": make_encoder(tok, mode="bpe")}
    rows = []
    for n in cfg.complexity_lengths:
        w = long_word(data, n)
        outs = {}
        for e, enc in encs.items():
            if e == "bpe_naive" and n > cfg.naive_max_len:
                continue
            outs[e] = enc._encode_units(w)
            assert "".join(outs[e]) == w
            rows.append({"encoder": e, "length": n, "ops": count_ops(enc, w),
                         "seconds": _median_seconds(lambda: enc._encode_units(w), cfg.complexity_repeats),
                         "repeats": cfg.complexity_repeats, "n_tokens": len(outs[e]), "max_token_len": enc.max_len})
        if "bpe_naive" in outs and outs["bpe_naive"] != outs["bpe_heap"]:
            raise RuntimeError(f"heap BPE and naive BPE disagree on a {n}-byte word")
    return pd.DataFrame(rows)


def m_sweep(cfg: LBPEConfig, data: Data) -> pd.DataFrame:
    """LBPE's work per byte against m, the longest token: one vocabulary per ``ablation_vocab_sizes`` (trained on the
    same documents; the larger the vocabulary, the longer its longest entry), one pre-token of ``m_sweep_len``."""
    w = long_word(data, cfg.m_sweep_len)
    rows = []
    for v in cfg.ablation_vocab_sizes:
        tok = tokenizer.train_bpe(data.train_docs, v, name=_tokenizer_name(cfg))
        enc = make_encoder(tok, mode="scan", tie_break=cfg.tie_break)
        ops = count_ops(enc, w)
        rows.append({"vocab_size": v, "m": enc.max_len, "length": len(w), "ops": ops, "ops_per_byte": ops / len(w),
                     "bound_m_per_byte": enc.max_len, "within_bound": ops <= enc.max_len * len(w),
                     "seconds": _median_seconds(lambda: enc._encode_units(w), cfg.complexity_repeats),
                     "us_per_byte": 1e6 * _median_seconds(lambda: enc._encode_units(w), 1) / len(w)})
    return pd.DataFrame(rows)


def loglog_slope(frame: pd.DataFrame, encoder: str, y: str = "seconds") -> tuple[float, tuple[float, float] | None]:
    """Slope of log(``y``) on log(length) and its 95% t-interval (1: linear in |T|, 2: quadratic)."""
    from scipy import stats

    g = frame[frame["encoder"] == encoder]
    r = stats.linregress(np.log(g["length"]), np.log(g[y]))
    if len(g) < 3:
        return float(r.slope), None
    h = r.stderr * stats.t.ppf(0.975, len(g) - 2)
    return float(r.slope), (float(r.slope - h), float(r.slope + h))


@dataclass(frozen=True)
class Complexity:
    frame: pd.DataFrame  # ops and median seconds per (encoder, length)
    slopes: dict  # encoder -> (log-log slope of seconds, its 95% t-interval or None)
    op_slopes: dict  # encoder -> log-log slope of the counted operations (deterministic)
    m_sweep: pd.DataFrame  # LBPE's work per byte against m


@plan.step
def complexity(cfg: LBPEConfig, data: Data) -> Complexity:
    frame = complexity_frame(cfg, data)
    encs = frame["encoder"].unique()
    return Complexity(frame, {e: loglog_slope(frame, e) for e in encs},
                      {e: loglog_slope(frame, e, "ops")[0] for e in encs}, m_sweep(cfg, data))


run_experiments = plan.run_all
