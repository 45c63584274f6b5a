"""Temporal Scaling Law: the law's identities, the fits recovering known parameters, and the baselines."""

import dataclasses

import numpy as np
import pytest
import torch

from replicate.papers import resolve_config
from replicate.models.lm import CausalLM, OptimConfig, lr_at
from replicate.models.decoder import DecoderConfig
from replicate.papers import temporal_scaling_law as tsl


@pytest.fixture(scope="module")
def cfg():
    return resolve_config("temporal_scaling_law", "small")


@pytest.mark.parametrize("start", [0, 1])
def test_closed_form_mean_equals_the_direct_sum(start):
    n, a0, a1, a2 = 256, 2.3, 0.07, 3.1
    i = np.arange(n) + start
    direct = np.mean(tsl.hyperbolic_law(i, a0, a1, a2))
    assert tsl.mean_hyperbolic(n, a0, a1, a2, start=start) == pytest.approx(direct, rel=1e-12)


def test_stage1_recovers_known_parameters_and_chi2_is_one_at_the_noise_level():
    i = np.arange(1, 257, dtype=float)
    truth = (2.5, 0.12, 3.4)
    L = tsl.hyperbolic_law(i, *truth)
    fit = tsl.fit_positions(i, L)
    assert [fit["a0"], fit["a1"], fit["a2"]] == pytest.approx(truth, rel=1e-5)
    assert fit["r2"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    se = np.full_like(L, 0.05)
    noisy = L + rng.normal(0, 0.05, L.shape)
    assert 0.8 < tsl.fit_positions(i, noisy, se)["chi2_red"] < 1.2
    # data of another shape (a bump the hyperbola cannot follow) fits far outside the noise
    assert tsl.fit_positions(i, 4 + 0.5 * np.sin(i / 20) + rng.normal(0, 0.05, L.shape), se)["chi2_red"] > 3


@pytest.mark.parametrize("form, make", [
    ("log", lambda u: 1.5 + 0.3 * np.log(u)),
    ("hyperbolic", lambda u: 0.02 + 0.01 / (u + 0.05)),
    ("piecewise_cosine", lambda u: 3.0 + 0.4 * np.cos(np.pi * np.clip((u - 0.02) / 0.98, 0, 1))),
    ("power", lambda u: 2.0 + 0.5 * u ** -0.3),
])
def test_temporal_forms_extrapolate_their_own_family_exactly(form, make):
    u = np.linspace(0.05, 1.0, 40)
    obs = u <= 0.3
    f = tsl.fit_form(form, u[obs], make(u[obs]), uw=0.02)
    np.testing.assert_allclose(f(u), make(u), rtol=1e-4, atol=1e-6)


def _synthetic_fits(cfg, horizon, steps):
    """Per-checkpoint parameters generated exactly from the spec's forms: TSL must then predict L(N) exactly."""
    u = np.asarray(steps) / horizon.total_steps
    p = tsl.progress(u, horizon.uw)
    a0 = 1.0 + 0.2 * np.log(u)
    a1 = 0.05 + 0.004 / (u + 0.1)
    a2 = 3.5 + 0.5 * np.cos(np.pi * p)
    loss = tsl.mean_hyperbolic(cfg.seq_len, a0, a1, a2, start=cfg.position_start)
    import pandas as pd

    return pd.DataFrame({"step": steps, "loss": loss, "a0": a0, "a1": a1, "a2": a2})


def test_tsl_predicts_exactly_when_the_parameters_follow_its_forms(cfg):
    opt = OptimConfig(lr=1e-3, warmup_steps=16, max_steps=800)
    horizon = tsl.Horizon(800, 2048, opt)
    steps = list(tsl.checkpoint_schedule(800, 30, 16))
    df = _synthetic_fits(cfg, horizon, steps)
    pred = tsl.predict(cfg, df, horizon, 0.3, cfg.seq_len)
    fut = np.asarray(steps) / 800 > 0.3
    np.testing.assert_allclose(pred["TSL"][fut], df["loss"].to_numpy()[fut], rtol=1e-4)
    # a whole-loss power law cannot follow the cosine-shaped end of training
    assert tsl.scores(df["loss"].to_numpy()[fut], pred["E + A·N^-α"][fut])["mse"] > 100 * \
        tsl.scores(df["loss"].to_numpy()[fut], pred["TSL"][fut])["mse"]


def test_lr_areas_and_the_annealing_law_recover_their_own_data():
    opt = OptimConfig(lr=2e-3, warmup_steps=10, max_steps=400, min_lr_ratio=0.1)
    steps = np.arange(20, 401, 10)
    s1, s2 = tsl.lr_areas(steps, opt, 0.999)
    eta = np.array([lr_at(s, opt) for s in range(400)]) / opt.lr
    assert s1[-1] == pytest.approx(eta.sum())
    assert np.all(np.diff(s1) > 0) and np.all(np.diff(s2) >= 0) and s2[-1] > 0  # the LR anneals, so the annealing area grows
    L = 2.0 + 1.5 * s1 ** -0.4 - 0.002 * s2
    u = steps / 400
    f = tsl.fit_baseline("lr_annealing", u, L, s1, s2)
    np.testing.assert_allclose(f(u, s1, s2), L, rtol=1e-4)


def test_checkpoint_schedule_is_log_then_uniform():
    s = tsl.checkpoint_schedule(800, 30, 16)
    assert list(s) == sorted(set(s)) and s[-1] == 800 and s[0] == 16 and 25 <= len(s) <= 31
    gaps = np.diff(s)
    assert gaps[0] < gaps[-1]


def test_position_weighting_with_gamma_zero_is_the_ordinary_loss():
    torch.manual_seed(0)
    mcfg = DecoderConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=12)
    batch = torch.randint(0, 40, (3, 13))
    plain = CausalLM(mcfg, OptimConfig())
    weighted = tsl.PositionWeightedLM(mcfg, OptimConfig(), gamma=0.0)
    weighted.load_state_dict(plain.state_dict())
    for m in (plain, weighted):
        m.log = lambda *a, **k: None
    plain._trainer = None
    loss_plain = torch.nn.functional.cross_entropy(plain(batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())
    assert weighted.training_step(batch, 0).item() == pytest.approx(loss_plain.item(), rel=1e-6)
    w1 = tsl.PositionWeightedLM(mcfg, OptimConfig(), gamma=1.0)
    w1.load_state_dict(plain.state_dict())
    w1.log = lambda *a, **k: None
    assert w1.training_step(batch, 0).item() != pytest.approx(loss_plain.item(), rel=1e-6)


def test_uniformity_slope_is_zero_for_proportional_improvement(cfg):
    rng = np.random.default_rng(0)
    base = 3 + 2 / (1 + 0.1 * np.arange(1, 33))
    windows = base + rng.normal(0, 0.01, (8, 32))
    c = dataclasses.replace(cfg, seq_len=32, drop_before_frac=0.0, steps=100)
    ev = {10: torch.tensor(windows), 100: torch.tensor(windows * 0.8)}
    frame, slope = tsl.relative_improvement(c, ev)
    assert np.allclose(frame["rel_improvement"], 0.2)
    assert abs(slope) < 1e-6
    ev[100] = torch.tensor(windows - 0.5)  # equal absolute, unequal relative improvement
    assert tsl.relative_improvement(c, ev)[1] > 0.05


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
    c = resolve_config("temporal_scaling_law", "smoke", id_corpus="hf:monology/pile-uncopyrighted")
    with pytest.raises(DataUnavailable, match=r"^corpus 'hf:monology/pile-uncopyrighted': .*offline") as e:
        tsl.data(c)
    assert "\n" not in str(e.value)
    with pytest.raises(Exception, match="parameter 'id_corpus'"):
        resolve_config("temporal_scaling_law", "smoke", id_corpus="pile")
