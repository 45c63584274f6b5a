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
