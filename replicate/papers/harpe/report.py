"""HARPE's tables, figures and claims: pure functions of the bundle (nothing here trains, evaluates or resamples;
every bootstrap is drawn in ``experiments.py``). The paper's numbers come from the spec (``harpe.md`` §3.3, §5) and
stand beside ours with ``source = paper``. Retrieval scores are fractions in [0, 1] (the paper's are percentages:
its numbers are divided by 100 where they stand beside ours); perplexities are exp(mean held-out loss)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from replicate import claims as C
from replicate import plotting
from replicate.data.ngram import learning_row
from replicate.experiments import Bundle
from replicate.notebook import note_footer
from replicate.papers.harpe import RULER_NIAH_TASKS, RULER_TASKS
from replicate.papers.harpe.experiments import ARMS, TRAINED, TRAINING_FREE, arms, eval_models, metric_vectors
from replicate.papers.harpe.method import PAPER_TABLE2, waveform
from replicate.tables import beside_paper, quantities

# ------------------------------------------------------------------------------------- the paper's numbers (spec §5)

PAPER_TABLE3 = {  # method -> (Proof-pile PPL, GovReport PPL)
    "short": (4336.96, 7289.38), "pi": (20.73, 11.47), "abf_single": (3.06, 3.58), "abf_multi": (3.03, 3.57),
    "yarn": (4.53, 4.52), "self_extend": (5.45, 3.76), "harpe": (3.02, 3.54)}
PAPER_LENGTHS = ("4k", "8k", "16k", "32k", "64k", "128k")
PAPER_TABLE4 = {  # method -> NIAH (mean of 8 tasks, %) per length, and the average
    "pi": (77.56, 26.59, 16.50, 0, 0, 0, 20.11), "abf_single": (92.44, 88.78, 84.16, 78.03, 70.81, 62.72, 79.49),
    "abf_multi": (95.19, 91.72, 87.53, 78.84, 72.78, 62.13, 81.36),
    "yarn": (83.88, 73.66, 64.84, 46.53, 12.69, 0, 46.93), "self_extend": (76.47, 66.25, 58.84, 52.16, 1.38, 0, 42.52),
    "harpe": (97.03, 96.88, 93.72, 86.66, 79.41, 67.19, 86.82)}
PAPER_TABLE5_AVG = {"abf_single": 62.39, "abf_multi": 62.69, "harpe": 62.75}  # short-context benchmark average
PAPER_TABLE6 = {"harpe": 86.82, "harpe_uniform": 84.30, "uniform_descending": 85.30, "stride 10k": 84.51,
                "stride 20k": 85.57, "stride 40k": 84.69, "stride 50k": 83.68}
PAPER_TABLE7_HARPE = (88.48, 83.44, 74.87, 68.10, 55.64, 51.88, 70.40)
PAPER_TABLE8 = {  # task -> (ABF multi, HARPE) average over lengths; HARPE multiquery: not in the conversion
    "niah_single_1": (99.17, 100.0), "niah_single_2": (99.17, 100.0), "niah_single_3": (99.00, 99.83),
    "niah_multikey_1": (91.83, 93.17), "niah_multikey_2": (74.33, 82.67), "niah_multikey_3": (36.67, 55.00),
    "niah_multivalue": (64.58, 79.67), "niah_multiquery": (86.17, None)}


def _pts(a: float, b: float) -> float:
    """The paper's gap of two percentages as a fraction (our unit)."""
    return round((a - b) / 100, 4)


# ================================================================================================== set-up


def _short_loss(b: Bundle) -> float:
    return float(b.runs.pretrain["final"]["heldout"].double().mean())


def _setup_rows(b: Bundle) -> list[tuple[str, object]]:
    d, cfg, bs = b.data, b.cfg, b.bases
    return [("training / held-out plays", f"{d.n_train_docs} / {d.n_heldout_docs}"),
            ("training text tokens; vocabulary (BPE)", f"{d.train_tokens:,}; {d.n_ids}"),
            ("model", f"d {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads (d_h {cfg.head_dim}, "
                      f"{cfg.head_dim // 2} frequency pairs), FFN {cfg.d_ff}"),
            ("Phase A: length, base, steps x rows (tokens)",
             f"{cfg.seq_len}, {cfg.rope_theta:g}, {cfg.steps} x {cfg.batch_size} "
             f"({cfg.steps * cfg.batch_size * cfg.seq_len:,})"),
            ("Phase B: length (factor s), steps x rows (tokens per method)",
             f"{cfg.long_len} ({cfg.factor}x), {cfg.cont_steps} x {cfg.cont_batch_size} "
             f"({cfg.cont_steps * cfg.cont_batch_size * cfg.long_len:,})"),
            ("retrieval share of training rows; pool rows per length",
             f"{cfg.retrieval_frac}; " + ", ".join(f"{L}: {len(p.ids)}" for L, p in sorted(d.pools.items()))),
            ("retrieval rows: answer loss weight; sample lengths at seq_len",
             f"{cfg.answer_weight:g}; " + (f"{min(cfg.retrieval_min_len, cfg.seq_len)} .. {cfg.seq_len} (uniform)"
                                           if cfg.retrieval_min_len else f"{cfg.seq_len}")),
            ("Phase A: copy rows; warm-up tasks (share of the steps)",
             f"{cfg.copy_frac}; {', '.join(cfg.warmup_tasks)} ({cfg.warmup_tasks_frac})"),
            ("base range b_min .. b_max (our scaling rule), candidate stride",
             f"{bs.b_min:,.0f} .. {bs.b_max:,.0f}, {bs.stride:,.0f}"),
            ("HARPE bases (peak-valley, head order)", ", ".join(f"{x:,.0f}" for x in bs.harpe)),
            ("uniform bases", ", ".join(f"{x:,.0f}" for x in bs.uniform)),
            ("ABF multi-stage: (base, length, rows, steps)",
             "; ".join(f"({x:,.0f}, {L}, {r}, {s})" for x, L, r, s in bs.stages)),
            ("PI / YaRN factor; Self-Extend w, G", f"{cfg.factor}; {cfg.window}, {cfg.group}"),
            ("seeds: HARPE, ABF multi / other arms", f"{cfg.n_seeds} / 1"),
            ("evaluation prompts (RULER cells + heat-map cells + passkey)",
             " + ".join(str(sum(p.kind == k for p in d.prompts)) for k in ("ruler", "heat", "passkey"))),
            ("unigram / Kneser-Ney bigram / bigram of Phase A's rows, on held-out windows (nats)",
             f"{d.unigram_nats:.4f} / {d.bigram_nats:.4f} / {d.seen_bigram_nats:.4f}"),
            ("short model held-out loss at seq_len (nats)", round(_short_loss(b), 4)),
            ("training wall time: Phase A / all Phase-B runs (s)",
             f"{b.runs.pretrain['wall_s']:.1f} / {b.runs.frame[b.runs.frame['variant'] != 'short']['wall_s'].sum():.1f}")]


def setup(b: Bundle) -> pd.DataFrame:
    return quantities(_setup_rows(b))


def describe(b: Bundle) -> str:
    v = dict(_setup_rows(b))
    return (f"Model: {v['model']}. Phase A pre-trains the short model ({v['Phase A: length, base, steps x rows (tokens)']}"
            f"; held-out loss {v['short model held-out loss at seq_len (nats)']} nats); every method then continues "
            f"from it at {v['Phase B: length (factor s), steps x rows (tokens per method)']}. Bases "
            f"{v['base range b_min .. b_max (our scaling rule), candidate stride']}; HARPE's searched bases: "
            f"{v['HARPE bases (peak-valley, head order)']}.")


# ================================================================================================= validity


def validity_table(b: Bundle) -> pd.DataFrame:
    """Every trained model's held-out loss at the short length: in (0, ln V], clearly below the unigram, below the
    bigram of Phase A's rows (the bar every model shares: each Phase-B run also saw Phase A's rows)."""
    d = b.data
    return pd.DataFrame([{"variant": r.variant, "seed": r.seed, "loss": r.loss,
                          **learning_row(r.loss, r.seed, d.unigram_nats, d.bigram_nats, {r.seed: d.seen_bigram_nats},
                                         d.n_ids, b.cfg.learn_margin)} for r in b.runs.frame.itertuples()])


def short_ceiling(b: Bundle) -> float:
    """The short model's mean NIAH score at its own length (the skill the extension must carry to longer contexts)."""
    return arm_short_niah(b, "short")


def checks_table(b: Bundle) -> pd.DataFrame:
    """The machinery's own checks: the scorer gives 1.0 on every gold answer; every score lies in [0, 1]; every
    loss is finite; the short model has a retrieval skill to extend."""
    s, p = b.evals.scores, b.evals.ppl
    ceiling = short_ceiling(b)
    return pd.DataFrame([
        {"check": "scorer gives 1.0 on the gold answer of every evaluation prompt", "value":
            float(np.min(b.data.gold_scores)), "ok": bool(np.all(np.asarray(b.data.gold_scores) == 1.0))},
        {"check": "every retrieval score in [0, 1]", "value": float(s["score"].max()),
         "ok": bool(s["score"].between(0, 1).all())},
        {"check": "every held-out loss finite and in (0, ln V]", "value": float(p["nll"].max()),
         "ok": bool(np.isfinite(p["nll"]).all() and (p["nll"] > 0).all())},
        {"check": f"short model's NIAH at seq_len >= retrieval_floor ({b.cfg.retrieval_floor})", "value": ceiling,
         "ok": bool(np.isfinite(ceiling) and ceiling >= b.cfg.retrieval_floor)}])


def validity(b: Bundle, variants, retrieval: bool) -> C.Validity:
    t = validity_table(b)
    t = t[t["variant"].isin([*variants, "short"])]
    ck = checks_table(b)
    out = C.learning_validity(t, b.data.unigram_nats, b.cfg.learn_margin) + C.Validity.check(
        machinery=(bool(ck.iloc[:3]["ok"].all()), "machinery checks failed: " +
                   "; ".join(ck.iloc[:3].loc[~ck.iloc[:3]["ok"], "check"])))
    if retrieval:
        ceiling = short_ceiling(b)
        out = out + C.Validity.check(skill=(bool(ck.iloc[3]["ok"]), f"the short model's NIAH score at its own "
                                            f"length is {ceiling:.3f}, below retrieval_floor {b.cfg.retrieval_floor}:"
                                            " there is no retrieval skill to extend"))
        lost = lost_arms(b, variants)  # every extended arm must have kept the skill at the short length
        out = out + C.Validity.check(recovered=(not lost, "extended arms lost the short model's retrieval at its own "
                                                f"length {b.cfg.seq_len} (NIAH " + ", ".join(
                                                    f"{v} {x:.3f}" for v, x in lost.items()) + f" < recovery_floor "
                                                f"{b.cfg.recovery_floor} x the short model's {ceiling:.3f}): the "
                                                "comparison would measure the loss of the skill, not the extension"))
    return out


def lost_arms(b: Bundle, variants) -> dict:
    """The extended arms among ``variants`` whose NIAH at seq_len (seed mean) is below ``recovery_floor`` x the
    short model's: they lost the skill the extension is meant to carry."""
    ceiling = short_ceiling(b)
    if not (np.isfinite(ceiling) and ceiling > 0):
        return {}
    bar = b.cfg.recovery_floor * ceiling
    return {v: x for v, x in ((v, arm_short_niah(b, v)) for v in variants if v != "short") if np.isfinite(x) and x < bar}


def untestable(cid: str, text: str, metric: str, pv, arm: str, x: float, b: Bundle, gap_note: str) -> C.Claim:
    """A comparison whose baseline ``arm`` (not the method under test) lost the short model's retrieval entirely at
    this scale: the claim cannot be tested here (``not_run``), with the measurements in the evidence. Set after the
    third referee audit, which measured that PI stays at 0.000 at every length after 160 Phase-B steps and at 0.05 at
    128 tokens after 480 (its fastest frequency drops from 1 to 1/s rad per token, the fine position signal copying
    rests on), while its held-out loss is normal: a working PI (the paper's keeps 77.56 at 4k) needs the paper scale."""
    return C.Claim(cid, text, metric, pv, None, "", "not_run",
                   f"untestable at this scale: the baseline {arm} lost retrieval (NIAH {x:.3f} at {b.cfg.seq_len} "
                   f"tokens, below recovery_floor {b.cfg.recovery_floor} x the short model's "
                   f"{short_ceiling(b):.3f}; 3x the Phase-B steps leave it at 0.05 in the third audit's probe); "
                   f"measured, not judged: {gap_note}; needs the `paper` scale")


def arm_short_niah(b: Bundle, variant: str) -> float:
    """An arm's mean NIAH score at seq_len (seed mean): what it kept of the short model's skill."""
    s = b.evals.scores
    f = s[(s["variant"] == variant) & (s["kind"] == "ruler") & s["task"].isin(RULER_NIAH_TASKS) &
          (s["length"] == b.cfg.seq_len)]
    return float(f["score"].mean()) if len(f) else float("nan")


# ================================================================================================== tables


def _seed_mean(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Mean over items per seed, then over seeds (with the seed std)."""
    per_seed = frame.groupby(["variant", "seed", *by])[value].mean().reset_index()
    g = per_seed.groupby(["variant", *by])[value]
    return g.mean().rename("mean").to_frame().join(g.std(ddof=1).rename("seed_std")).join(
        g.size().rename("seeds")).reset_index()


def _order(frame: pd.DataFrame, col: str = "variant") -> pd.DataFrame:
    rank = {a: i for i, a in enumerate(ARMS)}
    return frame.sort_values(col, key=lambda s: s.map(rank), kind="stable").reset_index(drop=True)


def table2(b: Bundle) -> pd.DataFrame:
    """The bases per head: the paper's 32 (LLaMA-2, 1M..5M, stride 30k) beside ours (scaled, searched)."""
    paper = [{"scheme": "peak_valley", "head": h, "base": x * 1e6} for h, x in enumerate(PAPER_TABLE2)]
    return beside_paper(b.bases.frame, paper)


def table3(b: Bundle) -> pd.DataFrame:
    """Perplexity against context length (Table 3 analogue): per method, exp(mean held-out loss) of the same final
    seq_len tokens of ``ppl_windows`` held-out windows, read with each context length L (nested windows: only the
    context changes), and the mean loss over the lengths above seq_len as the Table 3 number. The paper's Proof-pile / GovReport PPL beside (different data and scale: not comparable)."""
    p = b.evals.ppl
    m = _seed_mean(p, ["length"], "nll")
    wide = m.pivot(index="variant", columns="length", values="mean")
    wide.columns = [f"ppl@{L}" for L in wide.columns]
    wide = np.exp(wide)
    longer = _seed_mean(p[p["length"] > b.cfg.seq_len], [], "nll").set_index("variant")
    wide["ppl_mean_beyond_train"] = np.exp(longer["mean"])
    wide["nll_mean_beyond_train"] = longer["mean"]
    wide["seed_std_nll"] = longer["seed_std"]
    ours = _order(wide.reset_index())
    paper = [{"variant": k, "ppl_proofpile": v[0], "ppl_govreport": v[1]} for k, v in PAPER_TABLE3.items()]
    return beside_paper(ours, paper)


def _niah_by_length(b: Bundle, tasks) -> pd.DataFrame:
    s = b.evals.scores
    f = s[(s["kind"] == "ruler") & s["task"].isin(tasks)]
    m = _seed_mean(f, ["length"], "score")
    wide = m.pivot(index="variant", columns="length", values="mean")
    wide.columns = [f"@{L}" for L in wide.columns]
    avg = _seed_mean(f, [], "score").set_index("variant")
    wide["avg"], wide["seed_std"], wide["seeds"] = avg["mean"], avg["seed_std"], avg["seeds"]
    return _order(wide.reset_index())


def table4(b: Bundle) -> pd.DataFrame:
    """RULER's 8 NIAH tasks, mean score per length (Table 4 analogue); the paper's rows (4k..128k, / 100) beside."""
    paper = [{"variant": k, **{f"paper@{L}": x / 100 for L, x in zip(PAPER_LENGTHS, v[:-1])}, "avg": v[-1] / 100}
             for k, v in PAPER_TABLE4.items()]
    return beside_paper(_niah_by_length(b, RULER_NIAH_TASKS), paper)


def table5(b: Bundle) -> pd.DataFrame:
    """Short-context retention (Table 5 analogue): held-out loss and NIAH at the short length seq_len. The paper's
    short benchmark averages beside (MMLU etc.; a 1M-parameter model has no analogue: not comparable)."""
    cfg = b.cfg
    p = b.evals.ppl
    loss = _seed_mean(p[p["length"] == cfg.seq_len], [], "nll").set_index("variant")
    s = b.evals.scores
    niah = _seed_mean(s[(s["kind"] == "ruler") & s["task"].isin(RULER_NIAH_TASKS) & (s["length"] == cfg.seq_len)],
                      [], "score").set_index("variant")
    ours = pd.DataFrame({"nll@short": loss["mean"], "nll_seed_std": loss["seed_std"], "niah@short": niah["mean"]})
    ours = _order(ours.reset_index().rename(columns={"index": "variant"}))
    paper = [{"variant": k, "short_benchmark_avg": v} for k, v in PAPER_TABLE5_AVG.items()]
    return beside_paper(ours, paper)


def table6(b: Bundle) -> pd.DataFrame:
    """Base scheme ablation (Table 6 analogue): NIAH average over lengths for the peak-valley and the uniform
    ascending bases, and the control trained without extension; the paper's scheme rows (/ 100) beside."""
    t = _niah_by_length(b, RULER_NIAH_TASKS)
    ours = t[t["variant"].isin(["harpe", "harpe_uniform", "harpe_short"])][["variant", "avg", "seed_std", "seeds"]]
    paper = [{"variant": k, "avg": v / 100} for k, v in PAPER_TABLE6.items()]
    return beside_paper(ours.reset_index(drop=True), paper)


def table7(b: Bundle) -> pd.DataFrame:
    """"RULER without QA": the 11 synthetic RULER tasks, mean score per length. Not comparable to Table 7 (13
    tasks incl. QA, 4k..128k); the paper's HARPE row (/ 100) beside for orientation only."""
    paper = [{"variant": "harpe", **{f"paper@{L}": x / 100 for L, x in zip(PAPER_LENGTHS, PAPER_TABLE7_HARPE)},
              "avg": PAPER_TABLE7_HARPE[-1] / 100}]
    return beside_paper(_niah_by_length(b, RULER_TASKS), paper)


def table8(b: Bundle) -> pd.DataFrame:
    """Per-task scores averaged over lengths (Table 8 analogue), every method; the paper's ABF multi and HARPE rows
    (/ 100; HARPE's multiquery cell is missing in the conversion: empty)."""
    s = b.evals.scores
    f = s[s["kind"] == "ruler"]
    m = _seed_mean(f, ["task"], "score").pivot(index="variant", columns="task", values="mean")
    ours = _order(m.reset_index())
    paper = [{"variant": "abf_multi", **{t: v[0] / 100 for t, v in PAPER_TABLE8.items()}},
             {"variant": "harpe", **{t: (v[1] / 100 if v[1] is not None else np.nan) for t, v in PAPER_TABLE8.items()}}]
    return beside_paper(ours, paper)


def passkey_table(b: Bundle) -> pd.DataFrame:
    """Passkey retrieval (a number hidden in repeated filler text), mean score per length, every method (seed
    means). No claim rests on it; the paper reports no passkey numbers."""
    s = b.evals.scores
    m = _seed_mean(s[s["kind"] == "passkey"], ["length"], "score")
    wide = m.pivot(index="variant", columns="length", values="mean")
    wide.columns = [f"@{L}" for L in wide.columns]
    return _order(wide.reset_index())


def heat_table(b: Bundle) -> pd.DataFrame:
    s = b.evals.scores
    return _seed_mean(s[s["kind"] == "heat"], ["length", "depth"], "score")


def comparisons_table(b: Bundle) -> pd.DataFrame:
    return b.comparisons.frame


# ================================================================================================= figures


def fig2(b: Bundle):
    """Single-needle retrieval heat map (depth x length) per method (Figure 2 analogue; seed means)."""
    import matplotlib.pyplot as plt

    h = heat_table(b)
    vs = [v for v in ARMS if v in set(h["variant"])]
    cols = min(3, len(vs))
    rows = -(-len(vs) // cols)
    # constrained layout keeps each panel's title clear of the x labels above it and leaves room for the colour bar
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False, layout="constrained")
    for ax, v in zip(axes.flat, vs):
        g = h[h["variant"] == v].pivot(index="depth", columns="length", values="mean")
        im = ax.imshow(g.to_numpy(), vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        ax.set_xticks(range(len(g.columns)), [str(c) for c in g.columns], fontsize=7)
        ax.set_yticks(range(len(g.index)), [f"{x:.0%}" for x in g.index], fontsize=7)
        ax.set_title(v, fontsize=9)
        ax.set_xlabel("context length (tokens)", fontsize=7)
        ax.set_ylabel("needle depth", fontsize=7)
    for ax in list(axes.flat)[len(vs):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.6, label="score")
    ceiling = short_ceiling(b)
    if not (np.isfinite(ceiling) and ceiling >= b.cfg.retrieval_floor):  # say on the figure why it is all one colour
        fig.suptitle(f"INVALID: the short model scores {ceiling:.3f} on NIAH at its own length {b.cfg.seq_len} "
                     f"(floor {b.cfg.retrieval_floor}): there is no retrieval skill to extend", fontsize=10,
                     color="darkred")
    return fig


def fig_ppl_length(b: Bundle):
    """Held-out loss of the same final seq_len tokens against the context they are read with, per method (the
    Table 3 analogue as a curve; seed means, thin lines for single seeds); the dashed line marks the training length
    of Phase A."""
    fig, (ax,) = plotting.axes(1, w=6.0, h=3.8)
    p = b.evals.ppl
    per = p.groupby(["variant", "seed", "length"])["nll"].mean().reset_index()
    for v in ARMS:
        g = per[per["variant"] == v]
        if g.empty:
            continue
        m = g.groupby("length")["nll"].mean()
        line, = ax.plot(m.index, m.values, marker="o", ms=3, label=v)
        for _, gs in g.groupby("seed"):
            if g["seed"].nunique() > 1:
                ax.plot(gs["length"], gs["nll"], color=line.get_color(), alpha=0.3, lw=0.7)
    ax.axvline(b.cfg.seq_len, ls="--", color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"loss of the last {b.cfg.seq_len} tokens (nats)")
    ax.legend(fontsize=7, ncol=2)
    return plotting.finish(fig)


def fig_waveforms(b: Bundle):
    """The attention waveforms f_b(m) of HARPE's searched bases over the target length, and the heads' mean
    (the peak-valley search wants every valley covered by another head's peak)."""
    fig, (ax,) = plotting.axes(1, w=6.5, h=3.4)
    L = b.cfg.search_length or b.cfg.long_len
    m = np.arange(L + 1)
    fs = [waveform(x, b.cfg.head_dim, L) for x in b.bases.harpe]
    for x, f in zip(b.bases.harpe, fs):
        ax.plot(m[1:], f[1:], lw=0.6, alpha=0.7, label=f"b = {x:,.0f}")
    ax.plot(m[1:], np.mean(fs, 0)[1:], color="black", lw=1.2, label="mean over heads")
    ax.set_xscale("log")
    ax.set_xlabel("relative distance m")
    ax.set_ylabel("f_b(m)")
    ax.legend(fontsize=6, ncol=2)
    return plotting.finish(fig)


# ================================================================================================== claims


def _spread(b: Bundle, metric: str) -> list[float]:
    return b.comparisons.per_seed.get((metric, "harpe - abf_multi"), [])


def _single(b: Bundle, cid: str, text: str, pair: str, metric: str, what_metric: str, evidence: str,
            paper_value) -> C.Claim:
    """A comparison with a one-seed arm: the paired bootstrap over evaluation items and the one-seed prediction
    interval from the HARPE / ABF multi seed spread must agree."""
    key = (metric, pair)
    gaps = b.comparisons.per_seed.get(key, [])
    reps = b.comparisons.boot.get(key, np.array([]))
    if not gaps or len(reps) == 0:
        return C.Claim(cid, text, what_metric, paper_value, None, "", "inconclusive",
                       "no paired items (a length or task missing at this scale)")
    c = C.single_seed_gap_claim(cid, text, gaps[0], reps, _spread(b, metric), metric=what_metric,
                                what="95% paired bootstrap over evaluation items", evidence=evidence,
                                paper_value=paper_value)
    if c.verdict == "inconclusive":
        se = float(np.std(reps, ddof=1))
        k = (2.8 * se / abs(gaps[0])) ** 2 if gaps[0] else float("inf")
        c = dataclasses.replace(c, ours_ci=c.ours_ci + f"; and the item bootstrap (se {se:.4f}: it resolves gaps above "
                                f"~{2.8 * se:.3f} at 80% power) would need about {k:.1f}x the evaluation samples")
    return _with_windows(b, c, pair)


def _with_windows(b: Bundle, c: C.Claim, pair: str) -> C.Claim:
    """Which way the evidence points under each length window (the seed-mean gap; only the pre-registered window
    decides): longest length, the lengths above seq_len, every length."""
    f = b.comparisons.frame
    f = f[f["comparison"] == pair].set_index("metric")["gap_seed_mean"]
    names = (("niah_long", "longest length"), ("niah_above", "above seq_len"), ("niah_all", "every length"))
    got = [f"{w} {f[m]:+.3f}" for m, w in names if m in f.index and np.isfinite(f[m])]
    return dataclasses.replace(c, evidence=c.evidence + ("; NIAH gap by window (seed mean, not judged): " +
                                                         ", ".join(got) if got else ""))


def ranks_first(b: Bundle, text: str, metric: str, pairs: list[str], best: str, lost: dict | None = None) -> C.Claim:
    """C10, "first among the methods", as HARPE beating every other method (an intersection-union test: no
    comparator is picked from the data; set after the second referee audit). Each leg is judged by the one-seed
    rule; a leg whose comparator lost the short model's retrieval (``lost``) is untestable (set after the third
    audit). Reproduced only when every leg is testable and reproduced, not_reproduced when any testable leg is,
    else inconclusive; the value shown is the gap to the best other method."""
    lost = lost or {}
    subs = {p: _single(b, "C10", text, p, "ruler", metric, "table7, extra_comparisons", None) for p in pairs}
    verdicts = {p: ("untestable" if p.split(" - ")[1] in lost else c.verdict) for p, c in subs.items()}
    verdict = ("reproduced" if all(v == "reproduced" for v in verdicts.values()) else
               "not_reproduced" if any(v == "not_reproduced" for v in verdicts.values()) else "inconclusive")
    top = subs[f"harpe - {best}"]
    why = "pairwise (HARPE − each, seed-0 gap, verdict): " + "; ".join(
        f"{p.split(' - ')[1]} {c.ours_value:+.3f} {verdicts[p]}" +
        (f" (lost the skill: NIAH {lost[p.split(' - ')[1]]:.3f} at seq_len)" if verdicts[p] == "untestable" else "")
        for p, c in subs.items())
    return dataclasses.replace(top, verdict=verdict, evidence=f"{top.evidence}; {why}")


def claims(cfg, b: Bundle) -> list[C.Claim]:
    out = []
    cmp_ = b.comparisons
    L = max(cfg.eval_lengths)
    trained = set(arms(cfg))
    # C1: the deciding pair at the longest length, 3 seeds, same checkpoint, same rows
    c1 = C.seed_gap_claim(
        "C1", "Single-stage HARPE beats multi-stage ABF on RULER's 8 NIAH tasks at the longest length (128k: 67.19 "
        "vs 62.13)", cmp_.per_seed.get(("niah_long", "harpe - abf_multi"), []),
        metric=f"NIAH score (mean of the 8 tasks, fraction) at {L} tokens, HARPE − ABF multi-stage, paired by seed "
        "(same short model, same tokens); paper value: the 128k gap / 100", evidence="table4, table8, "
        "extra_comparisons", paper_value=_pts(67.19, 62.13), need=True)
    out.append(C.judged(_with_windows(b, c1, "harpe - abf_multi"), validity(b, ["harpe", "abf_multi"], True)))
    # C2-C6: HARPE (or multi) against one-seed arms, NIAH averaged over lengths
    for cid, pair, text, pv in (
            ("C2", "harpe - abf_single", "HARPE beats single-stage ABF (one base b_max) on the NIAH average over "
                                         "lengths (86.82 vs 79.49)", _pts(86.82, 79.49)),
            ("C3", "abf_multi - abf_single", "Multi-stage ABF beats jumping to the final length and base in one stage "
                                             "(81.36 vs 79.49)", _pts(81.36, 79.49)),
            ("C4", "harpe - pi", "HARPE beats position interpolation (86.82 vs 20.11)", _pts(86.82, 20.11)),
            ("C5", "harpe - yarn", "HARPE beats YaRN (86.82 vs 46.93)", _pts(86.82, 46.93)),
            ("C6", "harpe - self_extend", "HARPE beats training-free Self-Extend (86.82 vs 42.52)",
             _pts(86.82, 42.52))):
        a, bb = pair.split(" - ")
        metric = (f"NIAH score (8 tasks, mean over lengths {', '.join(map(str, cfg.eval_lengths))}), {pair}, seed "
                  f"{cfg.seed}; paper value: the Table 4 average gap / 100")
        if a not in trained or bb not in trained:
            out.append(C.not_run(cid, text, metric, pv, "small"))
            continue
        lost = lost_arms(b, [a, bb])
        gaps = cmp_.per_seed.get(("niah_all", pair), [])
        if bb in lost and a not in lost:
            out.append(untestable(cid, text, metric, pv, bb, lost[bb], b, f"{pair} {gaps[0]:+.3f} (seed {cfg.seed})"
                                  if gaps else "no gap"))
            continue
        if bb in TRAINING_FREE:  # a deterministic comparator: HARPE's seeds against it, a t-interval
            metric = metric.replace(f"seed {cfg.seed}", f"HARPE's {len(gaps)} seeds against the one {bb} model")
            c = _with_windows(b, C.seed_gap_claim(cid, text, gaps, metric=metric, evidence="table4, table8, "
                                                  "extra_comparisons", paper_value=pv, need=True), pair)
        else:
            c = _single(b, cid, text, pair, "niah_all", metric, "table4, table8, extra_comparisons", pv)
        out.append(C.judged(c, validity(b, [a, bb], True)))
    # C7: perplexity beyond the training length, HARPE vs ABF multi (3 seeds)
    c7 = C.seed_gap_claim(
        "C7", "HARPE's long-context perplexity is at least as low as multi-stage ABF's (Proof-pile 3.02 vs 3.03)",
        cmp_.per_seed.get(("ppl_long", "harpe - abf_multi"), []),
        metric=f"held-out loss (nats) of the last {cfg.seq_len} tokens of {cfg.ppl_windows} windows read with "
        f"{', '.join(str(x) for x in cfg.eval_lengths if x > cfg.seq_len)} tokens of context (mean), ABF multi − "
        "HARPE (positive = HARPE lower), paired by seed; paper value: ln 3.03 − ln 3.02",
        evidence="table3, extra_ppl_length", paper_value=round(math.log(3.03) - math.log(3.02), 4), need=True,
        noninferior=cfg.ppl_margin)
    out.append(C.judged(c7, validity(b, ["harpe", "abf_multi"], False)))
    # C8: short-context retention (Table 5), HARPE vs ABF multi (3 seeds); the paper's benchmarks have no analogue
    c8 = C.seed_gap_claim(
        "C8", "HARPE keeps short-context ability at least as well as multi-stage ABF (Table 5 average 62.75 vs 62.69)",
        cmp_.per_seed.get(("short_ppl", "harpe - abf_multi"), []),
        metric=f"held-out loss (nats) at the short length {cfg.seq_len}, ABF multi − HARPE (positive = HARPE "
        "lower), paired by seed; the paper's short benchmarks have no analogue (no paper value)",
        evidence="table5", need=True, noninferior=cfg.ppl_margin)
    out.append(C.judged(c8, validity(b, ["harpe", "abf_multi"], False)))
    # C9: traditional single-needle NIAH all green (Figure 2)
    hv = [metric_vectors(cfg, b.evals, "harpe", s)["heat"] for s in range(cfg.seed, cfg.seed + cfg.n_seeds)]
    means = [float(v.mean()) for v in hv if len(v)]
    ci = C.t_interval(means) if len(means) > 1 else None
    ci = None if ci is None else (max(0.0, ci[0]), min(1.0, ci[1]))  # a score lies in [0, 1]
    val = float(np.mean(means)) if means else None
    c9 = C.Claim("C9", "HARPE retrieves a single needle at every depth and length (Figure 2: 100 %)",
                 "single-needle heat-map score of HARPE, mean over cells, 95% t over seeds; rule: >= 0.95 "
                 "(reproduced when the interval is above, not_reproduced when below)", 1.0, val,
                 C.fmt_ci(ci, f"95% t over {len(means)} seeds; per seed " + " / ".join(f"{x:.3f}" for x in means)),
                 C.verdict_threshold(val, ci, at_least=0.95), "fig2")
    out.append(C.judged(c9, validity(b, ["harpe"], True)))
    # C10: RULER (without QA) average: HARPE first among the methods
    others = [a for a in ("abf_multi", "abf_single", "pi", "yarn", "self_extend", "harpe_uniform") if a in trained]
    t7 = _niah_by_length(b, RULER_TASKS).set_index("variant")["avg"]
    best = max(others, key=lambda a: t7.get(a, -1)) if others else None
    text = "On RULER HARPE ranks first among the compared models (70.40, 2.55 above the second)"
    metric = ("RULER without QA (11 synthetic tasks, mean over lengths), HARPE − each other method (shown: the best "
              f"other, {best}), seed {cfg.seed}; reproduced only if HARPE beats every one; not comparable to Table 7 "
              "(no paper value)")
    pairs = [f"harpe - {a}" for a in others if ("ruler", f"harpe - {a}") in cmp_.per_seed]
    lost = lost_arms(b, others)
    if best is None or not pairs:
        c10 = C.Claim("C10", text, metric, None, None, "", "inconclusive", "no other method evaluated")
    else:
        c10 = ranks_first(b, text, metric, pairs, best, lost)
    out.append(C.judged(c10, validity(b, ["harpe", *[a for a in others if a not in lost]], True)))
    # C11: peak-valley beats uniform ascending bases (Table 6)
    text = "Peak-valley bases beat uniform ascending bases (Table 6: 86.82 vs 84.30)"
    metric = f"NIAH score (8 tasks, mean over lengths), HARPE − HARPE uniform, seed {cfg.seed}; paper value / 100"
    if "harpe_uniform" in trained:
        out.append(C.judged(_single(b, "C11", text, "harpe - harpe_uniform", "niah_all", metric, "table6",
                                    _pts(86.82, 84.30)), validity(b, ["harpe", "harpe_uniform"], True)))
    else:
        out.append(C.not_run("C11", text, metric, _pts(86.82, 84.30), "small"))
    # C12-C13: paper-scale ablations
    out.append(C.not_run("C12", "The peak-valley stride matters (Table 6: 10k..50k give 84.51..86.82; 30k best) and "
                         "descending order is 1 point below ascending", "NIAH average per stride / order",
                         _pts(86.82, 83.68)))
    out.append(C.not_run("C13", "A hand-tuned multi-stage schedule beats a naive one by 13.5 NIAH points (Table 1: "
                         "81.36 vs 67.83)", "NIAH average, tuned − naive three-stage ABF", _pts(81.36, 67.83)))
    return out


def _to_settle(c: C.Claim) -> str:
    if c.verdict == "not_run":
        return "the `paper` scale (the stride sweep, descending bases and the naive pipeline are not built at small)"
    if c.verdict == "invalid":
        return "a configuration whose runs pass the validity checks (the failed check is in the evidence)"
    return "more paired seeds or evaluation samples (the count is in its interval text where known)"


def closing_note(cfg, b: Bundle) -> str:
    """The closing note, generated: each claim with its verdict and numbers, time and memory, what stayed open."""
    cl = claims(cfg, b)
    lines = C.note_lines(cl)
    ceiling = short_ceiling(b)
    lines += ["", f"The short model's NIAH score at its own length {cfg.seq_len}: {ceiling:.3f} (the ceiling the "
              f"extension carries; retrieval claims are judged only when it reaches {cfg.retrieval_floor})."]
    lines += note_footer(cfg.scale, dict(b.seconds), cl, _to_settle)
    return "\n".join(lines)
