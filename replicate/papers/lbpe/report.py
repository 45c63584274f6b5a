"""LBPE's tables, figures and claims: pure functions of the bundle (nothing here trains, encodes, fits or resamples;
every slope and bootstrap is in ``experiments.py``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from replicate import claims as C
from replicate import plotting
from replicate.experiments import Bundle
from replicate.notebook import peak_memory_gib
from replicate.data.ngram import learning_row
from replicate.tables import quantities
from replicate.tokenization import analysis as A

# ================================================================================================== set-up


def setup(b: Bundle) -> pd.DataFrame:
    """What ran, in numbers (the notebook's prose is generated from this table)."""
    return quantities(_setup_rows(b))


def _setup_rows(b: Bundle) -> list[tuple[str, object]]:
    d, cfg = b.data, b.cfg
    summ = run_summary(b.lm_runs.frame)
    nbytes = lambda docs: sum(len(x.text.encode("utf-8")) for x in docs)
    rows = [("training documents", len(d.train_docs)), ("held-out documents", len(d.heldout_docs)),
            ("training text (MB)", round(nbytes(d.train_docs) / 1e6, 2)), ("vocabulary", cfg.vocab_size),
            ("encodings in the frequency analyses", ", ".join(d.encoders)),
            ("evaluated held-out bytes", d.eval_sets["bpe"].n_bytes),
            ("count-model arm: held-out bytes", int(b.count_arm.frame["bytes"].iloc[0]))]
    for e in d.encoders:
        rows += [(f"training tokens, {e}", int(sum(len(x) for x in d.train_ids[e]))),
                 (f"evaluated tokens, {e}", int(d.eval_sets[e].mask.sum()))]
    rows += [("LM encodings", ", ".join(cfg.lm_arms)),
             ("LM parameters excluding input embeddings", int(summ["n_params"].iloc[0])),
             ("of which the untied LM head", cfg.d_model * d.n_ids),
             ("LM width / layers / heads / FFN", f"{cfg.d_model} / {cfg.n_layers} / {cfg.n_heads} / {cfg.d_ff}"),
             ("LM context (tokens) / batch", f"{cfg.seq_len} / {cfg.batch_size}"),
             ("LM peak learning rate / warm-up", f"{cfg.lr:g} / {cfg.warmup_frac:.0%}"),
             ("LM seeds per encoding", cfg.n_seeds), ("LM training bytes per run", cfg.train_bytes),
             ("LM steps per run (BPE)", int(summ[summ["encoding"] == "bpe"]["step"].iloc[0])),
             ("LM epochs over the training text", round(cfg.train_bytes / nbytes(d.train_docs), 2)),
             ("LM evaluations averaged per run", int(summ["n_last"].iloc[0])),
             ("equivalence margin (bpb, pre-registered)", cfg.equivalence_margin)]
    return rows


def describe(b: Bundle) -> str:
    """The notebook's 'what ran' paragraph, generated from :func:`setup` (Markdown)."""
    v = dict(_setup_rows(b))
    return (f"One byte-level BPE vocabulary of {v['vocabulary']:,} tokens trained on {v['training documents']} "
            f"plays ({v['training text (MB)']} MB; {v['held-out documents']} held out), encoded as "
            f"{v['encodings in the frequency analyses']} for the frequency analyses. The language models compare "
            f"{v['LM encodings']}: each has {v['LM parameters excluding input embeddings']:,} parameters excluding the "
            f"input embeddings ({v['of which the untied LM head']:,} of them in the untied LM head; width / "
            f"layers / heads / FFN {v['LM width / layers / heads / FFN']}, context / batch "
            f"{v['LM context (tokens) / batch']}, peak learning rate / warm-up {v['LM peak learning rate / warm-up']}) "
            f"and trains on {v['LM training bytes per run']:,} bytes ({v['LM epochs over the training text']} epochs "
            f"of the training text, {v['LM steps per run (BPE)']} steps for BPE), {v['LM seeds per encoding']} seeds "
            f"per encoding; each run's score is the mean of its last {v['LM evaluations averaged per run']} "
            f"evaluations in bits per byte on {v['evaluated held-out bytes']:,} held-out bytes "
            f"({v['evaluated tokens, bpe']:,} BPE tokens, {v['evaluated tokens, lbpe']:,} LBPE tokens). The "
            f"count-model arm scores all {v['count-model arm: held-out bytes']:,} held-out bytes. Pre-registered "
            f"equivalence margin: {v['equivalence margin (bpb, pre-registered)']} bits per byte.")


SPEC_TLM = {"d_model": 256, "n_layers": 4, "n_heads": 4, "d_ff": 688, "seq_len": 256, "batch_size": 16, "lr": 1e-3,
            "warmup_frac": 0.02}  # the spec's T-LM (§6 small)


def model_notes(b: Bundle) -> str:
    """The notebook's 'model settings' paragraph (Markdown), generated from the config and the validity table."""
    cfg = b.cfg
    diff = [f"`{k}` {getattr(cfg, k):g} (spec {v:g})" for k, v in SPEC_TLM.items() if getattr(cfg, k) != v]
    t = validity_table(b)
    s = run_summary(b.lm_runs.frame)
    text = ("Ours: " + ", ".join(diff) + "." if diff else "Ours: the spec's T-LM settings.")
    train_mb = sum(len(x.text.encode()) for x in b.data.train_docs) / 1e6
    text += (" Why: `small` has 15 minutes on two CPU cores for every run. The spec's T-LM (about 3.2 M non-embedding "
             "parameters, about 5 minutes per run, one seed) would not get through its own training text in that time "
             "on a CPU, and a model that stops above a count model of the text measures how fast it starts, not how "
             "well it models the text: the previous design of this notebook (the model below at batch 32, 200 steps, "
             "a 2% warm-up) ended at 2.56 bits per byte, above the ≈ 2.44 of the Kneser-Ney bigram. So the model is "
             f"smaller ({int(s['n_params'].iloc[0]):,} parameters excluding the input embeddings, the DESIGN §5 "
             "calibration, with a "
             "shorter context), the learning rate higher and the warm-up longer; at this size the runs are limited by "
             "the number of updates (measured before this design, BPE seed 0 on 2.7 MB: batch 32 ended at 2.55 bits "
             "per byte at learning rate 6e-3 and was still near 2.5 twenty steps before its end at 3e-3; batch 16 "
             "ended at 2.36), so the batch is the spec's "
             f"16. Each run trains on {cfg.train_bytes / 1e6:g} MB ({cfg.train_bytes / 1e6 / train_mb:.2f} epochs of "
             f"the {train_mb:.1f} MB of training plays), which leaves time for {cfg.n_seeds} paired seeds per "
             "encoding. The learning rate and batch were tuned on BPE runs only (the baseline arm), which if "
             "anything favours BPE. The runs are not converged (the curve is still falling); what the comparison "
             "needs is that both arms have learned the text past a count model of the same data, which the validity "
             "check tests. ")
    ok = bool(t[list(VALIDITY_CONDITIONS)].all(axis=None))
    over = lambda bar: (t[f"{bar}_bpb"] - t["bpb"])  # positive: the run is below the bar (better)
    text += (f"Against the bars (`extra_validity`, bits per byte on the same held-out bytes): the runs end at "
             f"{t['bpb'].min():.3f}-{t['bpb'].max():.3f} (the mean of their last evaluations). The bars that decide "
             "validity are the count models of the *same data* (DESIGN §7), fitted on exactly the windows each run "
             f"trained on: the Kneser-Ney trigram of those windows scores {t['seen_trigram_bpb'].min():.3f}-"
             f"{t['seen_trigram_bpb'].max():.3f}, so every run is below it by {over('seen_trigram').min():.3f}-"
             f"{over('seen_trigram').max():.3f}; their bigram {t['seen_bigram_bpb'].min():.3f}-"
             f"{t['seen_bigram_bpb'].max():.3f}; the add-one unigram {t['unigram_bpb'].min():.3f}-"
             f"{t['unigram_bpb'].max():.3f}. The Kneser-Ney bigram of the whole training text (issue #13's bar, "
             f"{t['full_bigram_bpb'].min():.3f}-{t['full_bigram_bpb'].max():.3f}) is a condition too, and the runs "
             f"are below it by {over('full_bigram').min():.3f}-{over('full_bigram').max():.3f}. "
             + ("Every run passes all of these." if ok else "NOT every run passes them, so the LM claim is "
                "`invalid`.")
             + f" Not a condition, reported: the Kneser-Ney **trigram of the whole training text** scores "
             f"{t['full_trigram_bpb'].min():.3f}-{t['full_trigram_bpb'].max():.3f}, and "
             + (f"{int((over('full_trigram') < 0).sum())} of {len(t)} runs are above it (by up to "
                f"{-over('full_trigram').min():.3f} bits per byte)" if (over('full_trigram') < 0).any()
                else "every run is below it")
             + f". That model is fitted on {train_mb / (cfg.train_bytes / 1e6):.1f} times the bytes a run reads "
             "(and a run's random windows repeat some text and miss some), so it is not the same data; but it "
             "says plainly where these models stand: at about the level of a trigram of the text, past a bigram. "
             "C4-lm therefore compares two models that have learned their own data past a trigram of it, not two "
             "converged models; more steps do not fit in `small`'s budget.")
    return text


# ================================================================================================== tables


def run_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (encoding, seed): ``bpb`` the mean of the run's last evaluations (``last`` rows; the final one
    where a frame has no such column), ``bpb_final`` the final evaluation, ``nats_per_token`` as ``bpb``."""
    frame = frame.rename(columns={"nats_per_token_NOT_COMPARABLE": "nats_per_token"})
    last = frame[frame["last"]] if "last" in frame else frame[frame["final"]]
    fin = frame[frame["final"]].set_index(["encoding", "seed"])
    g = last.groupby(["encoding", "seed"], sort=False)
    keep = [c for c in ("bpb", "step", "train_bytes", "train_tokens", "wall_s", "n_params") if c in fin]
    out = g.agg(bpb=("bpb", "mean"), nats_per_token=("nats_per_token", "mean"), n_last=("bpb", "size")).join(
        fin[keep].rename(columns={"bpb": "bpb_final"}))
    out["final"] = True
    return out.reset_index()


def table1(frame: pd.DataFrame, data) -> pd.DataFrame:
    """Table 1 analogue: held-out bits per byte at equal training bytes (each run: the mean of its last evaluations),
    mean and spread over seeds (``frame``: an LM frame of the bundle, ``data``: the data its encodings come from)."""
    f = run_summary(frame)
    rows = []
    for e, g in f.groupby("encoding", sort=False):
        rows.append({"encoding": e, "seeds": len(g), "bpb_mean": g["bpb"].mean(),
                     "bpb_std": g["bpb"].std(ddof=1) if len(g) > 1 else float("nan"),
                     "bpb_per_seed": " / ".join(f"{x:.4f}" for x in g["bpb"]),
                     "bpb_final_mean": g["bpb_final"].mean(), "evals_averaged": int(g["n_last"].iloc[0]),
                     "nats_per_token_NOT_COMPARABLE": g["nats_per_token"].mean(),
                     "steps": int(g["step"].iloc[0]), "train_bytes": int(g["train_bytes"].mean()),
                     "train_tokens": int(g["train_tokens"].iloc[0]),
                     "eval_bytes": data.eval_sets[e].n_bytes, "eval_tokens": int(data.eval_sets[e].mask.sum()),
                     "n_params": int(g["n_params"].iloc[0]), "wall_s_mean": g["wall_s"].mean()})
    return pd.DataFrame(rows)


VALIDITY_CONDITIONS = ("learned", "in_range", "beats_bigram", "beats_seen_trigram", "beats_full_bigram")


def validity_table(b: Bundle) -> pd.DataFrame:
    """Every LM run beside its count models on the same held-out text (``lm_runs.bars``): the run's loss (the mean of
    its last evaluations) in nats per token and bits per byte. Conditions (``VALIDITY_CONDITIONS``): ``learned``
    (clearly below the unigram), ``in_range`` ((0, ln V]), ``beats_bigram`` and ``beats_seen_trigram`` (below the
    Kneser-Ney bigram and trigram of its own training windows: the same data, DESIGN §7) and ``beats_full_bigram``
    (below the bigram of the whole training text: the bar issue #13 sets). Reported, not a condition:
    ``beats_full_trigram`` (the trigram of the whole training text, more text than a run of under an epoch reads)."""
    s = run_summary(b.lm_runs.frame).set_index(["encoding", "seed"])
    rows = []
    for r in b.lm_runs.bars.itertuples():
        loss, bpb = float(s.loc[(r.encoding, r.seed), "nats_per_token"]), float(s.loc[(r.encoding, r.seed), "bpb"])
        row = learning_row(loss, r.seed, r.unigram, r.full_bigram, {r.seed: r.seen_bigram}, b.data.n_ids,
                           b.cfg.learn_margin)
        rows.append({"variant": r.encoding, "seed": r.seed, "loss": loss, "bpb": bpb,
                     "seen_trigram_bpb": r.seen_trigram_bpb, "full_trigram_bpb": r.full_trigram_bpb,
                     "full_bigram_bpb": r.full_bigram_bpb, "seen_bigram_bpb": r.seen_bigram_bpb,
                     "unigram_bpb": r.unigram_bpb, **row, "seen_trigram": r.seen_trigram,
                     "full_trigram": r.full_trigram, "beats_seen_trigram": bool(loss < r.seen_trigram),
                     "beats_full_trigram": bool(loss < r.full_trigram)})
    return pd.DataFrame(rows)


def lm_validity(b: Bundle) -> C.Validity:
    t = validity_table(b)
    weak = t[~t["beats_full_bigram"]]
    weak3 = t[~t["beats_seen_trigram"]]
    return C.learning_validity(t, float(t["unigram"].max()), b.cfg.learn_margin) + C.Validity.check(
        beats_seen_trigram=(weak3.empty, "runs not below the Kneser-Ney trigram of their own training windows on the "
                            "same held-out bytes: " + ", ".join(f"{r.variant}/seed {r.seed} ({r.bpb:.3f} vs "
                                                                f"{r.seen_trigram_bpb:.3f} bpb)"
                                                                for r in weak3.itertuples())),
        beats_full_bigram=(weak.empty, "runs not below the Kneser-Ney bigram of the whole training text on the same "
                           "held-out bytes: " + ", ".join(f"{r.variant}/seed {r.seed} ({r.bpb:.3f} vs "
                                                          f"{r.full_bigram_bpb:.3f} bpb)" for r in weak.itertuples())))


def trigram_note(b: Bundle) -> str:
    """Where the runs stand against the whole-text trigram (reported beside C4-lm, not a condition)."""
    t = validity_table(b)
    d = t["bpb"] - t["full_trigram_bpb"]
    return (f"models at trigram level: every run is below the Kneser-Ney trigram of its own training windows (by "
            f"{(t['seen_trigram_bpb'] - t['bpb']).min():.3f}-{(t['seen_trigram_bpb'] - t['bpb']).max():.3f} bpb, a "
            f"validity condition), but {int((d > 0).sum())}/{len(t)} runs are above the trigram of the whole "
            f"training text ({t['full_trigram_bpb'].min():.3f}-{t['full_trigram_bpb'].max():.3f} bpb; run − trigram "
            f"{d.min():+.3f} to {d.max():+.3f}), which reads more text than a run does (reported, not a condition)")


def count_table(b: Bundle) -> pd.DataFrame:
    """extra_count_arm: each encoding's Kneser-Ney bigram and trigram on all held-out text, with its paired
    block-bootstrap interval and its gap to BPE under the same model (positive: the encoding is better)."""
    f = b.count_arm.frame.copy()
    boot = b.count_arm.boot
    bpe = f[f["encoding"] == "bpe"].set_index("model")["bpb"]
    key = [f"{m}:{e}" for m, e in zip(f["model"], f["encoding"])]
    f["bpb_lo"] = [C.percentile_interval(boot[k])[0] for k in key]
    f["bpb_hi"] = [C.percentile_interval(boot[k])[1] for k in key]
    f["gap_vs_bpe"] = [bpe[m] - v for m, v in zip(f["model"], f["bpb"])]
    gaps = [boot[f"{m}:bpe"] - boot[k] for m, k in zip(f["model"], key)]
    f["gap_lo"] = [C.percentile_interval(g)[0] for g in gaps]
    f["gap_hi"] = [C.percentile_interval(g)[1] for g in gaps]
    f["blocks"] = b.count_arm.n_blocks
    f["block_bytes"] = b.count_arm.block_bytes
    return f


def count_per_play(b: Bundle) -> pd.DataFrame:
    """extra_count_arm_per_play: the count models' gap to BPE on each held-out play on its own (BPE − encoding,
    bits per byte; positive: the encoding is better): the spread the block bootstrap must cover."""
    d = b.count_arm.per_doc
    piv = d.pivot_table(index=["model", "play"], columns="encoding", values="bpb", sort=False)
    out = piv[["bpe"]].rename(columns={"bpe": "bpe_bpb"})
    for e in piv.columns:
        if e != "bpe":
            out[f"gap_{e}"] = piv["bpe"] - piv[e]
    out["bytes"] = d[d["encoding"] == "bpe"].set_index(["model", "play"])["bytes"]
    return out.reset_index()


def occurrence_pivot(b: Bundle) -> pd.DataFrame:
    """Occurrences by token length, one column per encoding (fig3's numbers)."""
    return b.frequency["occurrence"].pivot(index="token_len", columns="encoding", values="occurrences").reset_index()


def gaps(b: Bundle) -> pd.DataFrame:
    """The paired per-seed gaps of every LM comparison that ran (BPE − LBPE bits per byte, ...)."""
    rows = [{"comparison": f"BPE − {e.upper()}", "seed": s, "bpb_gap": g} for e in b.cfg.lm_arms if e != "bpe"
            for s, g in C.paired_gap(run_summary(b.lm_runs.frame), "bpe", e).items()]
    if b.cpt is not None:
        rows += [{"comparison": "BPE→BPE − BPE→LBPE", "seed": s, "bpb_gap": g}
                 for s, g in C.paired_gap(b.cpt, "bpe", "lbpe").items()]
    if b.scaffold_lm is not None:
        rows += [{"comparison": "Scaffold-BPE − Scaffold-BPE + LBPE", "seed": s, "bpb_gap": g}
                 for s, g in C.paired_gap(run_summary(b.scaffold_lm), "scaffold_bpe", "scaffold_lbpe").items()]
    return pd.DataFrame(rows, columns=["comparison", "seed", "bpb_gap"])


# ================================================================================================= figures


def fig1(b: Bundle):
    """Motivation: under BPE, total occurrences and occurrences per vocabulary entry by token length."""
    d = b.frequency["occurrence"][b.frequency["occurrence"]["encoding"] == "bpe"]
    fig, (a, c) = plotting.axes(2)
    a.bar(d["token_len"], d["occurrences"], color="C0")
    a.set_yscale("log")
    a.set_xlabel("token length (bytes)")
    a.set_ylabel("occurrences in the corpus")
    a.set_title("BPE: total occurrences by length")
    c.bar(d["token_len"], d["mean_per_entry"], color="C0")
    c.set_yscale("log")
    c.set_xlabel("token length (bytes)")
    c.set_ylabel("occurrences per vocabulary entry")
    c.set_title("BPE: per entry (the learning signal)")
    return plotting.finish(fig)


def fig2(b: Bundle):
    """Illustration: the same words under BPE (merge rank first) and LBPE (longest first)."""
    import matplotlib.pyplot as plt

    seg = b.segmentation
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(seg) + 0.5))
    ax.axis("off")
    cells = [[str(r["word"]), r["bpe"], r["lbpe"]] for _, r in seg.iterrows()]
    t = ax.table(cellText=cells, colLabels=["word", "BPE (rank order)", "LBPE (longest first)"], loc="center",
                 cellLoc="left", colLoc="left")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    t.auto_set_column_width([0, 1, 2])
    ax.set_title("Segmentation of the same words (tokens separated by |; Ġ = the leading space)", fontsize=9)
    return plotting.finish(fig)


def length_ratios(b: Bundle) -> pd.DataFrame:
    """fig3's numbers: per token length, the vocabulary entries of that length, both encodings' occurrences, the
    ratio LBPE / BPE and its 95% bootstrap interval over documents (``freq_boot``)."""
    occ = b.frequency["occurrence"]
    piv = occ.pivot(index="token_len", columns="encoding", values="occurrences")
    nv = occ.drop_duplicates("token_len").set_index("token_len")["n_vocab"]
    rows = []
    for L in piv.index:
        col = f"len_ratio_{int(L)}"
        ci = C.percentile_interval(b.freq_boot.boot[col]) if col in b.freq_boot.boot else None
        rows.append({"token_len": int(L), "n_vocab": int(nv[L]), "bpe": int(piv.loc[L, "bpe"]),
                     "lbpe": int(piv.loc[L, "lbpe"]), "ratio": b.freq_boot.point.get(col, float("nan")),
                     "ratio_lo": ci[0] if ci else float("nan"), "ratio_hi": ci[1] if ci else float("nan")})
    return pd.DataFrame(rows)


FEW_ENTRIES = 10  # fig3: a token length with fewer vocabulary entries is a few tokens' story, drawn grey


def fig3(b: Bundle):
    """BPE vs LBPE: occurrences by token length (log scale), and their ratio LBPE / BPE with its 95% bootstrap
    interval over documents; each length is labelled with its number of vocabulary entries (a length held by one or
    two entries is one token's story, not a trend: grey when its interval includes 1 or it has fewer than
    ``FEW_ENTRIES`` entries). Colour = agreement with the paper's claim: green where the ratio moves the way it says
    (above 1 for long tokens, ≥ ``long_min_len`` bytes; below 1 for shorter ones), red where it moves against it."""
    r = length_ratios(b)
    fig, (a, c) = plotting.axes(2, 6.0, 3.8)
    piv = r.set_index("token_len")[["bpe", "lbpe"]]
    plotting.grouped_bars(a, piv.rename(columns=str.upper), log=True)
    a.set_xlabel("token length (bytes)")
    a.set_ylabel("occurrences")
    x = np.arange(len(r))
    sig = ((r["ratio_lo"] > 1) | (r["ratio_hi"] < 1)) & (r["n_vocab"] >= FEW_ENTRIES)
    claimed_up = r["token_len"] >= b.cfg.long_min_len  # the paper: long tokens up, short tokens down
    colors = np.where(~sig, "0.7", np.where((r["ratio"] >= 1) == claimed_up, "C2", "C3"))
    c.bar(x, r["ratio"] - 1.0, bottom=1.0, color=colors)
    c.errorbar(x, r["ratio"], yerr=[r["ratio"] - r["ratio_lo"], r["ratio_hi"] - r["ratio"]], fmt="none", ecolor="k",
               elinewidth=0.8, capsize=2)
    c.axhline(1.0, color="k", lw=0.6)
    c.set_xticks(x, [f"{L}\nn={n}" for L, n in zip(r["token_len"], r["n_vocab"])], fontsize=6)
    c.set_xlabel("token length (bytes); n = vocabulary entries of that length")
    c.set_ylabel("occurrences LBPE / BPE (95% bootstrap)")
    c.set_title(f"green: as the paper says (long up, short down); red: against it;\ngrey: interval includes 1, or "
                f"fewer than {FEW_ENTRIES} entries (not a trend)", fontsize=8)
    return plotting.finish(fig)


def fig_bpb_curve(b: Bundle):
    """Held-out bits per byte against training bytes, each seed (points) and the seed mean (line), with each
    encoding's count models on the same held-out bytes: the Kneser-Ney bigram of the whole training text (dashed) and
    the trigram of each run's own windows (dash-dot, seed mean): validity bars; the trigram of the whole training
    text (dotted): reported, not a condition."""
    fig, (ax,) = plotting.axes(1, 5.5, 3.8)
    plotting.seed_curves(ax, b.lm_runs.frame, "train_bytes", "bpb", "encoding", scale_x=1e-6,
                         labels={e: e.upper() for e in b.cfg.lm_arms})
    g = b.lm_runs.bars.groupby("encoding", sort=False)
    bars = g["full_bigram_bpb"].first()
    for i, (e, v) in enumerate(bars.items()):
        ax.axhline(v, color=f"C{i}", ls="--", lw=0.8, label=f"{e.upper()} KN bigram, whole text ({v:.3f})")
    for i, (e, v) in enumerate(g["seen_trigram_bpb"].mean().items()):  # the validity bar of the same data
        ax.axhline(v, color=f"C{i}", ls="-.", lw=0.8, label=f"{e.upper()} KN trigram, run's windows ({v:.3f})")
    tri = g["full_trigram_bpb"].first()
    for i, (e, v) in enumerate(tri.items()):  # reported, not a condition: more text than a run reads
        ax.axhline(v, color=f"C{i}", ls=":", lw=1.0, label=f"{e.upper()} KN trigram, whole text ({v:.3f})")
    ax.set_ylim(top=min(ax.get_ylim()[1], float(bars.max()) + 0.6), bottom=min(ax.get_ylim()[0], float(tri.min()) - 0.02))
    ax.set_xlabel("training bytes (MB)")
    ax.set_ylabel("held-out bits per byte")
    ax.legend(fontsize=7)
    return plotting.finish(fig)


def fig_complexity(b: Bundle):
    """Left: counted operations against the pre-token length (deterministic); middle: median seconds (the machine
    may be shared); right: LBPE's window checks per byte against m, with the O(m) bound."""
    fig, (a, t, m) = plotting.axes(3, 4.2, 3.6)
    names = {"lbpe": "LBPE scan", "bpe_heap": "BPE heap", "bpe_naive": "BPE naive"}
    for e, g in b.complexity.frame.groupby("encoder", sort=False):
        a.loglog(g["length"], g["ops"], "o-", label=f"{names.get(e, e)} (slope {b.complexity.op_slopes[e]:.2f})")
        t.loglog(g["length"], g["seconds"], "o-", label=f"{names.get(e, e)} (slope {b.complexity.slopes[e][0]:.2f})")
    for ax, lab in ((a, "operations (window checks / pair lookups / heap ops)"), (t, "median seconds (pure Python)")):
        ax.set_xlabel("pre-token length |T| (bytes)")
        ax.set_ylabel(lab, fontsize=8)
        ax.legend(loc="lower right", fontsize=6)
    ms = b.complexity.m_sweep
    m.plot(ms["m"], ms["ops_per_byte"], "o-", color="C0", label="LBPE window checks per byte")
    m.plot(ms["m"], ms["bound_m_per_byte"], "k--", lw=0.8, label="bound m per byte")
    for r in ms.itertuples():
        m.annotate(f"V={r.vocab_size}", (r.m, r.ops_per_byte), fontsize=7, textcoords="offset points", xytext=(3, 3))
    m.set_xlabel("m, the longest token (bytes)")
    m.set_ylabel("operations per byte")
    m.set_ylim(bottom=0)
    m.legend()
    return plotting.finish(fig)


# ===================================================================================================== claims


def agree(verdicts: list[str]) -> tuple[str, bool]:
    """(verdict, mixed) of one property judged on several metrics (DESIGN §7, metrics that agree): ``reproduced`` or
    ``not_reproduced`` only when every metric says so; ``mixed`` when some point each way (then ``inconclusive``)."""
    vs = set(verdicts)
    if len(vs) == 1 and vs <= {"reproduced", "not_reproduced"}:
        return verdicts[0], False
    return "inconclusive", {"reproduced", "not_reproduced"} <= vs


def min_detectable(std: float, n: int, power: float = 0.8, level: float = 0.95) -> float:
    """The smallest mean paired gap a two-sided t-test over ``n`` pairs at per-pair std ``std`` detects with
    ``power``: (t_{level, n-1} + t_{power, n-1}) · std / sqrt(n)."""
    from scipy import stats

    if n < 2 or not np.isfinite(std):
        return float("nan")
    return float((stats.t.ppf(0.5 + level / 2, n - 1) + stats.t.ppf(power, n - 1)) * std / np.sqrt(n))


def with_equivalence(claim: C.Claim, ci, margin: float, extra: str = "") -> C.Claim:
    """A claimed improvement judged against the pre-registered ``margin`` ("an effect smaller than this is no
    effect"): a 95% interval entirely inside ±margin is the verdict "no effect larger than the margin",
    ``not_reproduced``, whether or not it excludes 0 (if it does, the evidence says "statistically non-zero but
    below the margin"); ``reproduced`` only for an interval that excludes 0 on the claimed side and is not inside the
    margin; otherwise the claim's own verdict stands."""
    text = claim.ours_ci + (f"; {extra}" if extra else "")
    metric = claim.metric + f"; an interval inside ±{margin} (pre-registered) is no effect larger than the margin"
    if C.verdict_equivalence(ci, margin=margin) == "reproduced":
        nonzero = ci[0] > 0 or ci[1] < 0
        return C.Claim(claim.claim_id, claim.claim, metric, claim.paper_value, claim.ours_value, text,
                       "not_reproduced", f"equivalent: the 95% interval [{ci[0]:+.4f}, {ci[1]:+.4f}] lies inside "
                       f"±{margin} bpb" + (": statistically non-zero but below the margin" if nonzero else "")
                       + "; " + claim.evidence)
    return C.Claim(claim.claim_id, claim.claim, metric, claim.paper_value, claim.ours_value, text, claim.verdict,
                   claim.evidence)


def seeds_for_equivalence(sd: float, margin: float, gap: float = 0.0, level: float = 0.95) -> int | None:
    """The fewest paired seeds whose t-interval, at per-seed gap std ``sd`` around a mean gap ``gap``, fits inside
    ±``margin`` (|gap| + t_{level, n-1} · sd / sqrt(n) < margin); None when no n up to 10,000 does (|gap| ≥ margin)."""
    from scipy import stats

    if not (np.isfinite(sd) and abs(gap) < margin):
        return None
    for n in range(2, 10_001):
        if abs(gap) + stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n) < margin:
            return n
    return None


def equivalence_reach(sd: float, n: int, margin: float, gap: float) -> str:
    """Whether "no effect larger than the margin" is a verdict ``n`` paired seeds can reach at gap std ``sd``: the
    interval's half-width with a zero gap against the margin, and the seeds needed for a zero and for the observed
    gap."""
    from scipy import stats

    if n < 2 or not np.isfinite(sd):
        return "equivalence: not reachable with one seed"
    h = float(stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n))
    n0, ng = seeds_for_equivalence(sd, margin), seeds_for_equivalence(sd, margin, gap)
    need = f"needs ≥ {n0} paired seeds for a zero gap, ≥ {ng} for the observed {gap:+.4f}" if ng else \
        f"needs ≥ {n0} paired seeds for a zero gap"
    if h >= margin:
        return (f"equivalence unreachable at {n} seeds: even a zero gap gives a half-width of {h:.4f} ≥ the margin "
                f"{margin} at this spread; {need}")
    return f"equivalence reachable at {n} seeds (half-width {h:.4f} < {margin} for a zero gap); {need}"


def _seed_claim(claim_id: str, claim: str, frame: pd.DataFrame, a: str, b: str, labels: tuple[str, str], what: str,
                evidence: str, margin: float, note: str = "") -> C.Claim:
    """held-out bits per byte, a − b, paired by seed (positive: b better), with each arm's mean ± std, the minimum
    detectable effect and the equivalence margin."""
    f = run_summary(frame)
    spread = {e: f[f["encoding"] == e]["bpb"] for e in (a, b)}
    detail = "bpb mean ± std: " + "; ".join(
        f"{e.upper()} {s.mean():.4f} ± {s.std(ddof=1) if len(s) > 1 else float('nan'):.4f}" for e, s in spread.items())
    gaps = C.paired_gap(f, a, b)
    c = C.seed_gap_claim(claim_id, claim, gaps, metric=f"held-out bits per byte, {labels[0]} − {labels[1]} ({what}; "
                         f"positive = {labels[1]} better)", direction="positive", evidence=evidence, detail=detail,
                         need=True)
    g = np.asarray(gaps, dtype=float)
    sd = float(g.std(ddof=1)) if len(g) > 1 else float("nan")
    mde = f"minimum detectable effect (80% power, {len(g)} paired seeds, gap std {sd:.4f}): " \
          f"{min_detectable(sd, len(g)):.4f} bpb; " + equivalence_reach(sd, len(g), margin, float(g.mean())) \
        + (f"; {note}" if note else "")
    return with_equivalence(c, C.t_interval(g), margin, mde)


def basic_interval(point: float, replicates, level: float = 0.95):
    """The basic (pivot) bootstrap interval, (2·point − q_hi, 2·point − q_lo): for a statistic the resampling biases
    (a count of never-seen entries falls when a resample drops text), where the percentile interval can exclude its
    own point."""
    ci = C.percentile_interval(replicates, level)
    return None if ci is None else (2 * point - ci[1], 2 * point - ci[0])


FLATNESS = (("gini_delta", "Gini", "negative", ""), ("entropy_delta", "entropy", "positive", " bits"),
            ("unused_delta", "unused entries", "negative", ""))  # (key, name, flatter side, unit)


def _flat_claim(cfg, b: Bundle) -> C.Claim:
    """C3-flat on the three metrics of flatness together (``frequency_stats``), on the held-out text (spec §5: the
    tokenizer was trained on the rest), paired bootstrap over byte blocks; the whole text's values beside them."""
    fb = b.freq_boot
    p, boot = fb.heldout_point, fb.heldout_boot
    nb = f"95% paired bootstrap over {fb.heldout_blocks} blocks of {cfg.block_bytes:,} held-out bytes, {cfg.n_boot} " \
         "resamples; unused entries: basic interval"
    parts, verdicts = [], []
    for key, name, direction, unit in FLATNESS:
        ci = basic_interval(p[key], boot[key]) if key == "unused_delta" else C.percentile_interval(boot[key])
        v = C.verdict_from_interval(ci, paper_direction=direction)
        verdicts.append(v)
        word = {"reproduced": "flatter", "not_reproduced": "less flat"}.get(v, "no clear change")
        parts.append(f"{name} {p[key]:+.4g}{unit} [{ci[0]:+.4g}, {ci[1]:+.4g}]: {word}")
    a = fb.point
    whole = ", ".join(f"{name} {a[key]:+.4g}{unit}" for key, name, _, unit in FLATNESS)
    verdict, mixed = agree(verdicts)
    return C.Claim(
        "C3-flat", "LBPE smooths (flattens) the token-frequency distribution",
        "three flatness metrics over V on the held-out text, LBPE − BPE: Gini (< 0 flatter), entropy (> 0 flatter), "
        "vocabulary entries never emitted (< 0 flatter); rule: reproduced only when all three 95% intervals are on "
        "the flatter side", None, None, "held-out text: " + "; ".join(parts) + f" ({nb}); the whole corpus "
        f"(training plays included, the text BPE's merges were learned on): {whole}", verdict,
        ("mixed: the flatness metrics disagree (Gini and entropy weigh the head and the tail differently), with "
         "intervals tight enough that more text would not resolve it; " if mixed else "")
        + "extra_rank_frequency, extra_utilisation, table2")


def tie_break_text(b: Bundle) -> str:
    """The length-group ratios under both tie-breaks (``tie_break_check``), one line of evidence."""
    t = b.tie_break_check.set_index("tie_break")
    return ("the same under either UNCONFIRMED tie-break (held-out plays, leftmost / rank): single bytes ×"
            f"{t.loc['leftmost', 'single_ratio']:.4f} / ×{t.loc['rank', 'single_ratio']:.4f}, short "
            f"×{t.loc['leftmost', 'short_ratio']:.4f} / ×{t.loc['rank', 'short_ratio']:.4f}, long "
            f"×{t.loc['leftmost', 'long_ratio']:.4f} / ×{t.loc['rank', 'long_ratio']:.4f} (extra_tie_break)")


def _single_claim(cfg, b: Bundle) -> C.Claim:
    """C3-single, with its mechanism (``single_bytes``) and a coarser grouping of ours beside it."""
    p, boot, L = b.freq_boot.point, b.freq_boot.boot, cfg.long_min_len
    nb = f"95% bootstrap over documents ({cfg.n_boot} resamples)"
    ci = C.percentile_interval(boot["ratio_single"])
    ci_c = C.percentile_interval(boot["ratio_lt_long"])
    v_c = C.verdict_from_interval(C.log_interval(ci_c), paper_direction="negative")
    sb = b.single_bytes.set_index("encoding")
    d = sb.loc["lbpe"] - sb.loc["bpe"]
    places = {"the word's first unit": d["first"], "its last unit": d["last"], "interior units": d["interior"]}
    top = max(places, key=lambda k: places[k])
    arms = b.freq_boot.arms.set_index("encoding")["single_ratio"]
    mech = (f"mechanism: LBPE emits {int(d['total']):+,} single-byte tokens; by place in the word: first unit "
            f"{int(d['first']):+,} (the leading space {int(d['first_space']):+,}, other first bytes "
            f"{int(d['first'] - d['first_space']):+,}), last "
            f"{int(d['last']):+,}, interior {int(d['interior']):+,}, one-byte words {int(d['whole']):+,}; the largest "
            f"change is at {top} (extra_single_bytes). Why: length priority itself: the scan is not anchored at the "
            "word start, so a long entry found inside the word strands the bytes at its edges (the leading space, a "
            "final letter); " + tie_break_text(b) + "; the other long-first encoders raise single bytes too ("
            + ", ".join(f"{e} ×{v:.3f}" for e, v in arms.items() if e != "lbpe") + ", extra_arms)")
    return C.Claim(
        "C3-single", "LBPE makes the shortest tokens (single bytes) less frequent",
        "total occurrences LBPE / BPE in the corpus; rule: interval < 1", None, p["ratio_single"],
        C.fmt_ci(ci, nb) + f"; a coarser grouping (ours: every token shorter than long_min_len = {L} bytes, single "
        f"bytes included): {p['ratio_lt_long']:.4f} {C.fmt_ci(ci_c, 'same bootstrap')} ({v_c})",
        C.verdict_from_interval(C.log_interval(ci), paper_direction="negative"),
        mech + "; fig3, extra_occurrence")


def _count_gap(b: Bundle, model: str, e: str) -> tuple[float, pd.Series]:
    """(point, bootstrap replicates) of BPE − ``e`` under the count model ``model`` (positive: ``e`` better)."""
    f = b.count_arm.frame.set_index(["model", "encoding"])
    boot = b.count_arm.boot
    return float(f.loc[(model, "bpe"), "bpb"] - f.loc[(model, e), "bpb"]), boot[f"{model}:bpe"] - boot[f"{model}:{e}"]


def _per_play(b: Bundle, model: str, e: str) -> str:
    d = b.count_arm.per_doc
    d = d[d["model"] == model].pivot(index="play", columns="encoding", values="bpb")
    return " / ".join(f"{x:+.4f}" for x in d["bpe"] - d[e])


def _count_claim(cfg, b: Bundle) -> C.Claim:
    """C4-count (ours): the deterministic count-model arm judged on the Kneser-Ney bigram and trigram together (DESIGN
    §7, metrics that agree: both decide, each with the pre-registered margin), paired block bootstrap, the per-play
    gaps beside it; MaxMatch's gaps beside LBPE's."""
    m_ = cfg.equivalence_margin
    what = f"95% paired block bootstrap over {b.count_arm.n_blocks} blocks of {b.count_arm.block_bytes:,} held-out " \
           f"bytes, {cfg.n_boot} resamples"
    encs = set(b.count_arm.frame["encoding"])
    per = {}
    for model in COUNT_ORDERS:
        point, reps = _count_gap(b, model, "lbpe")
        f = b.count_arm.frame.set_index(["model", "encoding"])
        detail = f"bpb " + "; ".join(f"{e.upper()} {f.loc[(model, e), 'bpb']:.4f}" for e in b.count_arm.frame[
            "encoding"].unique()) + (f"; per held-out play {_per_play(b, model, 'lbpe')}"
                                     if len(b.count_arm.per_doc) else "")
        c = C.bootstrap_gap_claim("C4-count", "(ours) A count model predicts held-out text better over LBPE tokens "
                                  "than over BPE tokens at equal training bytes", point, reps,
                                  metric="", what=what, detail=detail, evidence="")
        per[model] = with_equivalence(c, C.percentile_interval(reps), m_)
    big, tri = per["bigram"], per["trigram"]
    verdict, mixed = agree([big.verdict, tri.verdict])
    tri_text = f"Kneser-Ney trigram {tri.ours_value:+.4f} {tri.ours_ci}" + (
        f" [{tri.evidence.split(';')[0]}]" if tri.evidence.startswith("equivalent") else "")
    c = C.second_metric(C.Claim(big.claim_id, big.claim, "", None, big.ours_value, big.ours_ci, big.verdict,
                                "extra_count_arm, extra_count_arm_per_play (ours)"), tri.verdict, tri_text)
    mm = ""
    if "maxmatch" in encs:
        g = {m: _count_gap(b, m, "maxmatch") for m in COUNT_ORDERS}
        lb = {m: _count_gap(b, m, "lbpe")[0] for m in COUNT_ORDERS}
        same = all(np.sign(g[m][0]) == np.sign(lb[m]) for m in COUNT_ORDERS)
        mm = "; MaxMatch (longest prefix first, ours) against BPE: " + ", ".join(
            f"{m} {g[m][0]:+.4f} {C.fmt_ci(C.percentile_interval(g[m][1]), 'same blocks')}" for m in COUNT_ORDERS) \
            + ("; the same sign as LBPE's under both orders: what the count models see is common to long-first "
               "encoders, not specific to LBPE" if same else "")
    why = "; ".join(x.evidence.split("; ")[0] + f" ({m})" for m, x in per.items() if x.evidence.startswith("equivalent"))
    return C.Claim(
        "C4-count", c.claim,
        "held-out bits per byte of an interpolated Kneser-Ney bigram and trigram fitted on the whole training text, "
        "BPE − LBPE (positive = LBPE better); value: the bigram's; rule: both orders judged, each reproduced only "
        f"when its 95% interval is > 0 and not inside ±{m_} (pre-registered: an interval inside it is no effect "
        "larger than the margin, not_reproduced); the two must agree, else inconclusive (mixed when opposite)",
        None, big.ours_value, f"Kneser-Ney bigram {c.ours_ci}" + mm, verdict,
        ("mixed: the bigram and the trigram disagree; " if mixed else "")
        + (f"{why}; " if why and verdict == "not_reproduced" else "")
        + "the blocks of one play are correlated: the per-play gaps are the spread to read beside the interval; "
        + c.evidence.removeprefix("mixed: the metrics disagree; "))


def _complexity_claim(cfg, b: Bundle) -> C.Claim:
    """C5 on LBPE's own counted work (deterministic), wall time as the second metric; the baselines beside it."""
    cx, lim = b.complexity, cfg.linear_slope_max
    f = cx.frame
    lb = f[f["encoder"] == "lbpe"]
    bound_ok = bool((lb["ops"] <= lb["max_token_len"] * lb["length"]).all() and cx.m_sweep["within_bound"].all())
    s_ops = cx.op_slopes["lbpe"]
    verdict = "reproduced" if s_ops <= lim and bound_ok else "not_reproduced"
    s_w, ci_w = cx.slopes["lbpe"]
    v_w = C.verdict_threshold(s_w, ci_w, at_most=1.5)  # wall time: far from quadratic (a shared machine's timings)
    big = f["length"].max()
    t = f[f["length"] == big].set_index("encoder")["seconds"]
    ms = cx.m_sweep
    c = C.Claim(
        "C5", "LBPE encodes in O(m·|T|) time (vs O(|T|²) for naive BPE)",
        f"log-log slope of LBPE's counted window checks against the length of one pre-token (deterministic; 1 = "
        f"linear, 2 = quadratic), and checks per byte within the bound m (the m sweep); counted: the window lookups "
        "of the prefix walk only (at most m − 1 per start, so the bound holds by construction); not counted: the sort "
        "of the candidate windows and the acceptance checks of the covered span, which the wall-time slope sees; "
        f"rule: slope ≤ {lim} and within the bound", None, s_ops,
        f"exact (counted operations, {f['length'].min():,}-{big:,} bytes); window checks per byte "
        f"{ms['ops_per_byte'].min():.2f}-{ms['ops_per_byte'].max():.2f} for m = {ms['m'].min()}-{ms['m'].max()} "
        f"(bound m per byte: {'held' if bound_ok else 'VIOLATED'}); baselines: heap BPE op slope "
        f"{cx.op_slopes['bpe_heap']:.2f} (linear too), naive BPE {cx.op_slopes['bpe_naive']:.2f} (quadratic only "
        f"until its passes saturate at the merges that apply); at {big:,} bytes "
        f"LBPE {t['lbpe']:.3f} s vs heap BPE {t['bpe_heap']:.3f} s (median of {cfg.complexity_repeats}, machine "
        "shared: wall times are the second figure)", verdict,
        "LBPE is linear, but so is a heap-based BPE (production encoders): the contrast with O(|T|²) holds only "
        "against the naive loop; extra_complexity, extra_m_sweep")
    return C.second_metric(c, v_w, f"wall-time slope {s_w:.3f} " + C.fmt_ci(ci_w, f"95% t over {len(lb)} lengths, "
                           f"medians of {cfg.complexity_repeats}") + f", heap BPE {cx.slopes['bpe_heap'][0]:.2f}, "
                           f"naive BPE {cx.slopes['bpe_naive'][0]:.2f}; rule for wall time: interval ≤ 1.5 (below "
                           "quadratic; above 1 from sorting the candidate windows and memory effects, which the counts "
                           "do not see)")


COUNT_ORDERS = ("bigram", "trigram")  # the count-model arm's orders (experiments.COUNT_MODELS)


def claims(cfg, b: Bundle) -> list[C.Claim]:
    out = []
    freq_point, freq_boot = b.freq_boot.point, b.freq_boot.boot
    nb = f"95% bootstrap over documents ({cfg.n_boot} resamples)"
    L = cfg.long_min_len
    # C1: under BPE long tokens occur far less often than short ones (per vocabulary entry).
    v, ci = freq_point["c1_ratio"], C.percentile_interval(freq_boot["c1_ratio"])
    out.append(C.Claim(
        "C1", "Under BPE, long tokens occur far less often than short tokens",
        f"BPE occurrences per vocabulary entry, tokens < {L} bytes over tokens ≥ {L} bytes; rule: interval > 1",
        None, v, C.fmt_ci(ci, nb), C.verdict_from_interval(C.log_interval(ci), paper_direction="positive"), "fig1"))
    # C2: LBPE keeps the vocabulary and ids; only the order of production changes (decoding unchanged).
    enc = b.data.encoders["lbpe"]
    ok = [set(np.unique(ids)) <= set(enc.vocab.values()) and enc.decode(ids.tolist()) == d.text
          for ids, d in zip(b.data.eval_ids["lbpe"], b.data.eval_docs)]
    out.append(C.Claim(
        "C2", "LBPE keeps BPE's vocabulary and ids (only the encoding order changes), so decoding is unchanged",
        "fraction of held-out documents whose LBPE ids all lie in BPE's V and decode back to the exact text; "
        "rule: = 1", None, float(np.mean(ok)), f"{sum(ok)}/{len(ok)} documents",
        C.verdict_threshold(float(np.mean(ok)), None, at_least=1.0), "extra_segmentation, fig2"))
    # C3: LBPE shifts occurrences to long tokens, away from short ones, and flattens the distribution.
    for key, cid, text, direction in (
            ("ratio_long", "C3-long", f"LBPE makes long tokens (≥ {L} bytes) more frequent", "positive"),
            ("ratio_short", "C3-short", f"LBPE makes short multi-byte tokens (2-{L - 1} bytes) less frequent",
             "negative")):
        v, ci = freq_point[key], C.percentile_interval(freq_boot[key])
        out.append(C.Claim(cid, text, "total occurrences LBPE / BPE in the corpus; rule: interval "
                           + ("> 1" if direction == "positive" else "< 1"), None, v, C.fmt_ci(ci, nb),
                           C.verdict_from_interval(C.log_interval(ci), paper_direction=direction),
                           tie_break_text(b) + "; fig3, extra_occurrence"))
    out.append(_single_claim(cfg, b))
    out.append(_flat_claim(cfg, b))
    # C4: LBPE beats BPE in language modelling (bits per byte at equal training bytes, paired seeds), valid only
    # when every run beat the count models on the same held-out text.
    out.append(C.judged(_seed_claim(
        "C4-lm", "LBPE trains better language models than BPE (the paper: higher downstream accuracy; here: lower "
        "held-out bits per byte)", b.lm_runs.frame, "bpe", "lbpe", ("BPE", "LBPE"),
        f"equal training bytes, the same text in the same order and the same initial weights per seed, mean of the "
        f"last {cfg.last_evals} evaluations", "table1, extra_bpb_curve, extra_lm_runs, extra_validity",
        cfg.equivalence_margin, note="the learning rate and batch were tuned on BPE runs only (favours the baseline, "
        "if anything); " + trigram_note(b)), lm_validity(b)))
    out.append(_count_claim(cfg, b))
    # C4-cpt: continual pre-training with LBPE helps (paper scale).
    cpt_text = "Continual pre-training of a BPE model on LBPE-encoded data beats continuing on BPE data"
    if b.cpt is None or b.cpt.empty:
        out.append(C.not_run("C4-cpt", cpt_text, "held-out bits per byte, BPE→BPE − BPE→LBPE"))
    else:
        out.append(_seed_claim("C4-cpt", cpt_text, b.cpt, "bpe", "lbpe", ("BPE", "LBPE"),
                               f"switch at {cfg.cpt_switch_frac:.0%} of the bytes", "table3", cfg.equivalence_margin))
    sc_text = "LBPE stacks with Scaffold-BPE for further gains"
    if b.scaffold_lm is None or b.scaffold_lm.empty:
        out.append(C.not_run("C4-scaffold", sc_text, "held-out bits per byte, Scaffold-BPE − Scaffold-BPE + LBPE"))
    else:
        out.append(_seed_claim("C4-scaffold", sc_text, b.scaffold_lm, "scaffold_bpe", "scaffold_lbpe",
                               ("Scaffold-BPE", "Scaffold-BPE + LBPE"),
                               f"LBPE composed by {cfg.scaffold_compose!r}, equal training bytes",
                               "table4, extra_scaffold", cfg.equivalence_margin))
    out.append(_complexity_claim(cfg, b))
    return out


# ============================================================================================ generated prose


def speed_notes(b: Bundle) -> str:
    """The speed table's reading (Markdown), generated from ``extra_encoding_speed``."""
    t = b.speed
    cold = t[t["cache"] == "cold"].set_index("encoder")
    rust = cold.loc["HF tokenizers BPE (Rust)"]
    ours = {n: cold.loc[n] for n in ("BPE (ours, Python)", "LBPE scan (ours, Python)") if n in cold.index}
    faster = [n for n, r in ours.items() if r["seconds"] < rust["seconds"]]
    text = (f"Cold, HF's Rust BPE takes {rust['seconds']:.3f} s for {int(rust['n_bytes']):,} bytes; "
            + "; ".join(f"{n} {r['seconds']:.3f} s (`times_slower_than_rust` {r['times_slower_than_rust']:.2f})"
                        for n, r in ours.items()) + ". ")
    if faster:
        text += ("Our pure-Python encoders are *not* faster than Rust in general: they cache every distinct "
                 "pre-token (Shakespeare's word set is small, so after the first occurrences nearly every word is a "
                 "dictionary lookup), while HF's encoder builds full `Encoding` objects (offsets, attention masks) for "
                 f"{int(rust['n_texts'])} long texts; the machine is shared, so the times move between runs. No claim "
                 "rests on this table; C5 is judged on counted operations.")
    else:
        text += "No claim rests on this table; C5 is judged on counted operations."
    return text


AUDIT = (  # the referee audit of the committed small results (PAPER_DONE item 14) and what was done
    ("F1", "C4-count was `reproduced` on a bigram whose gap flips sign under a trigram, with an interval from small "
           "blocks of few plays, inside the pre-registered margin",
     "added the interpolated Kneser-Ney trigram (replicate.data.ngram, tested); C4-count judged on both orders "
     "together; larger blocks (`block_bytes`, extra_count_arm) with the per-play gaps beside; an interval inside "
     "±equivalence_margin is now `not_reproduced` (no effect larger than the margin) even when it excludes 0; "
     "MaxMatch's gaps beside LBPE's"),
    ("F2", "the LMs beat the bigram bars but not a trigram of the whole training text",
     "the Kneser-Ney trigram of each run's own training windows (the same data) is now a validity condition beside "
     "the bigrams; the whole-text trigram is reported in extra_validity, the model notes and C4-lm's evidence"),
    ("F3", "'no effect larger than the margin' cannot be reached by C4-lm at the seeds that ran",
     "the evidence states the half-width at a zero gap and the seeds equivalence needs; the prose no longer says it "
     "is reachable"),
    ("F4", "'the paper's coarser grouping' had no source", "called a coarser grouping of ours"),
    ("F5", "the tie-break was named as part of C3-single's mechanism",
     "dropped; the length-group ratios under both tie-breaks are a table (extra_tie_break) and a line of evidence"),
    ("F6", "C3-flat counted the tokenizer's own training text, and the unused-entries interval excluded its point",
     "judged on the held-out text with a paired block bootstrap, a basic interval for unused entries, the whole "
     "corpus's values beside; ours_value left empty (three metrics)"),
    ("F7", "C5 counts only the prefix walk", "the metric says what is counted and what is not"),
    ("F8", "the speed table looked absurd", "the `slowdown` column is dropped and the reading is generated below it"),
    ("F9", "tuning on the baseline arm only; the margin's units; 'non-embedding' parameters; fig3's colours",
     "stated beside C4-lm; the margin's source reworded; 'excluding input embeddings' with the LM head's size; fig3 "
     "coloured by agreement with the claim"),
)


def _to_settle(c: C.Claim) -> str:
    if c.verdict == "not_run":
        return "the `paper` scale (its path runs at `smoke`)"
    if c.verdict == "invalid":
        return "runs that pass the validity checks named in its evidence"
    if c.claim_id == "C3-flat":
        return "nothing more of the same: the metrics disagree with tight intervals (a flatness claim needs a metric " \
               "the paper names)"
    if c.claim_id == "C4-lm":
        return "more paired seeds (the counts are in its interval text) and longer training (past the whole-text trigram)"
    return "see its evidence"


def closing_note(cfg, b: Bundle) -> str:
    """The closing note, generated: each claim with its verdict and numbers, the time the experiments took in this
    kernel and its peak memory, what would settle what stayed open, and the referee audit's findings with what was
    done about each."""
    claims_ = claims(cfg, b)
    lines = C.note_lines(claims_)
    secs = dict(b.seconds)
    peak, child = peak_memory_gib()
    runs = run_summary(b.lm_runs.frame)
    lines += ["", f"Experiments at `{cfg.scale}`: {sum(secs.values()):.0f} s in this kernel ("
              + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items() if v >= 1) + "; runs read from the cache count "
              f"as ~0 s); training wall time of the {len(runs)} LM runs themselves {runs['wall_s'].sum():.0f} s "
              f"(two side by side); peak memory of this process {peak:.2f} GiB, of its largest finished worker "
              f"{child:.2f} GiB. The time and peak memory of the whole notebook, with cold or warm caches, are in "
              "results/benchmarks/notebooks.csv."]
    open_ = [c for c in claims_ if c.verdict in ("inconclusive", "not_run", "invalid")]
    if open_:
        lines += ["", "To settle what stayed open: " + "; ".join(f"{c.claim_id}: {_to_settle(c)}" for c in open_)
                  + "."]
    lines += ["", "Referee audit (PAPER_DONE item 14) and what was done:"]
    lines += [f"- **{k}** {what} → {done}." for k, what, done in AUDIT]
    return "\n".join(lines)
