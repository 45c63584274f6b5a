"""LBPE: Long-token-first Tokenization to Improve Large Language Models (Lian et al., arXiv 2411.05504, 2024).

Miniature replication: the replication half. The encoder itself (BPE's vocabulary, tokens emitted longest first
instead of by merge rank, spec Sec. 3.4) lives in :mod:`replicate.tokenization`; this module holds what the paper
contributes on top of it and the experiments that test its claims:

1. Token-frequency analyses on the same corpus and vocabulary under both encodings (spec Sec. 5, analyses 1-5):
   occurrences by token length (fig1 under BPE, fig3 BPE vs LBPE), rank-frequency and flatness, vocabulary
   utilisation, compression, and (table2) how the shift changes with the vocabulary size.
2. The LM comparison at equal training **bytes**, scored in **bits per byte** on the same held-out text:

       bpb = Σ_{predicted tokens t} -log2 p(t | context)  /  Σ_{predicted tokens t} bytes(t)

   where the held-out documents are encoded whole by each encoder, every token is predicted exactly once
   (windows of ``seq_len`` predictions, the document preceded by EOS, the last window right-padded and masked),
   so the denominator is exactly the UTF-8 size of the evaluated text under both encoders. Per-token loss is
   reported too, labelled as not comparable across encodings.
   Budget: both encodings train with the same batch (B x T tokens) and the same model; the number of steps of
   each is the smallest k whose training targets hold at least ``train_bytes`` bytes of text (counted exactly,
   batch by batch, from the pure (seed, step) batch function; EOS counts 0 bytes). The encoding with more bytes
   per token therefore takes fewer steps. ``n_seeds`` seeds per encoding; the BPE-LBPE gap is paired by seed
   and judged by a Student-t interval over seeds (``reproduced`` only when it excludes zero on the paper's side).
3. Continual pre-training (paper scale; runs at smoke to test the path): a BPE model is trained for
   ``cpt_switch_frac`` of its byte budget, then finished on the rest of the bytes on BPE data (control) or on
   LBPE data (same vocabulary, same ids, weights kept), continuing the same cosine schedule.
4. Encoding speed of our pure-Python encoders against HF's Rust BPE, and the O(m·|T|) complexity claim measured
   as the growth of encoding time with the length of one long pre-token (LBPE scan vs rank BPE).
5. Compatibility with Scaffold-BPE (Table 4; paper scale, runs at smoke to test the path): Scaffold-BPE
   (:mod:`replicate.tokenization.scaffold`, trained on the same documents with as many usable tokens as BPE) against
   Scaffold-BPE + LBPE, LMs at equal training bytes, paired by seed as in 2. Its tokenizer and the frequency summary
   of all four encodings (``extra_scaffold``) are computed at every scale.

Not reproduced: the paper's models (468M-6.7B parameters), the Pile, its downstream benchmarks (none ship
offline; bits per byte stands in for accuracy), and any of its numbers (none could be recovered: ``paper_value``
stays empty). UNCONFIRMED choices are options: ``lbpe_mode`` (scan, the default, or the merge-loop reading),
``tie_break`` (leftmost, the default, or rank), ``scaffold_compose`` (exclude, the default, or demolish) and
``scaffold_unflag`` (requeue, the default, or never).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from replicate import claims as C
from replicate.config import ConfigError, PaperConfig, param, register
from replicate.data import corpora, lm, tokenizer
from replicate.models.decoder import DecoderConfig
from replicate.models.lm import CausalLM, OptimConfig, lr_at
from replicate.models.trainer import TrainSpec, train
from replicate.tokenization import analysis as A
from replicate.tokenization.lbpe import MODES, TIE_BREAKS, bpe_encode_word, lbpe_encode_word, make_encoder
from replicate.tokenization.scaffold import COMPOSES, UNFLAGS, make_scaffold_encoder, train_scaffold_bpe

PAPER_ID = "lbpe"
# Claims whose value is a measured time: they cannot repeat bit for bit, so determinism checks leave them out.
TIMING_CLAIMS = ("C5",)
ENCODINGS = ("bpe", "lbpe")  # the baseline and the paper's encoder, over the same vocabulary
LN2 = math.log(2.0)


# ================================================================================================== config


@register(PAPER_ID)
@dataclass(frozen=True, kw_only=True)
class LBPEConfig(PaperConfig):
    # --- data (ours: offline stand-ins for the Pile) ---
    corpus: str = param("shakespeare", help="shakespeare | python | hf:<dataset> (paper scale, needs network)",
                        source="spec §6: the shipped English corpus")
    hf_docs: int = param(10_000, help="documents read from an hf: corpus", source="ours", min=1, max=100_000_000)
    doc_max_bytes: int = param(0, help="cut every document to its first N bytes (at a line end); 0 = whole",
                               source="ours (smoke only)", min=0, max=10**12)
    vocab_size: int = param(4096, help="byte-level BPE vocabulary (shared by both encodings)",
                            source="spec §6 small: 4,096", min=300, max=262_144)
    lbpe_mode: str = param("scan", help="LBPE reading: scan (variant A) | merge (variant B, merge loop by length)",
                           source="UNCONFIRMED (spec §3.4): scan", choices=MODES)
    tie_break: str = param("leftmost", help="scan tie-break at equal length", source="UNCONFIRMED (spec §3.4)",
                           choices=TIE_BREAKS)
    # --- frequency analyses ---
    freq_corpus: str = param("all", help="text the frequency analyses count: all | train | heldout",
                             source="spec §6 small: the whole corpus", choices=("all", "train", "heldout"))
    long_min_len: int = param(4, help="tokens of at least this many bytes are 'long' in claims C1/C3",
                              source="ours", min=2, max=64)
    util_ks: tuple[int, ...] = param((1, 10, 100), help="utilisation thresholds k", source="spec §5 analysis 4",
                                     min=1, max=10**9, min_len=1)
    ablation_vocab_sizes: tuple[int, ...] = param((2048, 4096, 8192), help="vocabularies of the table2 ablation",
                                                  source="spec §5 Table 2 (scaled down)", min=300, max=262_144,
                                                  min_len=1)
    ablation_max_bytes: int = param(1_000_000, help="held-out bytes counted in the table2 ablation",
                                    source="ours", min=1_000, max=10**12)
    n_boot: int = param(1000, help="bootstrap resamples over documents (frequency claims)", source="ours", min=10,
                        max=100_000)
    # --- the LM comparison (spec §6 T-LM, scaled to the 15-minute budget) ---
    d_model: int = param(128, help="model width", source="ours: DESIGN §5 calibration", min=16, max=8192)
    n_layers: int = param(4, help="layers", source="ours: DESIGN §5 calibration", min=1, max=128)
    n_heads: int = param(4, help="attention heads", source="ours", min=1, max=128)
    d_ff: int = param(344, help="SwiGLU hidden width", source="ours: DESIGN §5 calibration", min=8, max=65536)
    seq_len: int = param(128, help="context length (tokens)", source="ours: DESIGN §5 calibration", min=8,
                         max=32768)
    batch_size: int = param(32, help="sequences per step (both encodings)", source="ours", min=1, max=4096)
    train_bytes: int = param(2_600_000, help="training bytes per run (equal for both encodings)",
                             source="ours: ~200 steps, sized to ~10 min for 6 runs on 2 quiet cores", min=1_000, max=10**13)
    lr: float = param(3e-3, help="peak learning rate (AdamW)", source="ours: DESIGN §5 calibration", min=1e-6,
                      max=1.0)
    weight_decay: float = param(0.1, help="AdamW weight decay", source="ours", min=0.0, max=1.0)
    warmup_frac: float = param(0.02, help="warm-up fraction of steps", source="spec §6: 2%", min=0.0, max=0.5)
    min_lr_ratio: float = param(0.1, help="cosine floor as a fraction of the peak", source="ours", min=0.0, max=1.0)
    threads: int = param(0, help="torch intra-op threads while training (0 = torch's default: all cores); 1 avoids "
                         "oversubscribing cores that other jobs share", source="ours", min=0, max=1024)
    n_seeds: int = param(3, help="training seeds per encoding (seed, seed+1, ...)", source="PAPER_DONE: 3 seeds",
                         min=1, max=100)
    eval_max_bytes: int = param(200_000, help="held-out bytes scored for bits per byte (split over held-out docs)",
                                source="ours", min=1_000, max=10**12)
    n_eval_checkpoints: int = param(2, help="intermediate evaluations (at equal fractions of the byte budget)",
                                    source="ours", min=0, max=100)
    loss_length_bins: tuple[int, ...] = param((1, 2, 3, 4, 6), help="lower edges of token-length buckets",
                                              source="spec §5 analysis 6", min=1, max=256, min_len=1)
    # --- continual pre-training (paper scale; on at smoke to test the path) ---
    run_cpt: bool = param(False, help="run the continual pre-training arm (BPE, then BPE vs LBPE)",
                          source="spec §6: paper")
    cpt_switch_frac: float = param(0.8, help="fraction of the byte budget trained on BPE before the switch",
                                   source="spec §6: 80%", min=0.05, max=0.95)
    cpt_n_seeds: int = param(3, help="seeds of the continual pre-training arm", source="ours", min=1, max=100)
    # --- Scaffold-BPE (its tokenizer and frequency summary at every scale; its LMs at paper, on at smoke) ---
    run_scaffold: bool = param(False, help="train the Scaffold-BPE arm's LMs (Scaffold-BPE vs Scaffold-BPE + LBPE, "
                               "n_seeds each: table4)", source="spec §6: paper")
    scaffold_compose: str = param("exclude", help="LBPE on a Scaffold-BPE vocabulary: exclude (scan over V without "
                                  "the scaffolds) | demolish (scan over V, then split scaffolds)",
                                  source="UNCONFIRMED (spec §4.2): exclude", choices=COMPOSES)
    scaffold_unflag: str = param("requeue", help="Scaffold-BPE training: requeue (a scaffold whose frequency rises "
                                 "above the best pair's becomes a normal token again) | never (flags are final)",
                                 source="UNCONFIRMED (spec §4.2 is silent; requeue: our reading of Scaffold-BPE)",
                                 choices=UNFLAGS)
    # --- speed and complexity ---
    speed_max_bytes: int = param(600_000, help="held-out bytes encoded for the speed table", source="ours",
                                 min=1_000, max=10**12)
    speed_repeats: int = param(2, help="fresh encoders timed per row (best kept)", source="ours", min=1, max=20)
    complexity_lengths: tuple[int, ...] = param((250, 500, 1000, 2000), help="lengths (bytes) of the single long "
                                                "pre-token timed for the O(m|T|) claim", source="ours", min=8,
                                                max=100_000, min_len=3)

    def validate(self):
        if not (self.corpus in corpora.CORPORA or self.corpus.startswith("hf:")):
            raise ConfigError(f"parameter 'corpus': must be one of {' | '.join(corpora.CORPORA)} | hf:<dataset>, "
                              f"got {self.corpus!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"parameter 'n_heads': must divide d_model={self.d_model}, got {self.n_heads}")
        if list(self.loss_length_bins) != sorted(set(self.loss_length_bins)) or self.loss_length_bins[0] != 1:
            raise ConfigError(f"parameter 'loss_length_bins': must be strictly increasing from 1, "
                              f"got {self.loss_length_bins}")

    @classmethod
    def smoke(cls):  # spec §6 smoke: seconds; every code path, no evidence
        return cls(scale="smoke", doc_max_bytes=8_000, vocab_size=512, ablation_vocab_sizes=(384, 512), n_boot=50,
                   d_model=32, n_layers=1, n_heads=2, d_ff=64, seq_len=32, batch_size=4, train_bytes=6_000, threads=1,
                   lr=3e-3, n_seeds=2, eval_max_bytes=6_000, n_eval_checkpoints=1, run_cpt=True, cpt_n_seeds=1,
                   run_scaffold=True, speed_max_bytes=20_000, speed_repeats=1, complexity_lengths=(64, 128, 256))

    @classmethod
    def small(cls):
        return cls(scale="small")  # the defaults above

    @classmethod
    def paper(cls):  # spec §6 paper: one GPU, hours (vocab 32K, the middle of the 20M/85M/150M ladder)
        return cls(scale="paper", accelerator="auto", precision="bf16-mixed", corpus="hf:monology/pile-uncopyrighted",
                   hf_docs=500_000, freq_corpus="heldout", ablation_max_bytes=50_000_000, vocab_size=32768, ablation_vocab_sizes=(8192, 16384, 32768), d_model=768,
                   n_layers=12, n_heads=12, d_ff=2048, seq_len=1024, batch_size=32, train_bytes=4_000_000_000,
                   threads=0, lr=6e-4, eval_max_bytes=5_000_000, n_eval_checkpoints=8, run_cpt=True, cpt_n_seeds=3,
                   run_scaffold=True,
                   speed_max_bytes=5_000_000, complexity_lengths=(500, 1000, 2000, 4000, 8000))


# ==================================================================================================== data


def _cut(text: str, max_bytes: int) -> str:
    """The first ``max_bytes`` bytes of ``text``, ending at a line end (whole text if it fits)."""
    if max_bytes <= 0 or len(text.encode("utf-8")) <= max_bytes:
        return text
    head = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    nl = head.rfind("\n")
    return head[: nl + 1] if nl > 0 else head


def budget_docs(docs, max_bytes: int) -> tuple[corpora.Document, ...]:
    """Documents in order, each cut to an equal share of ``max_bytes`` (at least 1,000 bytes, at a line end),
    until ``max_bytes`` are reached: a bounded sample spread over many documents."""
    share = max(1_000, max_bytes // max(1, len(docs)))
    out, total = [], 0
    for d in docs:
        if total >= max_bytes:
            break
        cut = corpora.Document(d.name, _cut(d.text, share))
        out.append(cut)
        total += len(cut.text.encode("utf-8"))
    return tuple(out)


def load_corpus(cfg: LBPEConfig) -> tuple[corpora.Document, ...]:
    docs = corpora.huggingface(cfg.corpus[3:], limit=cfg.hf_docs) if cfg.corpus.startswith("hf:") \
        else corpora.load(cfg.corpus)
    if cfg.doc_max_bytes:
        docs = tuple(corpora.Document(d.name, _cut(d.text, cfg.doc_max_bytes)) for d in docs)
    return docs


def byte_lengths(enc) -> np.ndarray:
    """bytes(t) for every id: the UTF-8 bytes the token decodes to; special tokens (EOS) count 0 bytes."""
    out = np.asarray(enc.token_lengths, dtype=np.int64).copy()
    out[list(enc.special_ids)] = 0
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


def _encoding_tag(cfg: LBPEConfig, encoding: str) -> str:
    """What fixes an encoding given its tokenizer: names its token cache and its training runs."""
    if encoding == "scaffold_lbpe":
        return f"scaffold_{lbpe_name(cfg)}-{cfg.scaffold_compose}"
    return {"lbpe": lbpe_name(cfg)}.get(encoding, encoding)


def _tokenizer_name(cfg: LBPEConfig) -> str:
    return f"lbpe-{cfg.corpus.replace('/', '_')}"


def _encode_all(cfg: LBPEConfig, tok, encs: dict, train_docs, heldout_docs, n_ids: int, description: str,
                rust: tuple = (), cache_suffix: str = "") -> Data:
    """Every encoding of the training, held-out and evaluation documents, and the evaluation sets. Encodings in
    ``rust`` go through HF's Rust encoder (ids equal to our Python rank BPE's, tested). Token caches are named by
    :func:`_encoding_tag` plus ``cache_suffix``."""

    def enc(e, docs):
        return tokenizer.encode_documents(tok, docs, encoder=None if e in rust else encs[e].encode_batch,
                                          encoder_name=_encoding_tag(cfg, e) + cache_suffix)

    eval_docs = budget_docs(heldout_docs, cfg.eval_max_bytes)
    eos = tok.token_to_id(tokenizer.EOS)
    byte_len = byte_lengths(next(iter(encs.values())))
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


def prepare_data(cfg: LBPEConfig) -> Data:
    """Tokenizer trained on the training documents; both encodings of train, held-out and evaluation text."""
    train_docs, heldout_docs = corpora.split(load_corpus(cfg))
    tok = tokenizer.train_bpe(train_docs, cfg.vocab_size, name=_tokenizer_name(cfg))
    encs = {"bpe": make_encoder(tok, mode="bpe"), "lbpe": make_encoder(tok, mode=cfg.lbpe_mode, tie_break=cfg.tie_break)}
    return _encode_all(cfg, tok, encs, train_docs, heldout_docs, tok.get_vocab_size(),
                       f"tok=bpe{cfg.vocab_size}:{tokenizer.tokenizer_fingerprint(tok)}", rust=("bpe",))


def prepare_scaffold_data(cfg: LBPEConfig, data: Data) -> Data:
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


def frequency_frames(cfg: LBPEConfig, data: Data) -> dict[str, pd.DataFrame]:
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


def scaffold_summary(cfg: LBPEConfig, data: Data, sdata: Data) -> pd.DataFrame:
    """extra_scaffold: the four encodings on the same text (``freq_corpus``): BPE, LBPE, Scaffold-BPE and
    Scaffold-BPE + LBPE. Usable vocabulary = the ids a model embeds (specials excluded); scaffolds are the extra
    entries Scaffold-BPE keeps for merging only (never emitted: ``scaffold_ids_emitted`` must be 0)."""
    rows = []
    for d in (data, sdata):
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


def frequency_stats(counts: dict[str, np.ndarray], groups: dict[str, np.ndarray]) -> dict[str, float]:
    """The numbers behind claims C1 and C3 from total counts per id of each encoding."""
    b, l = counts["bpe"], counts["lbpe"]
    vid = np.concatenate(list(groups.values()))
    short_all = np.concatenate([groups["single"], groups["short"]])
    out = {
        # C1: BPE occurrences per vocabulary entry, short (< long_min bytes) over long
        "c1_ratio": (b[short_all].sum() / len(short_all)) / max(b[groups["long"]].sum() / len(groups["long"]), 1e-12),
        "gini_delta": A.gini(l[vid]) - A.gini(b[vid]),
    }
    for g, ids in groups.items():
        out[f"ratio_{g}"] = l[ids].sum() / max(b[ids].sum(), 1)
    return out


def frequency_bootstrap(cfg: LBPEConfig, data: Data) -> tuple[dict, pd.DataFrame]:
    """Point values of :func:`frequency_stats` and their bootstrap over documents (blocks resampled with
    replacement, the same resample for both encodings)."""
    enc = data.encoders["bpe"]
    groups = length_groups(enc.token_lengths, enc.vocab.values(), cfg.long_min_len)
    ids = freq_ids(cfg, data)
    blocks = {e: block_counts(ids[e], enc.vocab_size) for e in ENCODINGS}
    point = frequency_stats({e: b.sum(0) for e, b in blocks.items()}, groups)
    rng = np.random.default_rng(cfg.seed)
    n = len(blocks["bpe"])
    rows = []
    for _ in range(cfg.n_boot):
        w = np.bincount(rng.integers(0, n, n), minlength=n)
        rows.append(frequency_stats({e: w @ b for e, b in blocks.items()}, groups))
    return point, pd.DataFrame(rows)


def vocab_ablation(cfg: LBPEConfig, data: Data) -> pd.DataFrame:
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
        bl = byte_lengths(encs["bpe"])
        nb = int(bl[ids["bpe"]].sum())
        util = {e: float((counts[e][list(encs["bpe"].vocab.values())] == 0).mean()) for e in ENCODINGS}
        rows.append({"vocab_size": v, "max_token_len": encs["bpe"].max_len,
                     "bytes_per_token_bpe": nb / len(ids["bpe"]), "bytes_per_token_lbpe": nb / len(ids["lbpe"]),
                     "long_ratio_lbpe_over_bpe": st["ratio_long"], "short_ratio_lbpe_over_bpe": st["ratio_short"],
                     "single_ratio_lbpe_over_bpe": st["ratio_single"], "gini_lbpe_minus_bpe": st["gini_delta"],
                     "unused_frac_bpe": util["bpe"], "unused_frac_lbpe": util["lbpe"]})
    return pd.DataFrame(rows)


# ============================================================================================ LM training


class ShiftedBatches(lm.Batches):
    """``Batches`` whose step s is step ``offset + s`` of the base sequence (continuing a run's data order)."""

    def __init__(self, base: lm.Batches, offset: int):
        super().__init__(base.streams, base.weights, base.batch_size, base.seq_len, base.seed)
        object.__setattr__(self, "offset", offset)

    def batch(self, step: int) -> torch.Tensor:
        return super().batch(step + self.offset)


def steps_for_bytes(batches: lm.Batches, byte_len: np.ndarray, budget: int, max_steps: int = 10**8) -> np.ndarray:
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


def _model(cfg: LBPEConfig, data: Data) -> DecoderConfig:
    return DecoderConfig(vocab_size=data.n_ids, d_model=cfg.d_model, n_layers=cfg.n_layers,
                         n_heads=cfg.n_heads, d_ff=cfg.d_ff, max_seq_len=cfg.seq_len)


def _optim(cfg: LBPEConfig, steps: int) -> OptimConfig:
    return OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=max(1, round(cfg.warmup_frac * steps)),
                       max_steps=steps, min_lr_ratio=cfg.min_lr_ratio)


def _trainer_kwargs(cfg: LBPEConfig) -> dict:
    return dict(accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy,
                precision=cfg.precision, threads=cfg.threads)


def _batches(cfg: LBPEConfig, data: Data, encoding: str, seed: int) -> lm.Batches:
    return lm.Batches((lm.Stream(data.streams[encoding]),), (1.0,), cfg.batch_size, cfg.seq_len, seed)


def run_lm(cfg: LBPEConfig, data: Data) -> list[dict]:
    """One run per (encoding, seed) at ``train_bytes`` training bytes each; returns one record per run."""
    out = []
    for seed in range(cfg.seed, cfg.seed + cfg.n_seeds):
        for e in data.encoders:
            batches = _batches(cfg, data, e, seed)
            cum = steps_for_bytes(batches, data.byte_len, cfg.train_bytes)
            spec = TrainSpec(_model(cfg, data), _optim(cfg, len(cum)),
                             data.description + f";enc={_encoding_tag(cfg, e)}", cfg.batch_size, cfg.seq_len, seed,
                             eval_steps=eval_steps_at(cum, cfg.n_eval_checkpoints), ckpt_every=max(10, len(cum) // 4))
            res = train(PAPER_ID, spec, batches, {"heldout": data.eval_sets[e].windows}, **_trainer_kwargs(cfg))
            out.append({"encoding": e, "seed": seed, "result": res, "cum_bytes": cum, "steps": len(cum),
                        "tokens_per_step": cfg.batch_size * cfg.seq_len})
    return out


class ContinuedLM(CausalLM):
    """A CausalLM whose learning rate follows a longer schedule: at its own step s the rate is
    lr_at(offset + s * stretch, schedule). Phase 1 of continual pre-training is (offset 0, stretch 1) of the whole
    schedule, stopped at the switch; phase 2 maps its own steps onto the rest of the same schedule."""

    def __init__(self, model, optim, schedule: OptimConfig, offset: int = 0, stretch: float = 1.0,
                 state_dict: dict | None = None):
        super().__init__(model, optim)
        self.schedule, self.offset, self.stretch = schedule, offset, stretch
        if state_dict is not None:
            self.load_state_dict(state_dict)

    def on_train_batch_start(self, batch, batch_idx):
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr_at(self.offset + self.global_step * self.stretch, self.schedule)


def run_cpt(cfg: LBPEConfig, data: Data) -> list[dict]:
    """Continual pre-training: BPE for ``cpt_switch_frac`` of the bytes, then the rest on BPE (control) or on
    LBPE (the same vocabulary and ids; the weights are kept, the cosine schedule continues)."""
    out = []
    model = _model(cfg, data)
    for seed in range(cfg.seed, cfg.seed + cfg.cpt_n_seeds):
        base = _batches(cfg, data, "bpe", seed)
        full = steps_for_bytes(base, data.byte_len, cfg.train_bytes)
        schedule = _optim(cfg, len(full))  # the schedule a whole BPE run would follow
        s1 = int(np.searchsorted(full, cfg.cpt_switch_frac * full[-1])) + 1
        spec1 = TrainSpec(model, dataclasses.replace(schedule, max_steps=s1),
                          data.description + f";enc=bpe;cpt=phase1;of={len(full)}", cfg.batch_size, cfg.seq_len, seed,
                          ckpt_every=max(10, s1 // 4))
        p1 = train(PAPER_ID, spec1, base, {"heldout": data.eval_sets["bpe"].windows}, keep_weights=True,
                   module=lambda: ContinuedLM(model, spec1.optim, schedule), **_trainer_kwargs(cfg))
        rest = int(cfg.train_bytes - full[s1 - 1])
        for e in ENCODINGS:
            # phase 2 continues the base data order (offset s1): the BPE arm sees exactly what a whole run would
            batches = ShiftedBatches(_batches(cfg, data, e, seed), s1)
            cum = steps_for_bytes(batches, data.byte_len, max(rest, 1))
            stretch = (len(full) - s1) / len(cum)
            opt2 = dataclasses.replace(schedule, max_steps=len(cum))
            spec2 = TrainSpec(model, opt2, data.description + f";cpt=phase2;from={p1['key']};"
                              f"enc={_encoding_tag(cfg, e)};offset={s1};stretch={stretch:.6f}", cfg.batch_size,
                              cfg.seq_len, seed, ckpt_every=max(10, len(cum) // 4))
            # a factory (built after the run is seeded); its weights are phase 1's
            module = (lambda o=opt2, st=stretch: ContinuedLM(model, o, schedule, offset=s1, stretch=st,
                                                             state_dict=p1["state_dict"]))
            res = train(PAPER_ID, spec2, batches, {"heldout": data.eval_sets[e].windows}, module=module,
                        **_trainer_kwargs(cfg))
            out.append({"arm": f"BPE → {e.upper()}", "encoding": e, "seed": seed, "result": res,
                        "phase1_steps": s1, "phase1_bytes": int(full[s1 - 1]), "phase2_steps": len(cum),
                        "phase2_bytes": int(cum[-1]), "phase1_bpb": bits_per_byte(p1["final"]["heldout"],
                                                                                  data.eval_sets["bpe"], data.byte_len)})
    return out


# ============================================================================================= LM frames


def lm_frame(runs: list[dict], data: Data) -> pd.DataFrame:
    """One row per (encoding, seed, evaluated step): bits per byte, per-token loss, training bytes and tokens."""
    rows = []
    for r in runs:
        ev = data.eval_sets[r["encoding"]]
        res = r["result"]
        points = sorted(res["evals"].get("heldout", {}).items()) + [(r["steps"], res["final"]["heldout"])]
        for step, loss in points:
            rows.append({"encoding": r["encoding"], "seed": r["seed"], "step": step, "final": step == r["steps"],
                         "train_bytes": int(r["cum_bytes"][step - 1]), "train_tokens": step * r["tokens_per_step"],
                         "bpb": bits_per_byte(loss, ev, data.byte_len), "nats_per_token": nats_per_token(loss, ev),
                         "wall_s": res["wall_s"], "n_params": res["n_params"]})
    return pd.DataFrame(rows)


def table1(frame: pd.DataFrame, data: Data) -> pd.DataFrame:
    """Table 1 analogue: held-out bits per byte at equal training bytes, mean and spread over seeds."""
    f = frame[frame["final"]]
    rows = []
    for e, g in f.groupby("encoding", sort=False):
        rows.append({"encoding": e, "seeds": len(g), "bpb_mean": g["bpb"].mean(),
                     "bpb_std": g["bpb"].std(ddof=1) if len(g) > 1 else float("nan"),
                     "bpb_per_seed": " / ".join(f"{x:.4f}" for x in g["bpb"]),
                     "nats_per_token_NOT_COMPARABLE": g["nats_per_token"].mean(),
                     "steps": int(g["step"].iloc[0]), "train_bytes": int(g["train_bytes"].mean()),
                     "train_tokens": int(g["train_tokens"].iloc[0]),
                     "eval_bytes": data.eval_sets[e].n_bytes, "eval_tokens": int(data.eval_sets[e].mask.sum()),
                     "n_params": int(g["n_params"].iloc[0]), "wall_s_mean": g["wall_s"].mean()})
    return pd.DataFrame(rows)


def paired_gap(frame: pd.DataFrame, key: str = "encoding", a: str = "bpe", b: str = "lbpe") -> pd.Series:
    """bpb(a) − bpb(b) per seed (positive: b is better), from the final evaluations."""
    f = frame[frame["final"]] if "final" in frame else frame
    p = f.pivot(index="seed", columns=key, values="bpb")
    return (p[a] - p[b]).dropna()


def loss_by_length(runs: list[dict], data: Data, bins) -> pd.DataFrame:
    """Analysis 6: loss and bits per byte by target-token length, per encoding (loss averaged over seeds)."""
    res = {}
    for e in ENCODINGS:
        ev = data.eval_sets[e]
        losses = torch.stack([r["result"]["final"]["heldout"] for r in runs if r["encoding"] == e]).mean(0)
        res[e] = (ev.targets[ev.mask].numpy(), losses[ev.mask].numpy())
    return A.loss_by_token_length(res, data.byte_len, bins=list(bins))


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


def speed_table(cfg: LBPEConfig, data: Data) -> pd.DataFrame:
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
        "LBPE scan (ours, Python)": lambda: make_encoder(tok, mode="scan", tie_break=cfg.tie_break).encode_batch,
        "LBPE merge loop (ours, Python)": lambda: make_encoder(tok, mode="merge").encode_batch,
    }
    df = A.encoding_speed(texts, encoders, repeats=cfg.speed_repeats)
    hf = [e.ids for e in tok.encode_batch(texts)]
    same = make_encoder(tok, mode="bpe").encode_batch(texts) == hf
    df["ids_equal_hf_bpe"] = [True if "Rust" in n else (same if n.startswith("BPE") else False) for n in df["encoder"]]
    rust = df[(df["encoder"] == "HF tokenizers BPE (Rust)") & (df["cache"] == "cold")]["seconds"].iloc[0]
    df["times_slower_than_rust"] = df["seconds"] / rust
    return df


def long_word(data: Data, n: int) -> str:
    """One pre-token of ``n`` byte units: the held-out text's ASCII letters run together (real letter statistics,
    no word boundary, so the encoders' per-word cost is exposed)."""
    letters = "".join(c for d in data.heldout_docs for c in d.text if c.isascii() and c.isalpha())
    while len(letters) < n:
        letters += letters
    return letters[:n]


def complexity_frame(cfg: LBPEConfig, data: Data, repeats: int = 3) -> pd.DataFrame:
    """Seconds to encode one long pre-token of each length with the LBPE scan and rank BPE (no cache)."""
    encs = {"lbpe": make_encoder(data.tok, mode="scan", tie_break=cfg.tie_break), "bpe": make_encoder(data.tok, mode="bpe")}
    rows = []
    for n in cfg.complexity_lengths:
        w = long_word(data, n)
        for e, enc in encs.items():
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                toks = enc._encode_units(w)
                best = min(best, time.perf_counter() - t0)
            assert "".join(toks) == w
            rows.append({"encoder": e, "length": n, "seconds": best, "n_tokens": len(toks), "max_token_len": enc.max_len})
    return pd.DataFrame(rows)


def loglog_slope(frame: pd.DataFrame, encoder: str) -> tuple[float, tuple[float, float] | None]:
    """Slope of log(seconds) on log(length) and its 95% t-interval (1: linear in |T|, 2: quadratic)."""
    from scipy import stats

    g = frame[frame["encoder"] == encoder]
    r = stats.linregress(np.log(g["length"]), np.log(g["seconds"]))
    if len(g) < 3:
        return float(r.slope), None
    h = r.stderr * stats.t.ppf(0.975, len(g) - 2)
    return float(r.slope), (float(r.slope - h), float(r.slope + h))


# ============================================================================================ tables, figures


def _axes(n, w=5.0, h=3.6):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(w * n, h), squeeze=False)
    return fig, axes[0]


def fig1(occ: pd.DataFrame):
    """Motivation: under BPE, total occurrences and occurrences per vocabulary entry by token length."""
    d = occ[occ["encoding"] == "bpe"]
    fig, (a, b) = _axes(2)
    a.bar(d["token_len"], d["occurrences"], color="C0")
    a.set_yscale("log")
    a.set_xlabel("token length (bytes)")
    a.set_ylabel("occurrences in the corpus")
    a.set_title("BPE: total occurrences by length")
    b.bar(d["token_len"], d["mean_per_entry"], color="C0")
    b.set_yscale("log")
    b.set_xlabel("token length (bytes)")
    b.set_ylabel("occurrences per vocabulary entry")
    b.set_title("BPE: per entry (the learning signal)")
    fig.tight_layout()
    return fig


def segmentation_table(cfg: LBPEConfig, data: Data, n: int = 12) -> pd.DataFrame:
    """fig2's content: the spec's worked example (toy vocabulary) and frequent held-out words segmented
    differently by BPE and LBPE (ByteLevel strings, Ġ = space)."""
    ranks = {("a", "b"): 0, ("b", "c"): 1, ("bc", "d"): 2}
    vocab = {"a": -1, "b": -1, "c": -1, "d": -1, "x": -1, "ab": 0, "bc": 1, "bcd": 2}
    toy = pd.DataFrame([{"word": "abcd (toy: merges a+b, b+c, bc+d)", "count": None,
                         "bpe": " | ".join(bpe_encode_word(list("abcd"), ranks)),
                         "lbpe": " | ".join(lbpe_encode_word(list("abcd"), vocab, 3, tie_break=cfg.tie_break))}])
    text = "".join(d.text for d in data.eval_docs)
    ex = A.segmentation_examples({"bpe": data.encoders["bpe"], "lbpe": data.encoders["lbpe"]}, text, n=n)
    return pd.concat([toy, ex], ignore_index=True)


def fig2(seg: pd.DataFrame):
    """Illustration: the same words under BPE (merge rank first) and LBPE (longest first)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.25 * len(seg) + 0.5))
    ax.axis("off")
    cells = [[str(r["word"]), r["bpe"], r["lbpe"]] for _, r in seg.iterrows()]
    t = ax.table(cellText=cells, colLabels=["word", "BPE (rank order)", "LBPE (longest first)"], loc="center",
                 cellLoc="left", colLoc="left")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    t.auto_set_column_width([0, 1, 2])
    ax.set_title("Segmentation of the same words (tokens separated by |; Ġ = the leading space)", fontsize=9)
    fig.tight_layout()
    return fig


def fig3(occ: pd.DataFrame):
    """BPE vs LBPE: occurrences by token length (log scale) and their ratio LBPE / BPE."""
    fig, (a, b) = _axes(2)
    piv = occ.pivot(index="token_len", columns="encoding", values="occurrences")
    x = np.arange(len(piv.index))
    for i, e in enumerate(ENCODINGS):
        a.bar(x + (i - 0.5) * 0.4, piv[e].to_numpy(), 0.4, label=e.upper())
    a.set_xticks(x, [str(v) for v in piv.index])
    a.set_yscale("log")
    a.set_xlabel("token length (bytes)")
    a.set_ylabel("occurrences")
    a.legend()
    ratio = piv["lbpe"] / piv["bpe"].where(piv["bpe"] > 0)
    b.bar(x, ratio.to_numpy() - 1.0, bottom=1.0, color=np.where(ratio.to_numpy() >= 1, "C2", "C3"))
    b.axhline(1.0, color="k", lw=0.6)
    b.set_xticks(x, [str(v) for v in piv.index])
    b.set_xlabel("token length (bytes)")
    b.set_ylabel("occurrences LBPE / BPE")
    fig.tight_layout()
    return fig


def fig_bpb_curve(frame: pd.DataFrame):
    """Held-out bits per byte against training bytes, each seed (points) and the seed mean (line)."""
    fig, (ax,) = _axes(1, 5.5, 3.8)
    for i, e in enumerate(ENCODINGS):
        g = frame[frame["encoding"] == e]
        ax.plot(g["train_bytes"] / 1e6, g["bpb"], "o", ms=3, color=f"C{i}", alpha=0.6)
        m = g.groupby("step").agg(x=("train_bytes", "mean"), y=("bpb", "mean")).sort_values("x")
        ax.plot(m["x"] / 1e6, m["y"], "-", color=f"C{i}", label=e.upper())
    ax.set_xlabel("training bytes (MB)")
    ax.set_ylabel("held-out bits per byte")
    ax.legend()
    fig.tight_layout()
    return fig


def fig_complexity(frame: pd.DataFrame):
    fig, (ax,) = _axes(1, 5.0, 3.6)
    for e, g in frame.groupby("encoder"):
        s, _ = loglog_slope(frame, e)
        ax.loglog(g["length"], g["seconds"], "o-", label=f"{e.upper()} (slope {s:.2f})")
    ax.set_xlabel("pre-token length |T| (bytes)")
    ax.set_ylabel("seconds (pure Python, no cache)")
    ax.legend()
    fig.tight_layout()
    return fig


# ===================================================================================================== claims


def _log_ci(ci):
    return None if ci is None else (math.log(max(ci[0], 1e-300)), math.log(max(ci[1], 1e-300)))


def seed_gap_claim(claim_id: str, claim: str, gaps: pd.Series, frame: pd.DataFrame, evidence: str,
                   what: str, labels: tuple[str, str] = ("BPE", "LBPE")) -> C.Claim:
    """bpb(a) − bpb(b) over paired seeds (a = BPE, b = LBPE unless ``labels`` says otherwise): reproduced when the
    t-interval excludes 0 on the positive side."""
    ci = C.t_interval(gaps.to_numpy())
    f = frame[frame["final"]]
    spread = {e: f[f["encoding"] == e]["bpb"] for e in f["encoding"].unique()}
    detail = "; ".join(f"{e.upper()} {s.mean():.4f} ± {s.std(ddof=1) if len(s) > 1 else float('nan'):.4f}"
                       for e, s in spread.items())
    return C.Claim(
        claim_id, claim, f"held-out bits per byte, {labels[0]} − {labels[1]} ({what}); rule: 95% t-interval over "
        f"paired seeds excludes 0 (positive = {labels[1]} better)", None, float(gaps.mean()) if len(gaps) else None,
        C.fmt_ci(ci, f"95% t over {len(gaps)} seeds; per-seed gaps " + " / ".join(f"{g:+.4f}" for g in gaps)
                 + f"; bpb mean ± std: {detail}"),
        C.verdict_from_interval(ci, paper_direction="positive"), evidence)


def claims(cfg: LBPEConfig, data: Data, freq_point: dict, freq_boot: pd.DataFrame, summary: pd.DataFrame,
           lm: pd.DataFrame, cpt: pd.DataFrame | None, complexity: pd.DataFrame,
           scaffold_lm: pd.DataFrame | None = None) -> list[C.Claim]:
    out = []
    nb = f"95% bootstrap over documents ({cfg.n_boot} resamples)"
    L = cfg.long_min_len
    # C1: under BPE long tokens occur far less often than short ones (per vocabulary entry).
    v, ci = freq_point["c1_ratio"], C.percentile_interval(freq_boot["c1_ratio"])
    out.append(C.Claim(
        "C1", "Under BPE, long tokens occur far less often than short tokens",
        f"BPE occurrences per vocabulary entry, tokens < {L} bytes over tokens ≥ {L} bytes; rule: interval > 1",
        None, v, C.fmt_ci(ci, nb), C.verdict_from_interval(_log_ci(ci), paper_direction="positive"), "fig1"))
    # C2: LBPE keeps the vocabulary and ids; only the order of production changes (decoding unchanged).
    enc = data.encoders["lbpe"]
    ok = [set(np.unique(ids)) <= set(enc.vocab.values()) and enc.decode(ids.tolist()) == d.text
          for ids, d in zip(data.eval_ids["lbpe"], data.eval_docs)]
    out.append(C.Claim(
        "C2", "LBPE keeps BPE's vocabulary and ids (only the encoding order changes), so decoding is unchanged",
        "fraction of held-out documents whose LBPE ids all lie in BPE's V and decode back to the exact text; "
        "rule: = 1", None, float(np.mean(ok)), f"{sum(ok)}/{len(ok)} documents",
        C.verdict_threshold(float(np.mean(ok)), None, at_least=1.0), "extra_segmentation, fig2"))
    # C3: LBPE shifts occurrences to long tokens, away from short ones, and flattens the distribution.
    for key, cid, text, direction in (
            ("ratio_long", "C3-long", f"LBPE makes long tokens (≥ {L} bytes) more frequent", "positive"),
            ("ratio_short", "C3-short", f"LBPE makes short multi-byte tokens (2-{L - 1} bytes) less frequent",
             "negative"),
            ("ratio_single", "C3-single", "LBPE makes the shortest tokens (single bytes) less frequent", "negative")):
        v, ci = freq_point[key], C.percentile_interval(freq_boot[key])
        out.append(C.Claim(cid, text, "total occurrences LBPE / BPE in the corpus; rule: interval "
                           + ("> 1" if direction == "positive" else "< 1"), None, v, C.fmt_ci(ci, nb),
                           C.verdict_from_interval(_log_ci(ci), paper_direction=direction), "fig3, extra_occurrence"))
    v, ci = freq_point["gini_delta"], C.percentile_interval(freq_boot["gini_delta"])
    s = summary.set_index("encoding")
    out.append(C.Claim(
        "C3-flat", "LBPE smooths (flattens) the token-frequency distribution",
        "Gini coefficient over V, LBPE − BPE (negative = flatter); rule: interval < 0", None, v,
        C.fmt_ci(ci, nb) + f"; entropy {s.loc['bpe', 'entropy_bits']:.3f} → {s.loc['lbpe', 'entropy_bits']:.3f} bits",
        C.verdict_from_interval(ci, paper_direction="negative"), "extra_rank_frequency, extra_utilisation"))
    # C4: LBPE beats BPE in language modelling (bits per byte at equal training bytes, paired seeds).
    out.append(seed_gap_claim("C4-lm", "LBPE trains better language models than BPE (the paper: higher downstream "
                              "accuracy; here: lower held-out bits per byte)", paired_gap(lm), lm,
                              "table1, extra_bpb_curve, extra_lm_runs", "equal training bytes, from scratch"))
    # C4-cpt: continual pre-training with LBPE helps (paper scale).
    cpt_text = "Continual pre-training of a BPE model on LBPE-encoded data beats continuing on BPE data"
    if cpt is None or cpt.empty:
        out.append(C.not_run("C4-cpt", cpt_text, "held-out bits per byte, BPE→BPE − BPE→LBPE"))
    else:
        out.append(seed_gap_claim("C4-cpt", cpt_text, paired_gap(cpt), cpt, "table3",
                                  f"switch at {cfg.cpt_switch_frac:.0%} of the bytes"))
    sc_text = "LBPE stacks with Scaffold-BPE for further gains"
    if scaffold_lm is None or scaffold_lm.empty:
        out.append(C.not_run("C4-scaffold", sc_text, "held-out bits per byte, Scaffold-BPE − Scaffold-BPE + LBPE"))
    else:
        out.append(seed_gap_claim("C4-scaffold", sc_text, paired_gap(scaffold_lm, a="scaffold_bpe", b="scaffold_lbpe"),
                                  scaffold_lm, "table4, extra_scaffold",
                                  f"LBPE composed by {cfg.scaffold_compose!r}, equal training bytes",
                                  labels=("Scaffold-BPE", "Scaffold-BPE + LBPE")))
    # C5: encoding is O(m·|T|): time grows linearly with the pre-token length (rank BPE: quadratically).
    s_l, ci_l = loglog_slope(complexity, "lbpe")
    s_b, ci_b = loglog_slope(complexity, "bpe")
    out.append(C.Claim(
        "C5", "LBPE encodes in O(m·|T|) time (vs O(|T|²) for naive BPE)",
        "log-log slope of encoding time against the length of one pre-token (1 = linear, 2 = quadratic); "
        "rule: interval < 1.5", None, s_l,
        C.fmt_ci(ci_l, f"95% t over {len(cfg.complexity_lengths)} lengths") + f"; rank BPE (ours) slope {s_b:.2f}",
        C.verdict_threshold(s_l, ci_l, at_most=1.5), "extra_complexity"))
    return out
