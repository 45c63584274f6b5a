"""LBPE's tables, figures and claims: pure functions of the bundle (nothing here trains, encodes, fits or resamples;
every slope and bootstrap is in ``experiments.py``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from replicate import claims as C
from replicate import plotting
from replicate.experiments import Bundle
from replicate.tables import quantities
from replicate.papers.lbpe import ENCODINGS
from replicate.tokenization import analysis as A

# ================================================================================================== set-up


def setup(b: Bundle) -> pd.DataFrame:
    """What ran, in numbers (the notebook's prose is generated from this table)."""
    return quantities(_setup_rows(b))


def _setup_rows(b: Bundle) -> list[tuple[str, object]]:
    d, f = b.data, b.lm_runs.frame
    nbytes = lambda docs: sum(len(x.text.encode("utf-8")) for x in docs)
    rows = [("training documents", len(d.train_docs)), ("held-out documents", len(d.heldout_docs)),
            ("training text (MB)", round(nbytes(d.train_docs) / 1e6, 2)), ("vocabulary", b.cfg.vocab_size),
            ("evaluated held-out bytes", d.eval_sets["bpe"].n_bytes)]
    for e in d.encoders:
        rows += [(f"training tokens, {e}", int(sum(len(x) for x in d.train_ids[e]))),
                 (f"evaluated tokens, {e}", int(d.eval_sets[e].mask.sum()))]
    fin = f[f["final"]]
    rows += [("LM non-embedding parameters", int(fin["n_params"].iloc[0])), ("LM seeds per encoding", b.cfg.n_seeds),
             ("LM training bytes per run", b.cfg.train_bytes),
             ("LM epochs over the training text", round(b.cfg.train_bytes / nbytes(d.train_docs), 2))]
    return rows


def describe(b: Bundle) -> str:
    """The notebook's 'what ran' paragraph, generated from :func:`setup` (Markdown)."""
    v = dict(_setup_rows(b))
    return (f"One byte-level BPE vocabulary of {v['vocabulary']:,} tokens trained on {v['training documents']} "
            f"documents ({v['training text (MB)']} MB; {v['held-out documents']} held out). Each LM has "
            f"{v['LM non-embedding parameters']:,} non-embedding parameters and trains on "
            f"{v['LM training bytes per run']:,} bytes ({v['LM epochs over the training text']} epochs of the training "
            f"text), {v['LM seeds per encoding']} seeds per encoding; bits per byte are scored on "
            f"{v['evaluated held-out bytes']:,} held-out bytes: {v['evaluated tokens, bpe']:,} BPE tokens, "
            f"{v['evaluated tokens, lbpe']:,} LBPE tokens.")


# ================================================================================================== tables


def table1(frame: pd.DataFrame, data) -> pd.DataFrame:
    """Table 1 analogue: held-out bits per byte at equal training bytes, mean and spread over seeds (``frame``: an
    LM frame of the bundle, ``data``: the data its encodings come from)."""
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


def occurrence_pivot(b: Bundle) -> pd.DataFrame:
    """Occurrences by token length, one column per encoding (fig3's numbers)."""
    return b.frequency["occurrence"].pivot(index="token_len", columns="encoding", values="occurrences").reset_index()


def gaps(b: Bundle) -> pd.DataFrame:
    """The paired per-seed gaps of every LM comparison that ran (BPE − LBPE bits per byte, ...)."""
    rows = [{"comparison": "BPE − LBPE", "seed": s, "bpb_gap": g} for s, g in
            C.paired_gap(b.lm_runs.frame, "bpe", "lbpe").items()]
    if b.cpt is not None:
        rows += [{"comparison": "BPE→BPE − BPE→LBPE", "seed": s, "bpb_gap": g}
                 for s, g in C.paired_gap(b.cpt, "bpe", "lbpe").items()]
    if b.scaffold_lm is not None:
        rows += [{"comparison": "Scaffold-BPE − Scaffold-BPE + LBPE", "seed": s, "bpb_gap": g}
                 for s, g in C.paired_gap(b.scaffold_lm, "scaffold_bpe", "scaffold_lbpe").items()]
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


def fig3(b: Bundle):
    """BPE vs LBPE: occurrences by token length (log scale) and their ratio LBPE / BPE."""
    occ = b.frequency["occurrence"]
    fig, (a, c) = plotting.axes(2)
    piv = occ.pivot(index="token_len", columns="encoding", values="occurrences")[list(ENCODINGS)]
    plotting.grouped_bars(a, piv.rename(columns=str.upper), log=True)
    a.set_xlabel("token length (bytes)")
    a.set_ylabel("occurrences")
    x = np.arange(len(piv.index))
    ratio = piv["lbpe"] / piv["bpe"].where(piv["bpe"] > 0)
    c.bar(x, ratio.to_numpy() - 1.0, bottom=1.0, color=np.where(ratio.to_numpy() >= 1, "C2", "C3"))
    c.axhline(1.0, color="k", lw=0.6)
    c.set_xticks(x, [str(v) for v in piv.index])
    c.set_xlabel("token length (bytes)")
    c.set_ylabel("occurrences LBPE / BPE")
    return plotting.finish(fig)


def fig_bpb_curve(b: Bundle):
    """Held-out bits per byte against training bytes, each seed (points) and the seed mean (line)."""
    fig, (ax,) = plotting.axes(1, 5.5, 3.8)
    plotting.seed_curves(ax, b.lm_runs.frame, "train_bytes", "bpb", "encoding", scale_x=1e-6,
                         labels={e: e.upper() for e in ENCODINGS})
    ax.set_xlabel("training bytes (MB)")
    ax.set_ylabel("held-out bits per byte")
    return plotting.finish(fig)


def fig_complexity(b: Bundle):
    fig, (ax,) = plotting.axes(1)
    for e, g in b.complexity.frame.groupby("encoder"):
        ax.loglog(g["length"], g["seconds"], "o-", label=f"{e.upper()} (slope {b.complexity.slopes[e][0]:.2f})")
    ax.set_xlabel("pre-token length |T| (bytes)")
    ax.set_ylabel("seconds (pure Python, no cache)")
    ax.legend()
    return plotting.finish(fig)


# ===================================================================================================== claims


def _seed_claim(claim_id: str, claim: str, frame: pd.DataFrame, a: str, b: str, labels: tuple[str, str], what: str,
                evidence: str) -> C.Claim:
    """held-out bits per byte, a − b, paired by seed (positive: b better), with each arm's mean ± std."""
    f = frame[frame["final"]]
    spread = {e: f[f["encoding"] == e]["bpb"] for e in f["encoding"].unique()}
    detail = "bpb mean ± std: " + "; ".join(
        f"{e.upper()} {s.mean():.4f} ± {s.std(ddof=1) if len(s) > 1 else float('nan'):.4f}" for e, s in spread.items())
    return C.seed_gap_claim(claim_id, claim, C.paired_gap(frame, a, b),
                            metric=f"held-out bits per byte, {labels[0]} − {labels[1]} ({what}; positive = "
                                   f"{labels[1]} better)", direction="positive", evidence=evidence, detail=detail)


def claims(cfg, b: Bundle) -> list[C.Claim]:
    out = []
    freq_point, freq_boot, summary = b.freq_boot.point, b.freq_boot.boot, b.frequency["summary"]
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
             "negative"),
            ("ratio_single", "C3-single", "LBPE makes the shortest tokens (single bytes) less frequent", "negative")):
        v, ci = freq_point[key], C.percentile_interval(freq_boot[key])
        out.append(C.Claim(cid, text, "total occurrences LBPE / BPE in the corpus; rule: interval "
                           + ("> 1" if direction == "positive" else "< 1"), None, v, C.fmt_ci(ci, nb),
                           C.verdict_from_interval(C.log_interval(ci), paper_direction=direction),
                           "fig3, extra_occurrence"))
    v, ci = freq_point["gini_delta"], C.percentile_interval(freq_boot["gini_delta"])
    s = summary.set_index("encoding")
    out.append(C.Claim(
        "C3-flat", "LBPE smooths (flattens) the token-frequency distribution",
        "Gini coefficient over V, LBPE − BPE (negative = flatter); rule: interval < 0", None, v,
        C.fmt_ci(ci, nb) + f"; entropy {s.loc['bpe', 'entropy_bits']:.3f} → {s.loc['lbpe', 'entropy_bits']:.3f} bits",
        C.verdict_from_interval(ci, paper_direction="negative"), "extra_rank_frequency, extra_utilisation"))
    # C4: LBPE beats BPE in language modelling (bits per byte at equal training bytes, paired seeds).
    out.append(_seed_claim("C4-lm", "LBPE trains better language models than BPE (the paper: higher downstream "
                           "accuracy; here: lower held-out bits per byte)", b.lm_runs.frame, "bpe", "lbpe",
                           ("BPE", "LBPE"), "equal training bytes, from scratch",
                           "table1, extra_bpb_curve, extra_lm_runs"))
    # C4-cpt: continual pre-training with LBPE helps (paper scale).
    cpt_text = "Continual pre-training of a BPE model on LBPE-encoded data beats continuing on BPE data"
    if b.cpt is None or b.cpt.empty:
        out.append(C.not_run("C4-cpt", cpt_text, "held-out bits per byte, BPE→BPE − BPE→LBPE"))
    else:
        out.append(_seed_claim("C4-cpt", cpt_text, b.cpt, "bpe", "lbpe", ("BPE", "LBPE"),
                               f"switch at {cfg.cpt_switch_frac:.0%} of the bytes", "table3"))
    sc_text = "LBPE stacks with Scaffold-BPE for further gains"
    if b.scaffold_lm is None or b.scaffold_lm.empty:
        out.append(C.not_run("C4-scaffold", sc_text, "held-out bits per byte, Scaffold-BPE − Scaffold-BPE + LBPE"))
    else:
        out.append(_seed_claim("C4-scaffold", sc_text, b.scaffold_lm, "scaffold_bpe", "scaffold_lbpe",
                               ("Scaffold-BPE", "Scaffold-BPE + LBPE"),
                               f"LBPE composed by {cfg.scaffold_compose!r}, equal training bytes",
                               "table4, extra_scaffold"))
    # C5: encoding is O(m·|T|): time grows linearly with the pre-token length (rank BPE: quadratically).
    s_l, ci_l = b.complexity.slopes["lbpe"]
    s_b, _ = b.complexity.slopes["bpe"]
    out.append(C.Claim(
        "C5", "LBPE encodes in O(m·|T|) time (vs O(|T|²) for naive BPE)",
        "log-log slope of encoding time against the length of one pre-token (1 = linear, 2 = quadratic); "
        "rule: interval < 1.5", None, s_l,
        C.fmt_ci(ci_l, f"95% t over {len(cfg.complexity_lengths)} lengths") + f"; rank BPE (ours) slope {s_b:.2f}",
        C.verdict_threshold(s_l, ci_l, at_most=1.5), "extra_complexity"))
    return out
