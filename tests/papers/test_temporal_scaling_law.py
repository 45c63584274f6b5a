"""Temporal Scaling Law: the law's identities, fits that recover known parameters and forecasts, rules that can fail,
and the schedule the config promises."""

import dataclasses

import numpy as np
import pytest
import torch

from replicate.config import ConfigError
from replicate.models.decoder import DecoderConfig
from replicate.models.lm import CausalLM, OptimConfig, lr_at
from replicate.papers import resolve_config
from replicate.papers import temporal_scaling_law as tsl


@pytest.fixture(scope="module")
def cfg():
    return resolve_config("temporal_scaling_law", "small")


@pytest.mark.parametrize("start", [0, 1])
def test_closed_form_mean_equals_the_direct_sum(start):
    n, c, b, a2 = 256, 2.3, 4.1, 3.1
    i = np.arange(n) + start
    assert tsl.mean_hyperbolic(n, c, b, a2, start=start) == pytest.approx(np.mean(tsl.hyperbolic(i, c, b, a2)),
                                                                          rel=1e-12)
    a0, a1, _ = tsl.spec_parameters(c, b, a2)  # the spec's form gives the same curve
    assert np.allclose(a0 / (1 + a1 * i) + a2, tsl.hyperbolic(i, c, b, a2))


def test_stage1_recovers_known_parameters_and_chi2_is_one_at_the_noise_level():
    i = np.arange(1, 257, dtype=float)
    truth = (3.0, 2.5, 3.4)
    exact = tsl.fit_positions(i, tsl.hyperbolic(i, *truth))
    assert [exact["c"], exact["b"], exact["a2"]] == pytest.approx(truth, rel=1e-6)
    rng = np.random.default_rng(0)
    se = np.full_like(i, 0.05)
    noisy = tsl.fit_positions(i, tsl.hyperbolic(i, *truth) + rng.normal(0, 0.05, i.shape), se)
    assert 0.8 < noisy["chi2_red"] < 1.2 and abs(noisy["b"] - 2.5) < 3 * noisy["se_b"]
    assert not noisy["b_at_bound"] and not noisy["multimodal"]
    assert noisy["aic_constant"] - noisy["aic_hyperbolic"] > 100  # far better than no position dependence
    # data of another shape (a bump the hyperbola cannot follow) fits far outside the noise
    assert tsl.fit_positions(i, 4 + 0.5 * np.sin(i / 20) + rng.normal(0, 0.05, i.shape), se)["chi2_red"] > 3
    # a curve steeper at the start than any b >= 0 allows puts b at its bound, and says so
    assert tsl.fit_positions(i, 3.0 / (i - 0.6) + 3.4, se)["b_at_bound"]


def test_c1_rule_rejects_a_constant_surface_and_accepts_the_law():
    i = np.arange(1, 129, dtype=float)
    rng = np.random.default_rng(1)
    se = np.full_like(i, 0.1)

    def rule(make):
        f = [tsl.fit_positions(i, make() + rng.normal(0, 0.1, i.shape), se) for _ in range(20)]
        get = lambda k: np.array([x[k] for x in f])
        return tsl.c1_verdict(get("chi2_red"), get("aic_constant") - get("aic_hyperbolic"),
                              get("aic_power") - get("aic_hyperbolic"), 10.0)

    assert rule(lambda: np.full_like(i, 4.0)) == "not_reproduced"
    assert rule(lambda: tsl.hyperbolic(i, 3.0, 2.0, 3.5)) == "reproduced"
    assert rule(lambda: 3.5 + 4.0 * i ** -0.2) == "not_reproduced"  # a power law in i, decisively not the hyperbola


def _surface(cfg, steps, noise=0.0, seed=0, c_of=None):
    """Per-position curves from known (c, b, a2(N)): a2 a power law of the cumulative learning rate, c constant or
    ``c_of(clock)``; Gaussian noise of std ``noise`` per position (independent, so L(N)'s se is noise/sqrt(n))."""
    h = tsl.e1_horizon(cfg)
    ck = h.clock(steps)
    c = np.full(len(steps), 1.2) if c_of is None else c_of(ck)
    b = np.full(len(steps), 0.6)
    a2 = 3.2 + 1.0 * ck.s1 ** -0.6
    i = np.arange(cfg.seq_len) + cfg.position_start
    rng = np.random.default_rng(seed)
    se = max(noise, 1e-3)
    curves = {}
    for k, s in enumerate(steps):
        L = tsl.hyperbolic(i, c[k], b[k], a2[k]) + rng.normal(0, noise, len(i))
        curves[s] = tsl.Curve(L, np.full(len(i), se), float(L.mean()), se / np.sqrt(len(i)))
    return curves, tsl.mean_hyperbolic(cfg.seq_len, c, b, a2, start=cfg.position_start)


def _spec_rows(**cols):
    import pandas as pd

    n = len(next(iter(cols.values())))
    base = {"parameter": ["a0", "a1", "a2"][:n], "measurable": [True] * n, "fits_within_noise": [False] * n}
    return pd.DataFrame({**base, **cols})


@pytest.mark.parametrize("rows, verdict", [
    (dict(r2_full=(0.95, 0.97, 0.5), fit_ok=(True, True, True)), "not_reproduced"),
    (dict(r2_full=(0.95, 0.2, 0.5), fit_ok=(True, False, True)), "not_reproduced"),  # a passing miss refutes
    (dict(r2_full=(0.95, 0.97, 0.91), fit_ok=(True, True, True)), "reproduced"),
    (dict(r2_full=(0.95, 0.2, 0.91), fit_ok=(True, False, True)), "invalid"),  # the failed fit could be the miss
    # a trajectory within its noise can neither follow nor miss: its low R² (noise) refutes nothing
    (dict(r2_full=(0.04, 0.97, 0.91), fit_ok=(True, True, True), measurable=(False, True, True)), "reproduced"),
    # a form that fits within the noise follows its trajectory whatever its R²
    (dict(r2_full=(0.95, 0.5, 0.91), fit_ok=(True, True, True), fits_within_noise=(False, True, False)), "reproduced"),
    # a2 not measurable: nothing decides
    (dict(r2_full=(0.95, 0.97, 0.1), fit_ok=(True, True, True), measurable=(True, True, False)), "inconclusive"),
])
def test_c2_is_refuted_by_a_passing_fit_and_never_confirmed_past_a_failed_one(rows, verdict):
    from replicate.claims import Claim, judged

    from replicate.papers.temporal_scaling_law.report import c2_verdict

    v, value, validity = c2_verdict(_spec_rows(**rows))
    assert judged(Claim("C2", "", "", None, value, "", v, ""), validity).verdict == verdict
    if verdict == "not_reproduced":
        assert value == 0.5 and validity.ok


def test_the_fraction_rule_holds_a_verdict_only_where_every_fraction_gives_it():
    from replicate.papers.temporal_scaling_law.report import across_fractions

    assert across_fractions({0.3: "reproduced", 0.4: "reproduced", 0.5: "reproduced"})[0] == "reproduced"
    assert across_fractions({0.3: "reproduced", 0.4: "inconclusive", 0.5: "reproduced"})[0] == "inconclusive"
    assert across_fractions({0.3: "not_reproduced", 0.5: "reproduced"})[0] == "inconclusive"
    # a clear miss at some fraction that no fraction contradicts refutes "accurate from a short prefix"
    assert across_fractions({0.3: "not_reproduced", 0.4: "not_reproduced", 0.5: "inconclusive"})[0] == "not_reproduced"
    assert across_fractions({0.3: "inconclusive", 0.4: "inconclusive"})[0] == "inconclusive"


@pytest.mark.parametrize("noise, c_of", [
    (0.02, None),
    (0.1, None),  # per-position noise of the committed small run's order
    (0.02, lambda ck: 0.8 + 0.6 * (1 - ck.s1 ** -0.3) / (1 - 0.05 ** -0.3)),  # c rising with learning, saturating
])
def test_a_known_surface_is_recovered_and_forecast_within_one_percent(cfg, noise, c_of):
    steps = np.array(tsl.e1_schedule(cfg))
    curves, truth = _surface(cfg, steps, noise=noise, c_of=c_of)
    df = tsl.stage1(cfg, curves)
    for frac in cfg.fit_fractions:
        pred, validity = tsl.predict(cfg, df, tsl.e1_horizon(cfg), frac, cfg.seq_len, tuple(steps), curves,
                                     log_v=np.log(2048))[tsl.TSL]
        fut = steps / cfg.steps > frac
        assert validity.ok, validity.failures
        assert np.max(np.abs(pred[fut] - truth[fut]) / truth[fut]) < 0.01


def test_the_shared_b_recovers_the_truth_and_b_zero_is_the_laws_own_limit():
    i = np.arange(1, 257, dtype=float)
    rng = np.random.default_rng(3)
    se = np.full_like(i, 0.05)
    make = lambda b, c: [(tsl.hyperbolic(i, c * k, b, 3.0 + 1 / k) + rng.normal(0, 0.05, i.shape), se)
                         for k in (1.0, 1.3, 1.6, 1.9)]
    b, at_bound = tsl.shared_b(i, make(2.0, 2.0))
    assert abs(b - 2.0) < 0.5 and not at_bound
    # a pure 1/i curve (b = 0) is the law itself, not a fit stuck at a bound
    b, at_bound = tsl.shared_b(i, make(0.0, 2.0))
    assert b < 0.2 and not at_bound
    # a curve steeper than any b >= 0 allows (b = -0.6) is: the profile still falls below 0
    b, at_bound = tsl.shared_b(i, make(-0.6, 2.0))
    assert at_bound


def test_a_form_that_misses_its_own_prefix_fails_its_check(cfg):
    steps = np.array(tsl.e1_schedule(cfg))
    ck = tsl.e1_horizon(cfg).clock(steps)
    y = 3.0 + 2.0 * ck.s1 ** -0.8  # steep early fall: a piecewise cosine cannot follow it within 0.005 nats
    se = np.full(len(y), 0.005)
    assert not tsl.fit_form("piecewise_cosine", ck, y, se).fits_its_points
    assert tsl.fit_form("lr_power", ck, y, se, decreasing=True).fits_its_points
    assert tsl.fit_form("piecewise_cosine", ck, y).fits_its_points  # without standard errors there is no test


def test_the_spec_a2_keeps_delta2_only_where_it_is_identifiable_and_improves_the_fit(cfg):
    steps = np.array(tsl.e1_schedule(cfg))
    ck = tsl.e1_horizon(cfg).clock(steps)
    se = np.full(len(steps), 0.01)
    rng = np.random.default_rng(0)
    flat = 3.0 + 0.4 * np.cos(np.pi * ck.p) + rng.normal(0, 0.01, len(steps))
    tilted = flat + 0.5 * ck.p
    assert tsl.spec_a2(ck, flat, se).form == "piecewise_cosine"
    # over one cosine decay, cos(π p) and p are collinear beyond |corr| 0.99: δ2 cannot be told from β, even where it
    # would lower χ², so it is not kept (the spec's "keep it only if the fit improves" never triggers here)
    with_d2 = tsl.fit_form("piecewise_cosine_linear", ck, tilted, se)
    assert with_d2.chi2 < tsl.fit_form("piecewise_cosine", ck, tilted, se).chi2 and not with_d2.ok
    assert tsl.spec_a2(ck, tilted, se).form == "piecewise_cosine"


def test_window_resampled_curves_equal_the_explicit_resample():
    rng = np.random.default_rng(0)
    m = rng.gamma(2.0, 1.5, (40, 16))
    idx = rng.integers(0, 40, 40)
    got = tsl.curves({10: m}, idx)[10]
    x = m[idx]
    np.testing.assert_allclose(got.L, x.mean(0))
    np.testing.assert_allclose(got.se, x.std(0, ddof=1) / np.sqrt(40))
    assert got.loss == pytest.approx(x.mean()) and got.loss_se == pytest.approx(x.mean(1).std(ddof=1) / np.sqrt(40))


def test_a_forecast_outside_the_possible_range_is_a_failed_check(cfg):
    steps = np.array(tsl.e1_schedule(cfg))
    curves, _ = _surface(cfg, steps, noise=0.02)
    df = tsl.stage1(cfg, curves)
    _, v = tsl.predict(cfg, df, tsl.e1_horizon(cfg), 0.3, cfg.seq_len, tuple(steps), curves, log_v=1.0)[tsl.TSL]
    assert not v.ok and any("outside (0, ln V" in f for f in v.failures)


@pytest.mark.parametrize("form, make", [
    ("log", lambda ck: 1.5 + 0.3 * np.log(ck.u)),
    ("hyperbolic", lambda ck: 0.02 + 0.01 / (ck.u + 0.05)),
    ("piecewise_cosine", lambda ck: 3.0 + 0.4 * np.cos(np.pi * ck.p)),
    ("power", lambda ck: 2.0 + 0.5 * ck.u ** -0.3),
    ("lr_power", lambda ck: 2.0 + 1.5 * ck.s1 ** -0.4),
])
def test_temporal_forms_extrapolate_their_own_family(form, make):
    ck = tsl.clock(np.arange(20, 801, 20), OptimConfig(lr=1e-3, warmup_steps=16, max_steps=800), 0.975)
    obs = ck.u <= 0.3
    f = tsl.fit_form(form, ck.at(obs), make(ck)[obs])
    assert f.converged and not f.theta_at_bound
    np.testing.assert_allclose(f.predict(ck), make(ck), rtol=1e-4, atol=1e-5)


def test_the_annealing_law_recovers_its_own_data():
    opt = OptimConfig(lr=2e-3, warmup_steps=10, max_steps=400, min_lr_ratio=0.1)
    ck = tsl.clock(np.arange(20, 401, 10), opt, 0.99)
    eta = np.array([lr_at(s, opt) for s in range(400)]) / opt.lr
    assert ck.s1[-1] == pytest.approx(1.0) and np.all(np.diff(ck.s1) > 0) and np.all(np.diff(ck.s2) >= 0)
    assert ck.s1[0] == pytest.approx(eta[:20].sum() / eta.sum())
    L = 2.0 + 1.5 * ck.s1 ** -0.4 - 0.3 * ck.s2
    f = tsl.fit_form("lr_power", ck, L, decreasing=True, anneal=True)
    np.testing.assert_allclose(f.predict(ck), L, rtol=1e-5)


def test_checkpoint_schedule_gives_exactly_what_the_config_says(cfg):
    s = tsl.checkpoint_schedule(cfg.steps, cfg.n_checkpoints, cfg.n_log_checkpoints)
    assert len(s) == cfg.n_checkpoints + cfg.n_log_checkpoints and list(s) == sorted(set(s)) and s[-1] == cfg.steps
    assert tsl.e1_schedule(cfg) == s[cfg.n_log_checkpoints:]  # the uniform ones
    with pytest.raises(ConfigError, match="parameter 'mix_n_checkpoints'"):
        resolve_config("temporal_scaling_law", "smoke", mix_steps=10, mix_n_checkpoints=11)
    with pytest.raises(ConfigError, match="parameter 'n_checkpoints'"):
        resolve_config("temporal_scaling_law", "smoke", steps=10, n_checkpoints=10, n_log_checkpoints=1)


def test_position_weighting_with_gamma_zero_is_the_ordinary_loss():
    torch.manual_seed(0)
    mcfg = DecoderConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=12)
    batch = torch.randint(0, 40, (3, 13))
    plain = CausalLM(mcfg, OptimConfig())
    weighted = tsl.PositionWeightedLM(mcfg, OptimConfig(), gamma=0.0)
    weighted.load_state_dict(plain.state_dict())
    for m in (plain, weighted):
        m.log = lambda *a, **k: None
    loss_plain = torch.nn.functional.cross_entropy(plain(batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())
    assert weighted.training_step(batch, 0).item() == pytest.approx(loss_plain.item(), rel=1e-6)
    w1 = tsl.PositionWeightedLM(mcfg, OptimConfig(), gamma=1.0)
    w1.load_state_dict(plain.state_dict())
    w1.log = lambda *a, **k: None
    assert w1.training_step(batch, 0).item() != pytest.approx(loss_plain.item(), rel=1e-6)


def test_uniformity_slope_is_zero_for_proportional_improvement(cfg):
    rng = np.random.default_rng(0)
    c = dataclasses.replace(cfg, seq_len=32, drop_before_frac=0.0, steps=100, n_checkpoints=4, n_log_checkpoints=0)
    base = 3 + 2 / (1 + 0.1 * np.arange(1, 33))
    windows = base + rng.normal(0, 0.01, (8, 32))
    ev = {s: torch.tensor(windows * 0.9 ** k) for k, s in enumerate((25, 50, 75, 100))}
    frame, slope, octave = tsl.relative_improvement(c, ev)
    assert np.allclose(frame["rel_improvement"], 0.1) and frame["pairs"].iloc[0] == 3
    assert abs(slope) < 1e-6 and abs(octave) < 1e-6
    ev = {s: torch.tensor(windows - 0.2 * k) for k, s in enumerate((25, 50, 75, 100))}  # equal absolute steps
    assert min(tsl.relative_improvement(c, ev)[1:]) > 0.05


def test_the_bundle_is_frozen_and_each_step_runs_once(cfg):
    from replicate.experiments import Plan

    calls = []
    plan = Plan("test")

    @plan.step
    def a(cfg):
        calls.append("a")
        return 1

    @plan.step
    def b(cfg, a):
        calls.append("b")
        return a + 1

    exp = plan.start(cfg)
    exp.run("b")
    bundle = exp.bundle()
    assert (bundle.a, bundle.b, calls) == (1, 2, ["a", "b"])
    with pytest.raises(AttributeError, match="frozen"):
        bundle.a = 3
    with pytest.raises(KeyError, match="unknown 'c'"):
        exp.run("c")
    with pytest.raises(TypeError, match="neither 'cfg' nor an earlier step"):
        plan.step(lambda cfg, later: None)


def test_hub_corpus_fails_with_one_clear_line_offline(monkeypatch, tmp_path):
    from replicate.data.corpora import DataUnavailable

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("REPLICATE_RUNS", str(tmp_path))
    c = resolve_config("temporal_scaling_law", "smoke", id_corpus="hf:monology/pile-uncopyrighted", ood_set="python_docs")
    with pytest.raises(DataUnavailable, match=r"^corpus 'hf:monology/pile-uncopyrighted': .*offline") as e:
        tsl.data(c)
    assert "\n" not in str(e.value)
    with pytest.raises(Exception, match="parameter 'id_corpus'"):
        resolve_config("temporal_scaling_law", "smoke", id_corpus="pile")


def test_a_shape_the_points_cannot_pin_down_falls_back_to_a_fixed_member_of_its_family(cfg):
    from replicate.papers.temporal_scaling_law.experiments import _form_or_constant

    steps = np.array(tsl.e1_schedule(cfg))
    ck = tsl.e1_horizon(cfg).clock(steps)
    se = np.full(len(steps), 0.01)
    y = 0.5 + 0.4 * ck.s1**3  # accelerating faster than any shape in range: θ runs to its bound of −2
    assert tsl.fit_form("lr_power", ck, y, se).theta_at_bound
    f = _form_or_constant("lr_power", ck, y, se)
    assert f.ok and f.theta_fixed and f.theta in tsl.FIXED_THETA and f.n_free == 2
    # a flat, noisy trajectory is a constant; a clean power law keeps its fitted shape
    rng = np.random.default_rng(0)
    assert _form_or_constant("lr_power", ck, 0.7 + rng.normal(0, 0.01, len(steps)), se).form == "constant"
    g = _form_or_constant("lr_power", ck, 3.0 + 1.5 * ck.s1**-0.4, se)
    assert g.form == "lr_power" and not g.theta_fixed and abs(g.theta - 0.4) < 0.05
