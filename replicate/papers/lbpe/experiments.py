"""LBPE's experiments, as one plan (``run_experiments(cfg)`` -> the bundle ``report.py`` reads).

Steps, in order (the notebook runs one per cell):

- ``data``: a byte-level BPE trained on the training documents; the BPE and LBPE encodings of the training,
  held-out and evaluation text (the same bytes, exactly), the training streams and the evaluation sets.
- ``frequency``, ``freq_boot``, ``segmentation``, ``ablation``: the frequency analyses of spec §5 on both
  encodings, their bootstrap over documents (the frequency claims), the words segmented differently, and the
  vocabulary-size ablation (table2).
- ``lm_runs``, ``loss_by_length``: one LM per (encoding, seed) at equal training bytes, scored in bits per byte; the loss
  by target-token length.
- ``cpt``: continual pre-training, BPE then BPE or LBPE data (paper scale; on at smoke to test the path).
- ``scaffold_data``, ``scaffold_summary``, ``scaffold_lm``: Scaffold-BPE and LBPE on it (Table 4; its LMs at
  paper scale, on at smoke).
- ``speed``, ``complexity``: encoding throughput against HF's Rust BPE, and the O(m·|T|) slope fits.
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

from replicate.data import corpora, lm, tokenizer
from replicate.data.evaluation import (
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
from replicate.models.trainer import TrainSpec, continued, train
from replicate.papers.lbpe import ENCODINGS, PAPER_ID, LBPEConfig
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


@dataclass(frozen=True)
class FrequencyBootstrap:
    point: dict  # frequency_stats on the whole text
    boot: pd.DataFrame  # one row per resample


@plan.step
def freq_boot(cfg: LBPEConfig, data: Data) -> FrequencyBootstrap:
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
    return FrequencyBootstrap(point, pd.DataFrame(rows))


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
                     "single_ratio_lbpe_over_bpe": st["ratio_single"], "gini_lbpe_minus_bpe": st["gini_delta"],
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


def lm_batches(cfg: LBPEConfig, data: Data, encoding: str, seed: int) -> lm.Batches:
    """The training batches of one encoding and seed (a pure function of (seed, step))."""
    return lm.Batches((lm.Stream(data.streams[encoding]),), (1.0,), cfg.batch_size, cfg.seq_len, seed)


def run_lm(cfg: LBPEConfig, data: Data) -> list[dict]:
    """One run per (encoding, seed) at ``train_bytes`` training bytes each; returns one record per run."""
    out = []
    for seed in range(cfg.seed, cfg.seed + cfg.n_seeds):
        for e in data.encoders:
            batches = lm_batches(cfg, data, e, seed)
            cum = steps_for_bytes(batches, data.byte_len, cfg.train_bytes)
            spec = TrainSpec(cfg.decoder(data.n_ids), cfg.optim(len(cum)),
                             data.description + f";enc={encoding_tag(cfg, e)}", cfg.batch_size, cfg.seq_len, seed,
                             eval_steps=eval_steps_at(cum, cfg.n_eval_checkpoints), ckpt_every=max(10, len(cum) // 4))
            res = train(PAPER_ID, spec, batches, {"heldout": data.eval_sets[e].windows}, **cfg.trainer_kwargs())
            out.append({"encoding": e, "seed": seed, "result": res, "cum_bytes": cum, "steps": len(cum),
                        "tokens_per_step": cfg.batch_size * cfg.seq_len})
    return out


@dataclass(frozen=True)
class LMArm:
    runs: list  # one record per (encoding, seed): the training result, its byte counts
    frame: pd.DataFrame  # one row per (encoding, seed, evaluated step): bits per byte, per-token loss, ...


@plan.step
def lm_runs(cfg: LBPEConfig, data: Data) -> LMArm:
    runs = run_lm(cfg, data)
    return LMArm(runs, lm_frame(runs, data))


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
        spec1 = TrainSpec(model, dataclasses.replace(schedule, max_steps=s1), data.description + ";enc=bpe",
                          cfg.batch_size, cfg.seq_len, seed, ckpt_every=max(10, s1 // 4), lr_map=LRMap(schedule))
        p1 = train(PAPER_ID, spec1, base, {"heldout": data.eval_sets["bpe"].windows}, keep_weights=True,
                   **cfg.trainer_kwargs())
        rest = int(cfg.train_bytes - full[s1 - 1])
        for e in ENCODINGS:
            # phase 2 continues the base data order (offset s1): the BPE arm sees exactly what a whole run would
            batches = dataclasses.replace(lm_batches(cfg, data, e, seed), offset=s1)
            cum = steps_for_bytes(batches, data.byte_len, max(rest, 1))
            stretch = (len(full) - s1) / len(cum)  # phase 2's own steps mapped onto the rest of the schedule
            spec2 = continued(TrainSpec(model, dataclasses.replace(schedule, max_steps=len(cum)),
                                        data.description + f";enc={encoding_tag(cfg, e)};data_offset={s1}",
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
    return lm_frame(run_lm(cfg, scaffold_data), scaffold_data) if cfg.run_scaffold else None


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


@dataclass(frozen=True)
class Complexity:
    frame: pd.DataFrame  # seconds per (encoder, length)
    slopes: dict  # encoder -> (log-log slope, its 95% t-interval or None)


@plan.step
def complexity(cfg: LBPEConfig, data: Data) -> Complexity:
    frame = complexity_frame(cfg, data)
    return Complexity(frame, {e: loglog_slope(frame, e) for e in frame["encoder"].unique()})


run_experiments = plan.run_all
