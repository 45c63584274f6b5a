"""Claims and the rules that turn numbers into verdicts (shared by all papers).

A verdict is computed from numbers, never typed in:
- ``reproduced``: the paper's direction holds and the effect is larger than the seed-to-seed (or bootstrap)
  spread, i.e. the confidence interval of the effect excludes zero on the paper's side;
- ``not_reproduced``: the interval excludes zero on the other side (a clear effect the other way), or a
  threshold claim fails outside its interval;
- ``inconclusive``: the interval straddles zero, or there are too few seeds to have an interval;
- ``not_run``: the claim needs a larger scale than the one that ran;
- ``invalid``: the experiment's own validity check failed (a fit that did not converge or sits at a bound, a
  prediction outside the range its quantity can take, a model that did not learn): no verdict about the paper can
  rest on it, and the evidence says what failed (:func:`invalid`, :class:`Validity`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

VERDICTS = ("reproduced", "not_reproduced", "inconclusive", "not_run", "invalid")
COLUMNS = ("claim_id", "claim", "metric", "paper_value", "ours_value", "ours_ci", "verdict", "evidence")


@dataclass(frozen=True)
class Claim:
    claim_id: str
    claim: str  # the paper's claim, in our words
    metric: str  # what was measured, with its unit
    paper_value: float | str | None  # the paper's number; None where the spec gives none (never invented)
    ours_value: float | None
    ours_ci: str  # "[lo, hi] (95% bootstrap over ...)" or "seeds: a / b / c"
    verdict: str
    evidence: str  # where to look (table/figure ids) and, when not reproduced, why

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict: must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")

    def row(self) -> dict:
        d = asdict(self)
        d["paper_value"] = "" if self.paper_value is None else self.paper_value
        d["ours_value"] = "" if self.ours_value is None else round(float(self.ours_value), 6)
        return d


def bootstrap_ci(samples, stat=np.mean, n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap interval of ``stat`` over ``samples`` (1-D)."""
    x = np.asarray(samples, dtype=float)
    rng = np.random.default_rng(seed)
    boots = np.array([stat(x[rng.integers(0, len(x), len(x))]) for _ in range(n_boot)])
    a = (1 - level) / 2
    return float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def percentile_interval(samples, level: float = 0.95):
    """The central ``level`` interval of already-drawn samples (bootstrap replicates), ignoring NaNs; None with
    fewer than two finite samples."""
    x = np.asarray(samples, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return None
    a = (1 - level) / 2
    return float(np.quantile(x, a)), float(np.quantile(x, 1 - a))


def t_interval(samples, level: float = 0.95):
    """Student-t interval of the mean (for a handful of seeds). None with fewer than 2 samples."""
    from scipy import stats

    x = np.asarray(samples, dtype=float)
    if len(x) < 2:
        return None
    m, se = x.mean(), x.std(ddof=1) / np.sqrt(len(x))
    if se == 0:
        return float(m), float(m)
    h = se * stats.t.ppf(0.5 + level / 2, len(x) - 1)
    return float(m - h), float(m + h)


def verdict_from_interval(ci: tuple[float, float] | None, *, paper_direction: str) -> str:
    """Verdict for an effect whose paper direction is ``"positive"`` (effect > 0) or ``"negative"`` (< 0)."""
    if ci is None:
        return "inconclusive"
    lo, hi = ci
    if paper_direction == "positive":
        return "reproduced" if lo > 0 else "not_reproduced" if hi < 0 else "inconclusive"
    if paper_direction == "negative":
        return "reproduced" if hi < 0 else "not_reproduced" if lo > 0 else "inconclusive"
    raise ValueError(f"paper_direction: must be 'positive' or 'negative', got {paper_direction!r}")


def verdict_threshold(value: float | None, ci: tuple[float, float] | None, *, at_least: float | None = None,
                      at_most: float | None = None) -> str:
    """Verdict for a claim "metric >= at_least" (or "<= at_most"): reproduced when the whole interval (or the
    value, when there is no interval) is on the right side, not_reproduced when it is wholly on the wrong side."""
    if value is None:
        return "inconclusive"
    lo, hi = ci if ci is not None else (value, value)
    if at_least is not None:
        return "reproduced" if lo >= at_least else "not_reproduced" if hi < at_least else "inconclusive"
    if at_most is not None:
        return "reproduced" if hi <= at_most else "not_reproduced" if lo > at_most else "inconclusive"
    raise ValueError("verdict_threshold needs at_least or at_most")


def fmt_ci(ci, what: str, digits: int = 4) -> str:
    if ci is None:
        return f"n/a ({what})"
    return f"[{ci[0]:.{digits}g}, {ci[1]:.{digits}g}] ({what})"


def not_run(claim_id: str, claim: str, metric: str, paper_value=None, needs: str = "paper") -> Claim:
    return Claim(claim_id, claim, metric, paper_value, None, "", "not_run", f"needs the `{needs}` scale")


def verdict_equivalence(ci: tuple[float, float] | None, *, margin: float) -> str:
    """Verdict for a "no effect" claim: reproduced when the effect's interval lies inside ``[-margin, margin]``,
    not_reproduced when it lies wholly outside, inconclusive otherwise (equivalence test, margin stated by caller)."""
    if ci is None:
        return "inconclusive"
    lo, hi = ci
    if -margin <= lo and hi <= margin:
        return "reproduced"
    if lo > margin or hi < -margin:
        return "not_reproduced"
    return "inconclusive"


def verdict_noninferior(ci: tuple[float, float] | None, *, margin: float) -> str:
    """Verdict for an "at least as good" claim on an effect oriented so that positive favours the claim:
    reproduced when the interval's lower end is above ``-margin`` (worse by less than the margin, if at all),
    not_reproduced when its upper end is below ``-margin`` (worse by more), inconclusive otherwise."""
    if margin < 0:
        raise ValueError(f"margin: must be >= 0, got {margin}")
    if ci is None:
        return "inconclusive"
    lo, hi = ci
    return "reproduced" if lo > -margin else "not_reproduced" if hi < -margin else "inconclusive"


# ------------------------------------------------------------------------------------ comparisons, written once


def log_interval(ci):
    """An interval of a positive ratio on the log scale (so "ratio > 1" is "log > 0"); None stays None."""
    import math

    return None if ci is None else (math.log(max(ci[0], 1e-300)), math.log(max(ci[1], 1e-300)))


def paired_gap(frame, a: str, b: str, *, key: str = "encoding", value: str = "bpb", pair: str = "seed"):
    """``value(a) − value(b)`` per ``pair`` (seed) from a tidy frame (its ``final`` rows when it has that column):
    positive when b is lower. Pairs missing either arm are dropped."""
    f = frame[frame["final"]] if "final" in frame else frame
    p = f.pivot(index=pair, columns=key, values=value)
    return (p[a] - p[b]).dropna()


def seed_gap_claim(claim_id: str, claim: str, gaps, *, metric: str, direction: str = "positive",
                   evidence: str = "", detail: str = "", paper_value=None, need: bool = False,
                   noninferior: float | None = None) -> Claim:
    """A comparison paired by seed: ``gaps`` holds one difference per seed; the verdict follows the 95 % Student-t
    interval of their mean (``reproduced`` only when it excludes 0 on the paper's side; one seed: inconclusive).
    ``need``: an inconclusive claim also says how many paired seeds would resolve its gap (:func:`seeds_needed`).
    ``noninferior``: an "at least as good" claim (positive gaps favour it), judged by
    :func:`verdict_noninferior` with this margin instead."""
    g = np.asarray(gaps, dtype=float)
    ci = t_interval(g)
    per_seed = " / ".join(f"{x:+.4f}" for x in g)
    if noninferior is not None:
        if direction != "positive":
            raise ValueError("noninferior: orient the gaps so that positive favours the claim (direction 'positive')")
        side = f"> -{noninferior:g} (non-inferiority margin, pre-registered)"
        verdict = verdict_noninferior(ci, margin=noninferior)
    else:
        side = "> 0" if direction == "positive" else "< 0"
        verdict = verdict_from_interval(ci, paper_direction=direction)
    text = fmt_ci(ci, f"95% t over {len(g)} seeds; per-seed {per_seed}" + (f"; {detail}" if detail else ""))
    if need and verdict == "inconclusive" and len(g) > 1:
        n = (seeds_needed_text(float(g.mean()), float(g.std(ddof=1))) if noninferior is None else
             seeds_needed_text(float(g.mean()) + noninferior, float(g.std(ddof=1)), "a distance to -margin"))
        text += f"; {n}" if n else ""
    return Claim(claim_id, claim, f"{metric}; rule: 95% t-interval over paired seeds {side}", paper_value,
                 float(g.mean()) if len(g) else None, text, verdict, evidence)


def bootstrap_gap_claim(claim_id: str, claim: str, point: float, replicates, *, metric: str, what: str,
                        direction: str = "positive", evidence: str = "", detail: str = "", paper_value=None) -> Claim:
    """A comparison judged on bootstrap replicates of the difference (drawn by the experiment, not here): the
    verdict follows their central 95 % interval. ``what`` names the resampling ("paired bootstrap over ...")."""
    ci = percentile_interval(replicates)
    return Claim(claim_id, claim, metric, paper_value, float(point),
                 fmt_ci(ci, what) + (f"; {detail}" if detail else ""),
                 verdict_from_interval(ci, paper_direction=direction), evidence)


def seeds_needed(gap: float, std: float, power: float = 0.8, level: float = 0.95) -> int | None:
    """Paired seeds a two-sided t-test needs to detect a per-seed gap ``gap`` at seed-to-seed std ``std`` with
    ``power`` (smallest n with sqrt(n)·|gap|/std >= t_{level, n-1} + t_{power, n-1}); None where it is undefined."""
    from scipy import stats

    if not (np.isfinite(gap) and np.isfinite(std) and gap != 0 and std > 0):
        return None
    for n in range(2, 100_001):
        if np.sqrt(n) * abs(gap) / std >= stats.t.ppf(0.5 + level / 2, n - 1) + stats.t.ppf(power, n - 1):
            return n
    return None


def seeds_needed_text(gap: float, std: float, what: str = "a gap") -> str:
    n = seeds_needed(gap, std)
    return "" if n is None else (f"at seed std {std:.4f} {what} of {abs(gap):.4f} needs about {n} paired seeds "
                                 "(80% power)")


def single_seed_gap_claim(claim_id: str, claim: str, gap: float, replicates, seed_gaps, *, metric: str, what: str,
                          direction: str = "positive", evidence: str = "", detail: str = "",
                          paper_value=None) -> Claim:
    """A comparison with a baseline trained on one seed, paired with the method's run of that seed. Two intervals
    must agree: the paired bootstrap over held-out data (``replicates``, drawn by the experiment: evaluation noise)
    and the 95 % prediction interval of one seed's gap, ``gap ± t_{.975, n-1} · s · sqrt(1 + 1/n)``, with ``s`` the
    std of the ``n`` per-seed gaps ``seed_gaps`` of a comparison run with several seeds (seed noise, which one seed
    cannot show). ``reproduced`` when both exclude 0 on the paper's side, ``not_reproduced`` when both exclude it on
    the other, else ``inconclusive``; fewer than 2 seed gaps: inconclusive."""
    from scipy import stats

    boot = percentile_interval(replicates)
    sg = np.asarray(seed_gaps, dtype=float)
    pred = None
    if len(sg) >= 2:
        h = stats.t.ppf(0.975, len(sg) - 1) * sg.std(ddof=1) * np.sqrt(1 + 1 / len(sg))
        pred = (float(gap - h), float(gap + h))
    v1, v2 = (verdict_from_interval(ci, paper_direction=direction) for ci in (boot, pred))
    verdict = v1 if v1 == v2 else "inconclusive"
    side = "> 0" if direction == "positive" else "< 0"
    text = fmt_ci(boot, what) + "; " + fmt_ci(pred, f"95% prediction interval of one seed's gap, seed std "
                                                    f"{sg.std(ddof=1) if len(sg) > 1 else float('nan'):.4f} over "
                                                    f"{len(sg)} seeds")
    if verdict == "inconclusive" and len(sg) >= 2:
        need = seeds_needed_text(gap, float(sg.std(ddof=1)))
        text += f"; {need}" if need else ""
    elif len(sg) >= 2:  # a decided verdict: the seed spread at which the prediction interval would reach 0
        flip = abs(gap) / (stats.t.ppf(0.975, len(sg) - 1) * np.sqrt(1 + 1 / len(sg)))
        text += f"; inconclusive at a seed std above {flip:.4f}"
    return Claim(claim_id, claim, f"{metric}; rule: the paired bootstrap and the one-seed prediction interval both "
                 f"{side}", paper_value, float(gap), text + (f"; {detail}" if detail else ""), verdict, evidence)


def converging(claim: Claim, drift: float | None, spread: float, what: str, horizon: float | None = None) -> Claim:
    """A decided comparison whose gap is still closing when training stops cannot say which arm ends ahead: when the
    gap moved towards 0 by more than ``spread`` or than the gap itself over the last stretch of training (``drift``:
    late gap − earlier gap, same sign convention as the claim's value), a ``reproduced`` or ``not_reproduced`` verdict
    becomes ``inconclusive`` ("still converging"); a gap that holds or widens keeps its verdict. ``horizon``, if
    given, is how many such stretches "as long again as the run" is: a gap that the drift, continued linearly over
    that horizon, would not bring to 0 (|gap| > |drift| · horizon) keeps its verdict too, said so. ``what`` names the
    measurement of the drift; an unknown ``spread`` (NaN) leaves the gap itself as the bar. ``drift`` None (no
    curve): the claim unchanged, said so."""
    if drift is None or claim.ours_value is None:
        return replace(claim, ours_ci=f"{claim.ours_ci}; gap trend: not measured")
    closing = np.sign(drift) == -np.sign(claim.ours_value) and abs(drift) > np.nanmin([spread, abs(claim.ours_value)])
    text = f"{claim.ours_ci}; gap trend ({what}): {drift:+.4f} against a seed spread of {spread:.4f}"
    if closing and horizon is not None and abs(claim.ours_value) > abs(drift) * horizon:
        return replace(claim, ours_ci=text + f": closing, but at this rate it would not reach 0 within {horizon:g} "
                       f"such stretches (the run's length again: {abs(drift) * horizon:.4f} < |gap|)")
    if closing and claim.verdict in ("reproduced", "not_reproduced"):
        return replace(claim, ours_ci=text + f": still converging, so the {claim.verdict} order at the end of "
                       "training may not hold", verdict="inconclusive",
                       evidence="still converging; " + claim.evidence)
    return replace(claim, ours_ci=text + ("" if not closing else ": closing"))


def converging_paired(claim: Claim, drift: float | None, seed_gaps, comparison: str, frac: float) -> Claim:
    """:func:`converging` for a comparison of two runs trained on the same batches, its ``drift`` measured by
    ``trainer.gap_drift``: the change of the paired training-loss gap ``comparison`` (a − b) between the last ``frac``
    of the steps and the ``frac`` before. The spread is the std of ``seed_gaps``, the per-seed gaps of the pair that
    was trained on every seed (a single-seed baseline has none of its own, and the deciding pair's seed noise is the
    scale a drift must exceed to matter); NaN under two seeds, which leaves the gap itself as the bar. The horizon is
    the run's length again (1 / ``frac`` stretches): a gap too large for the drift to close in that long keeps its
    verdict."""
    g = list(seed_gaps)
    spread = float(np.std(g, ddof=1)) if len(g) > 1 else float("nan")
    return converging(claim, drift, spread, f"paired training-loss gap {comparison}, last {frac:.0%} of the steps − "
                      f"the {frac:.0%} before, same batches", horizon=1.0 / frac)


def horizon_rule(c: Claim, drift: float | None, ci, spread: float, horizon: float, rejudge, what: str,
                 ci_what: str = "95% paired bootstrap") -> Claim:
    """The convergence horizon against the decision bar: a decided claim becomes ``inconclusive`` ("still
    converging") when its held-out gap still moves -- the drift's interval ``ci`` (the claim's sign; ``ci_what``
    names it: a paired bootstrap over held-out rows, or a t-interval over seeds) excludes 0, or the drift exceeds the
    deciding pair's seed ``spread`` (NaN: no such bar) -- AND the claim's own rule, applied to the gap continued
    linearly for ``horizon`` more such stretches (``rejudge(horizon · drift)``: the verdict with the gap and its
    intervals shifted by that much), would give another verdict: the gap would fall inside the bar it had to clear,
    not merely reach 0. A gap whose continuation keeps the verdict, or a drift indistinguishable from 0, keeps it.
    ``drift`` None (not measured): the claim unchanged, said so."""
    if drift is None or c.ours_value is None:
        return replace(c, ours_ci=f"{c.ours_ci}; gap trend: not measured")
    moving = bool((ci is not None and (ci[0] > 0 or ci[1] < 0)) or (np.isfinite(spread) and abs(drift) > spread))
    shift = horizon * drift
    v_ext = rejudge(shift)
    text = (f"{c.ours_ci}; gap trend ({what}): {drift:+.4f}"
            + (f", {ci_what} [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci is not None else "")
            + (f", seed spread {spread:.4f}" if np.isfinite(spread) else "")
            + f"; continued for one more run length ({horizon:g} such stretches) the gap "
            f"would be {c.ours_value + shift:+.4f}, where its rule gives {v_ext}")
    decided = c.verdict in ("reproduced", "not_reproduced")
    if decided and moving and v_ext != c.verdict:
        return replace(c, ours_ci=text + f": still converging (the gap still moves and would no longer pass its rule "
                       f"within the run's length again), so the {c.verdict} verdict at the end may not hold",
                       verdict="inconclusive", evidence="still converging; " + c.evidence)
    below = " and it is below the seed spread" if np.isfinite(spread) else ""
    why = ("" if not decided else ": the verdict would hold there" if moving
           else f": the drift is indistinguishable from 0 (its interval holds 0{below})")
    return replace(c, ours_ci=text + why)


def heldout_converging(c: Claim, rejudge, drift_rows, seed_gaps, frac: float, label: str, sign: float = 1.0,
                       n_boot: int = 1000) -> Claim:
    """:func:`horizon_rule` for a comparison a − b of runs scored on the same held-out windows at the end and after
    ``1 − frac`` of the steps. ``drift_rows``: per common seed, the per-window drift (``trainer.heldout_drift``; None:
    not measured); ``sign`` turns a − b into the claim's sign. With two or more seeds the drift's interval is the 95%
    t-interval of the per-seed drifts (seed noise included; no further bar); with one seed it is a 95% bootstrap over
    the windows, and the drift must also stay below the seed spread of ``seed_gaps`` (the deciding pair's per-seed
    gaps: the seed noise one seed cannot show). ``rejudge(shift)``: the claim's verdict with its gap (and intervals)
    shifted by ``shift``. The horizon is one more run length, 1 / ``frac`` such stretches."""
    if drift_rows is None or not len(drift_rows):
        return horizon_rule(c, None, None, float("nan"), 1.0 / frac, rejudge, "")
    per_seed = [sign * float(np.mean(r)) for r in drift_rows]
    drift = float(np.mean(per_seed))
    if len(per_seed) >= 2:
        ci, ci_what, spread = t_interval(per_seed), f"95% t over {len(per_seed)} seeds", float("nan")
    else:
        rows = sign * np.asarray(drift_rows[0], dtype=float)
        idx = np.random.default_rng(0).integers(0, len(rows), (n_boot, len(rows)))
        ci, ci_what = percentile_interval(rows[idx].mean(1)), "95% paired bootstrap over held-out windows"
        g = np.asarray(list(seed_gaps), dtype=float)
        spread = float(g.std(ddof=1)) if len(g) > 1 else float("nan")
    what = f"held-out gap {label}, at the end − after {1 - frac:.0%} of the steps, same windows"
    return horizon_rule(c, drift, ci, spread, 1.0 / frac, rejudge, what, ci_what)


CONVERGING_SETTLE = ("longer training: the held-out gap still moves at the end and, continued, would no longer pass "
                     "its rule (its interval text); more seeds would not settle it")


def note_lines(claims: list[Claim]) -> list[str]:
    """The head of a notebook's generated closing note: its title, then one line per claim with its verdict, our
    value and its interval (or the evidence where there is none)."""
    lines = ["**Closing note (generated from the results).**", ""]
    for c in claims:
        val = "" if c.ours_value is None else f" = {c.ours_value:+.4g}"
        lines.append(f"- **{c.claim_id}** ({c.verdict}): {c.claim}. Ours{val}; {c.ours_ci or c.evidence}.")
    return lines


def second_metric(claim: Claim, verdict: str, text: str) -> Claim:
    """``claim`` judged on a second metric that expresses the same property (DESIGN §7, metrics that agree): where
    the two point opposite ways (one ``reproduced``, the other ``not_reproduced``) the evidence says ``mixed`` and
    the verdict is ``inconclusive``; otherwise the first metric's verdict stands, the second's result beside it."""
    opposite = {claim.verdict, verdict} == {"reproduced", "not_reproduced"}
    return Claim(claim.claim_id, claim.claim, claim.metric, claim.paper_value, claim.ours_value,
                 f"{claim.ours_ci}; second metric: {text} ({verdict})",
                 "inconclusive" if opposite else claim.verdict,
                 ("mixed: the metrics disagree; " if opposite else "") + claim.evidence)


# ------------------------------------------------------------------------------------------------ validity


@dataclass(frozen=True)
class Validity:
    """The outcome of an experiment's validity checks: ``ok`` and, when not, what failed (one reason per failed
    check). A claim resting on an invalid check gets the verdict ``invalid`` (:func:`invalid`), never a judgement."""

    failures: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures

    def __add__(self, other: "Validity") -> "Validity":
        return Validity(self.failures + other.failures)

    @staticmethod
    def check(**conditions: tuple[bool, str]) -> "Validity":
        """``Validity.check(learned=(loss < unigram, "loss 7.1 above the unigram entropy 6.2"))``: each failed
        condition contributes its message."""
        return Validity(tuple(msg for ok, msg in conditions.values() if not ok))


def learning_validity(table, unigram: float, margin: float) -> Validity:
    """Did every run learn? ``table``: one row per run with ``variant, seed, loss`` and the columns of
    ``replicate.data.ngram.learning_row``. Fails naming the runs outside (0, ln V] or not ``margin`` nats below the
    unigram, and the runs not below the bigram of their own training windows (still learning the text: a comparison
    of such runs measures how fast each starts, DESIGN §7)."""
    bad = table[~(table["learned"] & table["in_range"])]
    weak = table[~table["beats_bigram"]]
    return Validity.check(
        learned=(bad.empty, f"runs outside (0, ln V] or not clearly below the unigram ({unigram:.3f} - {margin}): "
                            + ", ".join(f"{r.variant}/seed {r.seed} ({r.loss:.3f})" for r in bad.itertuples())),
        beats_bigram=(weak.empty, "runs not below the Kneser-Ney bigram of their own training windows (still "
                                  "learning the text: a comparison would measure how fast each starts): "
                                  + ", ".join(f"{r.variant}/seed {r.seed} ({r.loss:.3f} vs {r.seen_bigram:.3f})"
                                              for r in weak.itertuples())))


def invalid(claim_id: str, claim: str, metric: str, validity: Validity, paper_value=None, ours_value=None,
            evidence: str = "") -> Claim:
    """The claim whose experiment failed its own validity check: verdict ``invalid``, the failures in the evidence."""
    return Claim(claim_id, claim, metric, paper_value, ours_value, "", "invalid",
                 "validity check failed: " + "; ".join(validity.failures) + (f" ({evidence})" if evidence else ""))


def judged(claim: Claim, validity: Validity) -> Claim:
    """``claim`` as computed when ``validity`` holds; otherwise the same claim with verdict ``invalid``."""
    if validity.ok:
        return claim
    what = "; ".join(x for x in (claim.ours_ci, claim.evidence) if x)  # the interval's text stays readable
    return invalid(claim.claim_id, claim.claim, claim.metric, validity, claim.paper_value, claim.ours_value, what)
