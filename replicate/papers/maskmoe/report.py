"""MaskMoE's tables, figures and claims: pure functions of the bundle (nothing here trains, evaluates or resamples;
every bootstrap is drawn in ``experiments.py``). The paper's numbers were not recovered: every ``paper`` column and
``paper_value`` stays empty."""

from __future__ import annotations

import dataclasses


import numpy as np
import pandas as pd

from replicate import claims as C
from replicate import plotting
from replicate.experiments import Bundle
from replicate.papers.maskmoe import DECIDING, DRIFT_FRAC, LABELS, VARIANTS
from replicate.data.ngram import learning_row
from replicate.tables import beside_paper, quantities

NOT_RECOVERED = "not recovered"
LEARN_MARGIN = 0.05  # nats: "clearly below" the unigram cross-entropy
SEEN_BIGRAM = "Kneser-Ney bigram of the training windows of one seed's run (nats, per seed)"
# The StableMoE proxy's load imbalance may be at most this times the larger of SMoE's and the random Hash Layer's
# (else collapsed). Revised in the open after the first rule (1.5 x SMoE's alone) failed at 0.56 > 0.30: any fixed
# per-token table is imbalanced on Zipfian text, because one frequent type carries all its positions to one expert;
# the random Hash Layer, which cannot collapse, shows that level (0.44 at small). The first rule's outcome stays in
# the evidence.
PROXY_LOAD_CV_RATIO = 1.5


def _final(b: Bundle) -> pd.DataFrame:
    f = b.runs.frame
    return f[f["final"]]


# ================================================================================================== set-up


def _setup_rows(b: Bundle) -> list[tuple[str, object]]:
    d, cfg = b.data, b.cfg
    rare_pos = float((~d.frequent_V[d.windows[:, :-1]]).float().mean())
    return [("training documents", d.n_train_docs), ("held-out documents", d.n_heldout_docs),
            ("vocabulary (BPE)", d.n_ids), ("training tokens", len(d.stream)),
            ("frequent types (mask: V_f experts)", int(d.frequent_V.sum())),
            ("frequent rule", f"{cfg.frequent_rule} (fraction {cfg.frequent_fraction}, coverage "
                              f"{cfg.frequent_coverage}, min count {cfg.frequent_min_count})"),
            ("training occurrences covered by frequent types", round(float(d.counts_V[d.frequent_V].sum()
                                                                          / d.counts_V.sum()), 4)),
            ("experts per MoE layer (N)", cfg.n_experts), ("V_f (visible experts, frequent)", cfg.n_visible_frequent),
            ("MoE layers", ", ".join(map(str, cfg.moe_layers))), ("mask", "per layer" if cfg.mask_per_layer else
                                                                 "shared by every MoE layer"),
            ("held-out windows x positions", f"{len(d.windows)} x {cfg.seq_len}"),
            ("held-out positions with a rare input token", round(rare_pos, 4)),
            ("steps per run", cfg.steps), ("tokens per run", cfg.steps * cfg.batch_size * cfg.seq_len),
            ("epochs over the training tokens", round(cfg.steps * cfg.batch_size * cfg.seq_len / len(d.stream), 3)),
            ("seeds (SMoE, MaskMoE)", cfg.n_seeds), ("seeds (Dense, Hash, StableMoE proxy)", cfg.n_seeds_baselines),
            ("unigram cross-entropy of the held-out windows (nats)", round(d.unigram_nats, 4)),
            ("Kneser-Ney bigram cross-entropy of the held-out windows (nats)", round(d.bigram_nats, 4)),
            (SEEN_BIGRAM,
             " / ".join(f"{v:.4f}" for v in d.seen_bigram_nats.values()))]


def setup(b: Bundle) -> pd.DataFrame:
    return quantities(_setup_rows(b))


def describe(b: Bundle) -> str:
    v = dict(_setup_rows(b))
    return (f"A byte-level BPE of {v['vocabulary (BPE)']:,} tokens trained on {v['training documents']} documents "
            f"({v['training tokens']:,} training tokens; {v['held-out documents']} documents held out). "
            f"{v['frequent types (mask: V_f experts)']:,} frequent types cover "
            f"{v['training occurrences covered by frequent types']:.1%} of the training occurrences; every other type "
            f"sees one expert. Each run takes {v['steps per run']} steps ({v['tokens per run']:,} tokens, "
            f"{v['epochs over the training tokens']} epochs); {v['seeds (SMoE, MaskMoE)']} seeds for SMoE and "
            f"MaskMoE, {v['seeds (Dense, Hash, StableMoE proxy)']} for the others. Held-out evaluation: "
            f"{v['held-out windows x positions']} positions, {v['held-out positions with a rare input token']:.1%} "
            f"of them with a rare input token. Count models score on the same windows: the unigram of the training "
            f"split {v['unigram cross-entropy of the held-out windows (nats)']} nats, a Kneser-Ney bigram of the "
            f"whole split {v['Kneser-Ney bigram cross-entropy of the held-out windows (nats)']} nats, and a bigram "
            f"of exactly the windows one seed's run trains on "
            f"{v[SEEN_BIGRAM]} nats: "
            f"every network must beat the bigram of its own data before it is compared.")


# ================================================================================================== tables


def table1(b: Bundle) -> pd.DataFrame:
    """The main-table analogue (spec T1): held-out loss / perplexity and next-token accuracy (the stand-in for the
    downstream suite, T2) of every variant, mean and spread over seeds, the loss at the seed every variant shares
    (like for like: the single-seed baselines beside the deciding pair's seed), and the mean top-1 gate weight over
    the held-out positions and MoE layers (the experts' outputs are scaled by it); the paper's values were not
    recovered."""
    f = _final(b)
    bud = b.budgets.set_index("variant")
    rows = []
    for v in VARIANTS:
        g = f[f["variant"] == v]
        if g.empty:
            continue
        s0 = g[g["seed"] == b.cfg.seed]["loss"]
        gates = [float(r["result"]["final"]["heldout"]["gate"].mean()) for r in b.runs.records
                 if r["variant"] == v and r["result"]["final"]["heldout"]["gate"].numel()]
        rows.append({"variant": LABELS[v], "seeds": len(g), "loss_mean": g["loss"].mean(),
                     "loss_std": g["loss"].std(ddof=1) if len(g) > 1 else float("nan"),
                     f"loss_seed{b.cfg.seed}": float(s0.iloc[0]) if len(s0) else float("nan"), "ppl_mean": g["ppl"].mean(),
                     "ppl_per_seed": " / ".join(f"{x:.2f}" for x in g["ppl"]), "accuracy_mean": g["accuracy"].mean(),
                     "mean_gate": float(np.mean(gates)) if gates else float("nan"),
                     "total_params": int(bud.loc[v, "total_params"]), "active_params": float(bud.loc[v, "active_params"])})
    return beside_paper(pd.DataFrame(rows), None)


def validity_table(b: Bundle) -> pd.DataFrame:
    """Every run: its final held-out loss within (0, ln V], clearly below the unigram, and below the Kneser-Ney
    bigram fitted on exactly the windows it trained on (``seen_bigram``: a network that has not beaten a bigram of
    its own data has not learned the text yet, and comparing two of them measures how fast each starts). Beside
    it, informational: whether it also beats the bigram of the whole training split (``full_bigram``), which a run
    that saw less than an epoch need not."""
    d = b.data
    frames = [_final(b)] + ([b.sweeps.assign(variant="maskmoe (sweep)")] if b.sweeps is not None else [])
    return pd.DataFrame([{"variant": r["variant"], "seed": r["seed"], "sweep": r.get("sweep", ""),
                          "value": r.get("value", ""), "loss": r["loss"],
                          **learning_row(r["loss"], r["seed"], d.unigram_nats, d.bigram_nats, d.seen_bigram_nats,
                                         d.n_ids, LEARN_MARGIN)} for f in frames for _, r in f.iterrows()])


def validity(b: Bundle, sweeps: bool = False) -> C.Validity:
    t = validity_table(b)
    t = t if sweeps else t[t["sweep"].astype(str) == ""]
    budget_ok = bool((b.budgets["active_vs_dense"].abs() <= 0.005).all())
    return C.learning_validity(t, b.data.unigram_nats, LEARN_MARGIN) + C.Validity.check(
        budget=(budget_ok, "active parameters differ from Dense by more than 0.5%"))


def proxy_validity(b: Bundle) -> C.Validity:
    """The StableMoE proxy is a fair baseline only if its frozen table did not collapse onto a few experts: its
    held-out load imbalance (coefficient of variation, mean over layers) at most ``PROXY_LOAD_CV_RATIO`` x the larger
    of SMoE's and the random Hash Layer's (the imbalance a fixed per-token table has without any collapse)."""
    ls = load_summary(b).groupby("variant")["load_cv"].mean()
    if "stablemoe_proxy" not in ls or "smoe" not in ls:
        return C.Validity()
    ref = max(ls["smoe"], ls.get("hash", 0.0))
    ok = ls["stablemoe_proxy"] <= PROXY_LOAD_CV_RATIO * ref
    moved = _proxy_moved(b)
    return C.Validity.check(
        proxy_load=(bool(ok), f"the StableMoE proxy's frozen routing is collapsed: load CV "
                              f"{ls['stablemoe_proxy']:.2f} > {PROXY_LOAD_CV_RATIO} x max(SMoE's {ls['smoe']:.2f}, "
                              f"Hash's {ls.get('hash', 0.0):.2f})"),
        proxy_moved=(moved <= b.cfg.stable_max_moved, f"the StableMoE proxy's balanced table moved {moved:.1%} of the "
                     f"voted occurrences off their majority expert (> {b.cfg.stable_max_moved:.0%}): it is no longer "
                     "the stage-1 router's routing"))


def _proxy_moved(b: Bundle) -> float:
    """The largest share, over the MoE layers and the proxy's seeds, of the stage-1 voted occurrences that the frozen
    table sends elsewhere than their majority expert (0 for the plain vote; NaN-free: 0 without a proxy run)."""
    m = [x for r in b.runs.records if r["variant"] == "stablemoe_proxy" for x in r["result"].get("proxy_moved", [])]
    return float(max(m)) if m else 0.0


def proxy_load_text(b: Bundle) -> str:
    """The proxy's load numbers beside the rule, and what the first (stricter) rule said, for the C3 evidence."""
    ls = load_summary(b).groupby("variant")[["load_cv", "load_max"]].mean()
    if "stablemoe_proxy" not in ls.index or "smoe" not in ls.index:
        return ""
    p, sm = ls.loc["stablemoe_proxy"], ls.loc["smoe"]
    h = ls.loc["hash"] if "hash" in ls.index else None
    first = "passes" if p["load_cv"] <= PROXY_LOAD_CV_RATIO * sm["load_cv"] else "fails"
    return (f"proxy load CV {p['load_cv']:.2f}, max expert share {p['load_max']:.2f} (SMoE {sm['load_cv']:.2f} / "
            f"{sm['load_max']:.2f}" + (f", Hash {h['load_cv']:.2f} / {h['load_max']:.2f}" if h is not None else "")
            + f", uniform share {1 / b.cfg.n_experts:.3f}); the first collapse rule (CV <= {PROXY_LOAD_CV_RATIO} x "
            f"SMoE's alone) {first}; frozen after {b.cfg.stable_freeze_frac:.0%} of the steps ({b.cfg.stable_assign} "
            f"assignment, slack {b.cfg.stable_slack:g}: {_proxy_moved(b):.1%} of the voted occurrences belong to ids "
            f"moved off their majority expert, at most {b.cfg.stable_max_moved:.0%} allowed), gate {b.cfg.stable_gate}"
            + _freeze_cost(b))


def _freeze_cost(b: Bundle) -> str:
    """The proxy's final loss against the SMoE run of the same seed (the stage 1 it was frozen from, trained on)."""
    f = _final(b)
    p = f[(f["variant"] == "stablemoe_proxy")].set_index("seed")["loss"]
    s = f[(f["variant"] == "smoe")].set_index("seed")["loss"]
    common = sorted(set(p.index) & set(s.index))
    if not common:
        return ""
    d = float(np.mean([p[k] - s[k] for k in common]))
    return (f"; the proxy ends {d:+.4f} nats from the SMoE run it was frozen from (same seed, trained on instead): "
            "the freeze and the gate switch cost it that much")


def fluctuation_summary(b: Bundle) -> pd.DataFrame:
    """Mean fraction of positions whose expert changed between consecutive checkpoints, per variant, seed and
    position group."""
    f = b.fluctuation
    return f.groupby(["variant", "seed", "positions"], sort=False)["changed"].mean().reset_index()


def load_summary(b: Bundle) -> pd.DataFrame:
    """Per-expert load imbalance on the held-out windows: coefficient of variation and max load, per variant and
    layer (mean over seeds)."""
    g = b.load.groupby(["variant", "seed", "layer"])["load"]
    t = pd.DataFrame({"load_cv": g.std(ddof=0) / g.mean(), "load_max": g.max()}).reset_index()
    return t.groupby(["variant", "layer"], sort=False)[["load_cv", "load_max"]].mean().reset_index()


# ================================================================================================= figures


def fig_loss_by_frequency(b: Bundle):
    """Left: held-out loss by the input token's training-count bucket per variant (95% bootstrap over windows).
    Right: the paired gap to MaskMoE (positive = MaskMoE better) per bucket."""
    fr, gp = b.buckets.frame, b.buckets.gaps
    labels = [g for g in fr["group"].unique() if g.startswith(("[", ">="))]
    fig, (a, c) = plotting.axes(2, 5.5, 3.8)
    x = np.arange(len(labels))
    for i, v in enumerate(VARIANTS):
        d = fr[(fr["variant"] == v)].set_index("group").reindex(labels)
        if d["loss"].isna().all():
            continue
        off = (i - 2.5) * 0.08
        a.errorbar(x + off, d["loss"], yerr=[d["loss"] - d["ci_lo"], d["ci_hi"] - d["loss"]], fmt="o-", ms=3,
                   capsize=2, label=LABELS[v], color=f"C{i}")
    a.set_xticks(x, labels, rotation=30, ha="right")
    a.set_xlabel("training count of the input token")
    a.set_ylabel("held-out loss (nats)")
    a.legend()
    comps = ("smoe - maskmoe", "hash - maskmoe", "stablemoe_proxy - maskmoe", "maskmoe_rho1 - maskmoe")
    for i, comp in enumerate(comps):
        d = gp[gp["comparison"] == comp].set_index("group").reindex(labels)
        if d["gap"].isna().all():
            continue
        off = (i - 1.5) * 0.1
        c.errorbar(x + off, d["gap"], yerr=[d["gap"] - d["ci_lo"], d["ci_hi"] - d["gap"]], fmt="o", ms=3, capsize=2,
                   label=f"{LABELS[comp.split(' - ')[0]]} − MaskMoE", color=f"C{VARIANTS.index(comp.split(' - ')[0])}")
    c.axhline(0, color="k", lw=0.6)
    c.set_xticks(x, labels, rotation=30, ha="right")
    c.set_xlabel("training count of the input token")
    c.set_ylabel("loss gap (nats; > 0: MaskMoE better)")
    sizes = fr[fr["variant"] == "maskmoe"].set_index("group").reindex(labels)["positions"]
    for xi, n in zip(x, sizes):
        c.annotate(f"n={int(n)}" if n == n else "", (xi, 0), textcoords="offset points", xytext=(0, -12),
                   ha="center", fontsize=6)
    c.legend()
    return plotting.finish(fig)


def fig_fluctuation(b: Bundle):
    """Routing fluctuation between consecutive checkpoints: SMoE (all and frequent-token positions) and MaskMoE
    (frequent-token positions; its rare positions cannot change), each seed faint, the seed mean as a line; dashed:
    the chance level of each (uniform choice among N experts for SMoE, among V_f for MaskMoE)."""
    f = b.fluctuation
    fig, (ax,) = plotting.axes(1, 5.5, 3.8)
    for n, c, who in ((b.cfg.n_experts, "C0", "SMoE"), (b.cfg.n_visible_frequent, "C2", "MaskMoE")):
        ax.axhline(chance_fluctuation(n), color=c, ls="--", lw=0.7, label=f"chance, {who} (1 − 1/{n})")
    for i, (v, g) in enumerate((("smoe", "all"), ("smoe", "frequent"), ("maskmoe", "frequent"))):
        d = f[(f["variant"] == v) & (f["positions"] == g)]
        if d.empty:
            continue
        for _, s in d.groupby("seed"):
            ax.plot(s["to_step"], s["changed"], "-", color=f"C{i}", alpha=0.25, lw=0.8)
        m = d.groupby("to_step")["changed"].mean()
        ax.plot(m.index, m.values, "o-", ms=3, color=f"C{i}", label=f"{LABELS[v]}, {g} positions "
                                                                 f"({d['seed'].nunique()} seeds)")
    ax.set_xlabel("training step (checkpoint)")
    ax.set_ylabel("fraction of held-out positions whose expert changed")
    ax.legend()
    return plotting.finish(fig)


def fig_diversity(b: Bundle):
    """Distinct top-1 experts per frequent token type (held-out occurrences, mean over MoE layers and seeds)."""
    f = b.diversity.frame
    fig, (ax,) = plotting.axes(1, 5.5, 3.6)
    order = [v for v in ("hash", "stablemoe_proxy", "maskmoe", "smoe") if v in set(f["variant"])]
    data = [f[f["variant"] == v].groupby("token")["distinct_experts"].mean().to_numpy() for v in order]
    ax.boxplot(data, tick_labels=[LABELS[v] for v in order], showmeans=True)
    ax.axhline(b.cfg.n_visible_frequent, color="C2", ls=":", lw=0.8, label=f"V_f = {b.cfg.n_visible_frequent}")
    ax.set_ylabel("distinct experts per frequent type")
    ax.legend()
    return plotting.finish(fig)


def fig_loss_curve(b: Bundle):
    """Held-out loss over training: SMoE and MaskMoE at every checkpoint (seeds faint, mean line); the other
    variants' final losses as points."""
    f = b.runs.frame
    fig, (ax,) = plotting.axes(1, 6.5, 3.8)
    plotting.seed_curves(ax, f[f["variant"].isin(DECIDING)], "step", "loss", "variant", labels=LABELS)
    fin = _final(b)
    for i, (v, marker) in enumerate(zip(("dense", "hash", "stablemoe_proxy"), ("s", "D", "^"))):
        d = fin[fin["variant"] == v]
        ax.plot(d["step"], d["loss"], marker, ms=6, mfc="none", mew=1.2, color=f"C{i + 2}",
                label=f"{LABELS[v]} (final)")
    ax.axhline(b.data.unigram_nats, color="k", ls=":", lw=0.8, label="unigram (count model)")
    ax.axhline(b.data.bigram_nats, color="k", ls="--", lw=0.8, label="Kneser-Ney bigram, whole training split")
    seen = list(b.data.seen_bigram_nats.values())
    ax.axhspan(min(seen), max(seen), color="k", alpha=0.12, lw=0,
               label="Kneser-Ney bigram of one run's own training windows (range over seeds)")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out loss (nats)")
    handles, labels = ax.get_legend_handles_labels()
    ax.get_legend().remove()  # one legend below the figure: nothing drawn under it
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=7)
    return plotting.finish(fig)


def fig_load(b: Bundle):
    """Per-expert share of held-out positions in each MoE layer (mean over seeds)."""
    t = b.load.groupby(["variant", "layer", "expert"])["load"].mean().reset_index()
    layers = sorted(t["layer"].unique())
    fig, axs = plotting.axes(len(layers), 4.5, 3.2)
    for ax, layer in zip(axs, layers):
        piv = t[t["layer"] == layer].pivot(index="expert", columns="variant", values="load")
        piv = piv[[v for v in VARIANTS if v in piv.columns]].rename(columns=LABELS)
        plotting.grouped_bars(ax, piv)
        ax.axhline(1 / b.cfg.n_experts, color="k", lw=0.6)
        ax.set_title(f"MoE layer {layer}")
        ax.set_xlabel("expert")
        ax.set_ylabel("share of positions")
        ax.get_legend().remove()  # one legend below the panels: inside, it hid the tallest bars
    handles, labels = axs[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return fig


def fig_sweep(b: Bundle, sweep: str, xlabel: str):
    f = b.sweeps[b.sweeps["sweep"] == sweep]
    fig, (ax,) = plotting.axes(1, 4.5, 3.4)
    m = f.groupby("value")["loss"].agg(["mean", "count"]).reset_index()
    ax.plot(f["value"].astype(float), f["loss"], "o", alpha=0.4, color="C0")
    ax.plot(m["value"].astype(float), m["mean"], "-", color="C0", label=f"MaskMoE (mean of {int(m['count'].max())})")
    ax.set_xscale("log", base=2 if sweep == "n_visible_frequent" else 10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out loss (nats)")
    ax.legend()
    return plotting.finish(fig)


# ===================================================================================================== claims


def _window_claim(b: Bundle, cid: str, text: str, comp: str, group: str, what: str, shift: float = 0.0) -> C.Claim:
    """A comparison with a single-seed baseline (``claims.single_seed_gap_claim``): the paired bootstrap over
    held-out windows (same seed, same batches) and the prediction interval of one seed's gap, whose spread comes from
    the per-seed gaps of the deciding pair (SMoE − MaskMoE, ``n_seeds`` seeds) on the same positions. ``shift``: the
    gap and its replicates moved by that much (the horizon rule's continuation)."""
    g = b.buckets.gaps.set_index(["comparison", "group"]).loc[(comp, group)]
    return C.single_seed_gap_claim(
        cid, text, float(g["gap"]) + shift, b.buckets.boot[(comp, group)] + shift,
        b.buckets.per_seed[("smoe - maskmoe", group)],
        metric=f"held-out loss (nats), {what}, {group} positions", direction="positive",
        what=f"95% paired bootstrap over {len(b.data.windows)} held-out windows, {int(g['paired_seeds'])} paired "
             "seed(s)", evidence="table1, extra_frequency_gaps, extra_loss_by_frequency")


def _converging(b: Bundle, claim: C.Claim, comp: str, rejudge) -> C.Claim:
    """``claims.heldout_converging``: does the held-out gap ``comp`` (all positions) still move over the last
    ``DRIFT_FRAC`` of the steps, and would the claim's own rule (``rejudge``) still pass with it continued for one
    more run length? The single-seed bar is the SMoE − MaskMoE seed spread."""
    return C.heldout_converging(claim, rejudge, b.buckets.drift.get(comp),
                                b.buckets.per_seed.get(("smoe - maskmoe", "all"), []), DRIFT_FRAC, comp)


def _seed_claim(b: Bundle, cid: str, text: str, gaps, metric: str, evidence: str, detail: str = "") -> C.Claim:
    return C.seed_gap_claim(cid, text, list(gaps), metric=metric, direction="positive", evidence=evidence,
                            detail=detail, need=True)


def chance_fluctuation(n_choices: int) -> float:
    """The fraction of positions whose top-1 expert changes between two checkpoints if each picked uniformly at
    random among ``n_choices`` experts: 1 − 1/n (the ceiling against which fluctuation is read)."""
    return 1.0 - 1.0 / n_choices


def _sweep_interior(b: Bundle, sweep: str) -> list[float]:
    """Per seed: min(loss at the smallest, loss at the largest value) − the best interior loss (> 0: an intermediate
    value wins)."""
    f = b.sweeps[b.sweeps["sweep"] == sweep]
    out = []
    for _, g in f.groupby("seed"):
        g = g.assign(x=g["value"].astype(float)).sort_values("x")
        if len(g) < 3:
            continue
        out.append(float(min(g["loss"].iloc[0], g["loss"].iloc[-1]) - g["loss"].iloc[1:-1].min()))
    return out


def claims(cfg, b: Bundle) -> list[C.Claim]:
    out = []
    val = validity(b)
    m = b.mechanism
    out.append(C.Claim(
        "C0", "The routing mask works as described: routed experts lie in each token's visible set, rare tokens get "
        "gate 1 and no router gradient, masked logits get no gradient, all-visible = SMoE, all-rare = Hash Layer",
        "fraction of the mechanism checks that hold (extra_mechanism); rule: = 1", None, float(m["ok"].mean()),
        f"{int(m['ok'].sum())}/{len(m)} checks", C.verdict_threshold(float(m["ok"].mean()), None, at_least=1.0),
        "extra_mechanism"))
    # C1: the headline: MaskMoE beats dynamic routing (seeds paired: same init, same batches), on loss and accuracy
    f = b.runs.frame
    gaps = C.paired_gap(f, "smoe", "maskmoe", key="variant", value="loss").to_numpy()
    c1_of = lambda s: _seed_claim(  # noqa: E731
        b, "C1", "MaskMoE reaches lower perplexity than learned top-1 routing (SMoE, dynamic)", gaps + s,
        "held-out loss (nats), SMoE − MaskMoE (positive = MaskMoE better); second metric: next-token accuracy, "
        "MaskMoE − SMoE", "table1, extra_loss_curve")
    c1 = c1_of(0.0)
    acc = C.paired_gap(f, "maskmoe", "smoe", key="variant", value="accuracy").to_numpy()
    aci = C.t_interval(acc)
    c1 = C.second_metric(c1, C.verdict_from_interval(aci, paper_direction="positive"),
                         f"accuracy gap {np.mean(acc):+.4f} " + C.fmt_ci(aci, f"95% t over {len(acc)} seeds"))
    out.append(C.judged(_converging(b, c1, "smoe - maskmoe", lambda s: c1_of(s).verdict), val))
    # C2-C4: against fixed routing, the StableMoE proxy and Dense (single-seed baselines)
    for cid, text, comp, what, extra in (
            ("C2", "MaskMoE beats fixed routing (Hash Layer)", "hash - maskmoe", "Hash − MaskMoE", C.Validity()),
            ("C3", "MaskMoE beats the StableMoE *proxy* (SMoE routing frozen per token id after "
                   f"{cfg.stable_freeze_frac:.0%} of training; a stand-in, not StableMoE)", "stablemoe_proxy - maskmoe",
             "StableMoE proxy − MaskMoE", proxy_validity(b)),
            ("C4", "MaskMoE beats the dense model with the same active parameters", "dense - maskmoe",
             "Dense − MaskMoE", C.Validity())):
        c = _window_claim(b, cid, text, comp, "all", what)
        if cid == "C3":  # the proxy's load numbers and the collapse rule beside the verdict
            c = dataclasses.replace(c, ours_ci=f"{c.ours_ci}; {proxy_load_text(b)}")
        rejudge = lambda s, cid=cid, text=text, comp=comp, what=what: _window_claim(  # noqa: E731
            b, cid, text, comp, "all", what, s).verdict
        out.append(C.judged(_converging(b, c, comp, rejudge), val + extra))
    # C5: problem 1 — dynamic routing under-fits rare tokens; the mask helps them most (difference in differences,
    # per seed: the rare-position gain minus the frequent-position gain, so a whole-model difference cancels)
    rare, freq = "rare (mask: 1 expert)", "frequent (mask: V_f experts)"
    ps = b.buckets.per_seed
    did = np.asarray(ps[("smoe - maskmoe", rare)]) - np.asarray(ps[("smoe - maskmoe", freq)])
    out.append(C.judged(_seed_claim(
        b, "C5", "Rare tokens are under-fitted under dynamic routing: MaskMoE's gain over SMoE is larger on positions "
        "whose input token is rare (one fixed expert) than on frequent ones", did,
        "held-out loss (nats), (SMoE − MaskMoE on rare-input positions) − (SMoE − MaskMoE on frequent-input "
        "positions), per seed", "extra_loss_by_frequency, extra_frequency_gaps",
        detail="rare-position gap alone " + " / ".join(f"{x:+.4f}" for x in ps[("smoe - maskmoe", rare)])), val))
    # C6: routing fluctuation — each variant's frequent-position fluctuation as a fraction of its chance level
    # (uniform choice among the experts it may pick: N for SMoE, V_f for MaskMoE), so fewer choices alone cannot win
    fs = fluctuation_summary(b)
    fq = fs[fs["positions"] == "frequent"].pivot(index="seed", columns="variant", values="changed")
    ch = {"smoe": chance_fluctuation(cfg.n_experts), "maskmoe": chance_fluctuation(cfg.n_visible_frequent)}
    if {"smoe", "maskmoe"} <= set(fq.columns):
        rel = (fq["smoe"] / ch["smoe"] - fq["maskmoe"] / ch["maskmoe"]).dropna().to_numpy()
        raw = (fq["smoe"] - fq["maskmoe"]).dropna().to_numpy()
    else:
        rel = raw = np.array([])
    out.append(C.judged(_seed_claim(
        b, "C6", "Routing fluctuation: during training MaskMoE's frequent tokens change expert less often than SMoE's",
        rel, "fraction of frequent-input held-out positions whose top-1 expert changed between consecutive "
        f"checkpoints ({cfg.n_checkpoints} checkpoints), each over its chance level (SMoE {ch['smoe']:.3f}, MaskMoE "
        f"{ch['maskmoe']:.3f}), SMoE − MaskMoE", "extra_fluctuation",
        detail="raw fractions, SMoE − MaskMoE " + " / ".join(f"{x:+.4f}" for x in raw)), val))
    # C7: problem 2 — fixed routing removes diversity; MaskMoE's frequent tokens use several of their V_f experts
    ds = b.diversity.summary.set_index("variant")
    if "maskmoe" in ds.index:
        r = ds.loc["maskmoe"]
        ci = (r["distinct_experts_ci_lo"], r["distinct_experts_ci_hi"])
        hash_d = ds.loc["hash", "distinct_experts"] if "hash" in ds.index else float("nan")
        smoe_d = ds.loc["smoe", "distinct_experts"] if "smoe" in ds.index else float("nan")
        out.append(C.judged(C.Claim(
            "C7", "Fixed routing gives each frequent token one expert; MaskMoE keeps several (representation "
            "diversity; a mechanism check more than a finding: it fails only if the router sends every occurrence of a "
            "frequent type to one of its visible experts)", f"distinct top-1 experts per frequent type under MaskMoE ({int(r['types'])} types); rule: "
            f"95% bootstrap over types >= 1 + {cfg.diversity_margin} (pre-registered margin; 1 = fixed routing)",
            None, r["distinct_experts"], C.fmt_ci(ci, "95% bootstrap over types") + f"; Hash Layer {hash_d:.2f}, SMoE "
            f"{smoe_d:.2f}, MaskMoE may use {cfg.n_visible_frequent}",
            C.verdict_threshold(r["distinct_experts"], ci, at_least=1 + cfg.diversity_margin), "extra_diversity"), val))
    # C8: ... and that diversity helps frequent tokens (MaskMoE below Hash on frequent-input positions)
    out.append(C.judged(_window_claim(b, "C8", "Frequent tokens benefit from several experts: on frequent-input "
                                      "positions MaskMoE beats the Hash Layer", "hash - maskmoe", freq,
                                      "Hash − MaskMoE"), val))
    # C12 (ours): the control for C5 -- the same mask with every token frequent; on rare-input positions the only
    # difference is that MaskMoE pins the token to one expert (gate 1) where the control lets the router choose
    c12 = (C.judged(_window_claim(b, "C12", "Ours, the control for C5: pinning rare tokens to one expert helps them: "
                                      "on rare-input positions MaskMoE beats its ρ = 1 control (every token V_f "
                                      "visible experts, the router choosing)", "maskmoe_rho1 - maskmoe", rare,
                                      "MaskMoE ρ = 1 − MaskMoE"), val))
    # C9-C11: sweeps and the per-layer ablation (paper scale; run at smoke to test the path)
    texts = {"C9": ("An intermediate V_f beats both ends (V_f = 1: Hash-like, V_f = N: SMoE-like on frequent tokens)",
                    "n_visible_frequent"),
             "C10": ("An intermediate frequent fraction beats the smallest and the largest of the sweep",
                     "frequent_fraction")}
    if b.sweeps is None:
        for cid, (text, _) in texts.items():
            out.append(C.not_run(cid, text, "held-out loss (nats), min(ends) − best interior value"))
        out.append(C.not_run("C11", "Per-layer masks make no difference against one shared mask (ours: the spec "
                             "leaves it UNCONFIRMED)", "held-out loss (nats), per-layer − shared"))
        return out + [c12]
    sval = validity(b, sweeps=True)
    for cid, (text, sweep) in texts.items():
        out.append(C.judged(_seed_claim(b, cid, text, _sweep_interior(b, sweep), "held-out loss (nats), "
                                        f"min(loss at the ends) − best interior loss, sweep of {sweep}",
                                        f"extra_sweeps, extra_sweep_{'visible' if cid == 'C9' else 'fraction'}"), sval))
    f = b.sweeps[b.sweeps["sweep"] == "mask_per_layer"]
    p = f.pivot(index="seed", columns="value", values="loss")
    g = (p[True] - p[False]).dropna().to_numpy() if {True, False} <= set(p.columns) else np.array([])
    ci = C.t_interval(g)
    out.append(C.judged(C.Claim(
        "C11", "Per-layer masks make no difference against one shared mask (ours: the spec leaves it UNCONFIRMED)",
        f"held-out loss (nats), per-layer − shared; rule: 95% t-interval inside ±{cfg.equivalence_margin} "
        "(pre-registered margin)", None, float(g.mean()) if len(g) else None,
        C.fmt_ci(ci, f"95% t over {len(g)} seeds"), C.verdict_equivalence(ci, margin=cfg.equivalence_margin),
        "extra_sweeps"), sval))
    return out + [c12]
