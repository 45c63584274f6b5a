import numpy as np
import pytest

from replicate import claims as C


def test_interval_verdicts():
    assert C.verdict_from_interval((0.1, 0.3), paper_direction="positive") == "reproduced"
    assert C.verdict_from_interval((-0.1, 0.3), paper_direction="positive") == "inconclusive"
    assert C.verdict_from_interval((-0.3, -0.1), paper_direction="positive") == "not_reproduced"
    assert C.verdict_from_interval((-0.3, -0.1), paper_direction="negative") == "reproduced"
    assert C.verdict_from_interval(None, paper_direction="positive") == "inconclusive"


def test_threshold_and_equivalence_verdicts():
    assert C.verdict_threshold(0.95, (0.92, 0.97), at_least=0.9) == "reproduced"
    assert C.verdict_threshold(0.95, (0.85, 0.97), at_least=0.9) == "inconclusive"
    assert C.verdict_threshold(0.5, (0.4, 0.6), at_least=0.9) == "not_reproduced"
    assert C.verdict_threshold(0.004, None, at_most=0.005) == "reproduced"
    assert C.verdict_threshold(float("nan"), None, at_most=0.005) == "inconclusive"
    assert C.verdict_equivalence((-0.1, 0.2), margin=0.25) == "reproduced"
    assert C.verdict_equivalence((0.3, 0.5), margin=0.25) == "not_reproduced"
    assert C.verdict_equivalence((0.1, 0.5), margin=0.25) == "inconclusive"
    # non-inferiority: positive favours the claim; worse by less than the margin passes
    assert C.verdict_noninferior((-0.01, 0.03), margin=0.02) == "reproduced"
    assert C.verdict_noninferior((-0.03, 0.03), margin=0.02) == "inconclusive"
    assert C.verdict_noninferior((-0.09, -0.03), margin=0.02) == "not_reproduced"
    assert C.verdict_noninferior(None, margin=0.02) == "inconclusive"
    with pytest.raises(ValueError, match="margin"):
        C.verdict_noninferior((0, 1), margin=-1)


def test_intervals_cover_the_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 0.1, 200)
    lo, hi = C.bootstrap_ci(x)
    assert lo < x.mean() < hi and hi - lo < 0.05
    lo, hi = C.t_interval([1.0, 1.1, 0.9])
    assert lo < 1.0 < hi
    assert C.t_interval([1.0]) is None


def test_claim_rejects_unknown_verdict_and_keeps_unknown_paper_value_empty():
    with pytest.raises(ValueError, match="verdict"):
        C.Claim("c", "x", "m", None, 1.0, "", "probably", "")
    assert C.Claim("c", "x", "m", None, 1.0, "", "inconclusive", "").row()["paper_value"] == ""


def test_gap_claims_reject_a_null_effect_and_detect_a_real_one():
    import pandas as pd

    rng = np.random.default_rng(0)
    null = rng.normal(0.0, 0.01, 200)  # bootstrap replicates of a difference centred on 0
    assert C.bootstrap_gap_claim("x", "c", 0.0, null, metric="m", what="w").verdict == "inconclusive"
    assert C.bootstrap_gap_claim("x", "c", 0.05, null + 0.05, metric="m", what="w").verdict == "reproduced"
    assert C.bootstrap_gap_claim("x", "c", -0.05, null - 0.05, metric="m", what="w").verdict == "not_reproduced"
    frame = pd.DataFrame({"encoding": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1], "bpb": [2.0, 2.1, 1.5, 1.7],
                          "final": [True] * 4})
    assert C.paired_gap(frame, "a", "b").round(6).tolist() == [0.5, 0.4]
    assert C.log_interval((1.0, np.e)) == (0.0, 1.0) and C.log_interval(None) is None


def test_a_failed_validity_check_makes_the_claim_invalid():
    ok = C.Claim("c", "x", "m", None, 1.0, "[0.9, 1.1]", "reproduced", "fig1")
    v = C.Validity.check(converged=(True, "fit did not converge"), in_range=(False, "predicted loss -3 nats < 0"))
    assert not v.ok and v.failures == ("predicted loss -3 nats < 0",)
    bad = C.judged(ok, v)
    assert bad.verdict == "invalid" and "predicted loss -3 nats < 0" in bad.evidence and bad.ours_ci == ""
    assert C.judged(ok, C.Validity()) is ok


def test_single_seed_rule_needs_both_the_bootstrap_and_the_seed_noise():
    rng = np.random.default_rng(0)
    tight = rng.normal(0.05, 0.005, 2000)  # evaluation noise alone says: a clear gap
    seed_gaps_noisy, seed_gaps_quiet = [0.0, 0.08, 0.04], [0.049, 0.051, 0.050]
    c = C.single_seed_gap_claim("X", "x", 0.05, tight, seed_gaps_noisy, metric="m", what="boot")
    assert c.verdict == "inconclusive" and "paired seeds" in c.ours_ci  # seed noise swamps it; seeds needed said
    assert C.single_seed_gap_claim("X", "x", 0.05, tight, seed_gaps_quiet, metric="m", what="b").verdict == "reproduced"
    neg = C.single_seed_gap_claim("X", "x", -0.05, -tight, seed_gaps_quiet, metric="m", what="b")
    assert neg.verdict == "not_reproduced"
    null = C.single_seed_gap_claim("X", "x", 0.0, rng.normal(0, 0.005, 2000), seed_gaps_quiet, metric="m", what="b")
    assert null.verdict == "inconclusive"  # two identical arms: never a verdict
    assert C.single_seed_gap_claim("X", "x", 0.05, tight, [0.05], metric="m", what="b").verdict == "inconclusive"


def test_seeds_needed_grows_with_noise_and_shrinks_with_the_gap():
    assert C.seeds_needed(0.05, 0.01) < C.seeds_needed(0.05, 0.04) < C.seeds_needed(0.01, 0.04)
    assert C.seeds_needed(0.0, 0.01) is None and C.seeds_needed(0.05, 0.0) is None
    assert 9 <= C.seeds_needed(0.046, 0.041) <= 10  # ~(2.8 sd / gap)^2 plus the t correction


def test_a_second_metric_pointing_the_other_way_makes_the_claim_mixed():
    base = C.seed_gap_claim("X", "x", [0.05, 0.06, 0.055], metric="loss")
    assert base.verdict == "reproduced"
    mixed = C.second_metric(base, "not_reproduced", "accuracy gap -0.002")
    assert mixed.verdict == "inconclusive" and mixed.evidence.startswith("mixed")
    same = C.second_metric(base, "inconclusive", "accuracy gap +0.001")
    assert same.verdict == "reproduced" and "accuracy" in same.ours_ci


def test_learning_validity_names_the_runs_that_did_not_beat_their_own_bigram():
    import pandas as pd

    from replicate.data.ngram import learning_row

    seen = {0: 5.5, 1: 5.6}
    rows = [{"variant": v, "seed": s, "loss": loss, **learning_row(loss, s, 6.5, 5.4, seen, 8192, 0.05)}
            for v, s, loss in (("a", 0, 5.3), ("b", 1, 5.55), ("c", 0, 9.5))]
    t = pd.DataFrame(rows)
    assert t["beats_full_bigram"].tolist() == [True, False, False]  # reported, not a condition
    v = C.learning_validity(t, 6.5, 0.05)
    assert not v.ok and len(v.failures) == 2
    assert "c/seed 0 (9.500)" in v.failures[0]  # above ln V and the unigram
    assert "b/seed 1 (5.550 vs 5.600)" not in v.failures[1] and "c/seed 0" in v.failures[1]
    assert C.learning_validity(t.iloc[:2], 6.5, 0.05).ok  # b beats its own bar though not the whole split's


def test_seed_gap_claim_says_the_seeds_needed_when_asked():
    noisy = [0.01, -0.02, 0.04]
    assert "paired seeds" in C.seed_gap_claim("X", "x", noisy, metric="m", need=True).ours_ci
    assert "paired seeds" not in C.seed_gap_claim("X", "x", noisy, metric="m").ours_ci  # off: other papers' text
    assert "paired seeds" not in C.seed_gap_claim("X", "x", [0.05, 0.06, 0.055], metric="m", need=True).ours_ci


def test_converging_turns_only_a_closing_decided_gap_inconclusive():
    """``converging``: a decided gap whose end-of-training drift points towards 0 by more than the spread becomes
    inconclusive (both signs of the gap); one within the spread or widening keeps its verdict; an undecided claim
    stays undecided; no curve leaves it unchanged and says so."""
    for value, verdict, drift in ((-0.05, "not_reproduced", 0.02), (0.05, "reproduced", -0.02)):
        c = C.Claim("X", "", "", None, value, "ci", verdict, "ev")
        out = C.converging(c, drift, 0.01, "trend")
        assert out.verdict == "inconclusive" and "still converging" in out.ours_ci and out.evidence.startswith("still")
        assert C.converging(c, -drift, 0.01, "trend").verdict == verdict  # widening
        assert C.converging(c, drift / 4, 0.01, "trend").verdict == verdict  # within the spread
    und = C.Claim("X", "", "", None, 0.01, "ci", "inconclusive", "")
    assert C.converging(und, -0.5, 0.01, "trend").verdict == "inconclusive"
    assert "not measured" in C.converging(und, None, 0.01, "trend").ours_ci


def test_single_seed_claim_states_the_spread_at_which_it_flips():
    """A decided single-seed comparison names the seed std above which its prediction interval would reach 0; at
    that std the rule indeed gives inconclusive."""
    import re

    reps = np.full(100, 0.05)
    c = C.single_seed_gap_claim("X", "", 0.05, reps, [0.051, 0.049, 0.050], metric="m", what="boot")
    assert c.verdict == "reproduced"
    flip = float(re.search(r"seed std above ([0-9.]+)", c.ours_ci).group(1))
    wide = [0.05 - 1.05 * flip, 0.05, 0.05 + 1.05 * flip]  # std = 1.05 * flip
    assert C.single_seed_gap_claim("X", "", 0.05, reps, wide, metric="m", what="boot").verdict == "inconclusive"


def test_converging_also_flags_a_drift_larger_than_the_gap():
    """A small decided gap whose drift towards 0 exceeds the gap itself (though not the spread) is still converging."""
    c = C.Claim("X", "", "", None, 0.004, "ci", "reproduced", "ev")
    assert C.converging(c, -0.006, 0.01, "trend").verdict == "inconclusive"
    assert C.converging(c, -0.003, 0.01, "trend").verdict == "reproduced"


def test_converging_keeps_a_gap_the_drift_cannot_close_within_the_horizon():
    """With a horizon, a large gap closing slowly keeps its verdict (the drift continued over the horizon stays short
    of 0); a drift that would close it within the horizon still makes it inconclusive."""
    c = C.Claim("X", "", "", None, 0.63, "ci", "reproduced", "ev")
    kept = C.converging(c, -0.05, 0.008, "trend", horizon=5)
    assert kept.verdict == "reproduced" and "would not reach 0" in kept.ours_ci
    assert C.converging(c, -0.05, 0.008, "trend").verdict == "inconclusive"  # no horizon: the old rule
    assert C.converging(c, -0.13, 0.008, "trend", horizon=5).verdict == "inconclusive"  # 0.65 > 0.63
    neg = C.Claim("X", "", "", None, -0.048, "ci", "not_reproduced", "ev")
    assert C.converging(neg, 0.0112, 0.008, "trend", horizon=5).verdict == "inconclusive"  # 0.056 > 0.048


def test_converging_with_an_unknown_spread_uses_the_gap():
    c = C.Claim("X", "", "", None, 0.004, "ci", "reproduced", "ev")
    assert C.converging(c, -0.006, float("nan"), "trend").verdict == "inconclusive"
    assert C.converging(c, -0.002, float("nan"), "trend").verdict == "reproduced"


def test_converging_paired_takes_the_spread_from_the_seed_gaps():
    """``converging_paired``: ``converging`` with the std of the deciding pair's seed gaps as the spread and the drift
    named by the comparison and the stretch; a drift towards 0 beyond that spread turns a decided claim inconclusive,
    one within it (a wider spread, or the same drift against the gap of a single seed) keeps it; no curve: not
    measured."""
    c = C.Claim("X", "", "", None, 0.05, "ci", "reproduced", "ev")
    tight, wide = [0.04, 0.05, 0.06], [0.02, 0.05, 0.08]  # std 0.01, 0.03
    out = C.converging_paired(c, -0.02, tight, "a - b", 0.2)
    assert out.verdict == "inconclusive" and out.evidence == "still converging; ev"
    assert out.ours_ci.startswith("ci; gap trend (paired training-loss gap a - b, last 20% of the steps − the 20% "
                                  "before, same batches): -0.0200 against a seed spread of 0.0100: still converging")
    assert out == C.converging(c, -0.02, float(np.std(tight, ddof=1)), "paired training-loss gap a - b, last 20% of "
                               "the steps − the 20% before, same batches")
    for gaps in (wide, [0.05]):  # within the spread; one seed: no spread, the gap 0.05 is the bar
        kept = C.converging_paired(c, -0.02, gaps, "a - b", 0.25)
        assert kept.verdict == "reproduced" and kept.evidence == "ev" and "last 25% of the steps" in kept.ours_ci
    assert "seed spread of nan" in C.converging_paired(c, -0.02, [0.05], "a - b", 0.2).ours_ci
    none = C.converging_paired(c, None, tight, "a - b", 0.2)
    assert none.ours_ci == "ci; gap trend: not measured" and none.verdict == "reproduced"


def test_note_lines_give_one_line_per_claim_with_its_interval_or_evidence():
    from replicate.claims import Claim, note_lines

    lines = note_lines([Claim("C1", "A beats B", "m", None, 0.01234, "[0.01, 0.02] (t)", "reproduced", "table1"),
                        Claim("C2", "B is fast", "m", None, None, "", "not_run", "needs the `paper` scale")])
    assert lines[:2] == ["**Closing note (generated from the results).**", ""]
    assert lines[2] == "- **C1** (reproduced): A beats B. Ours = +0.01234; [0.01, 0.02] (t)."
    assert lines[3] == "- **C2** (not_run): B is fast. Ours; needs the `paper` scale."


def test_note_footer_states_the_cost_and_what_settles_each_open_claim():
    from replicate.claims import Claim
    from replicate.notebook import note_footer

    cl = [Claim("C1", "a", "m", None, 0.1, "", "reproduced", ""), Claim("C2", "b", "m", None, None, "", "not_run", ""),
          Claim("C3", "c", "m", None, 0.0, "", "inconclusive", "")]
    lines = note_footer("small", {"data": 1.2, "runs": 100.4}, cl, lambda c: f"more for {c.claim_id}")
    assert lines[1].startswith("Experiments at `small`: 102 s in this kernel (data 1 s, runs 100 s; cached runs")
    assert "peak memory of this process" in lines[1] and "GiB" in lines[1]
    assert lines[3] == "To settle what stayed open: C2: more for C2; C3: more for C3."
    assert len(note_footer("small", {}, cl[:1], str)) == 2  # nothing open: no settle line


def test_heldout_converging_asks_whether_the_continued_gap_still_passes_its_rule():
    """``heldout_converging``: seeds give the drift a t-interval; a decided claim turns inconclusive only when the drift
    is distinguishable from 0 AND the gap continued over one more run length fails the claim's own rule (here the
    t-interval of the shifted per-seed gaps); a drift that keeps the verdict, or one within the seeds' noise, keeps
    it; one seed: a bootstrap over windows plus the seed-spread bar; no drift rows: not measured."""
    gaps = [-0.050, -0.055, -0.060]
    rejudge = lambda s: C.seed_gap_claim("X", "x", [g + s for g in gaps], metric="m").verdict  # noqa: E731
    c = C.seed_gap_claim("X", "x", gaps, metric="m")
    assert c.verdict == "not_reproduced"
    closing = [np.full(50, 0.011), np.full(50, 0.012), np.full(50, 0.013)]  # +0.012 a stretch: +0.06 over 5
    out = C.heldout_converging(c, rejudge, closing, gaps, 0.2, "a - b")
    assert out.verdict == "inconclusive" and out.evidence.startswith("still converging")
    assert "95% t over 3 seeds" in out.ours_ci and "held-out gap a - b, at the end − after 80% of the steps" in out.ours_ci
    slow = [np.full(50, 0.002), np.full(50, 0.003), np.full(50, 0.004)]  # +0.015 over 5: still clearly below 0
    assert C.heldout_converging(c, rejudge, slow, gaps, 0.2, "a - b").verdict == "not_reproduced"
    noisy = [np.full(50, 0.05), np.full(50, -0.03), np.full(50, 0.02)]  # interval holds 0
    kept = C.heldout_converging(c, rejudge, noisy, gaps, 0.2, "a - b")
    assert kept.verdict == "not_reproduced" and "indistinguishable from 0" in kept.ours_ci
    assert C.heldout_converging(c, rejudge, [-x for x in closing], gaps, 0.2, "b - a", sign=-1.0).verdict == "inconclusive"
    one = C.heldout_converging(c, rejudge, [np.full(50, 0.012) + np.linspace(-1e-3, 1e-3, 50)], gaps, 0.2, "a - b")
    assert one.verdict == "inconclusive" and "bootstrap over held-out windows" in one.ours_ci
    none = C.heldout_converging(c, rejudge, None, gaps, 0.2, "a - b")
    assert none.verdict == "not_reproduced" and none.ours_ci.endswith("gap trend: not measured")
