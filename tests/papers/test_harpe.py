"""HARPE replication (replicate/papers/harpe/): the paper's mechanism -- per-head RoPE bases with all bases equal are
exactly the standard RoPE; each head's q·k stays a function of m - n under its own base (shifting both positions
changes nothing) and really uses its own base; the peak-valley search returns distinct candidates of its grid and its
greedy step picks what a brute-force reference picks; the scaling rule maps 32x to the paper's 100x / 500x -- the
baselines' limiting cases (Self-Extend with a window covering the sequence or G = 1 is plain attention; PI divides
the frequencies by s), the evaluation machinery (a needle lands at the requested depth; the scorer gives 1.0 on the
gold answer and 0 on a wrong one), and the whole plan at ``smoke``: its artifacts, its validity policy and verdict
rules that can fail."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from replicate.config import ConfigError
from replicate.data import synthetic
from replicate.models.context import ForwardContext
from replicate.models.decoder import Decoder, DecoderConfig
from replicate.models.position import RoPE, rope_inv_freq
from replicate.papers import harpe, resolve_config
import replicate.papers.harpe.experiments as X
import replicate.papers.harpe.method as M
import replicate.papers.harpe.report as R

PAPER = "harpe"  # the shared fixtures (conftest.py): env, cfg = its smoke config


# ------------------------------------------------------------------------------------------------- config


def test_scales_and_unconfirmed_choices(cfg):
    small = resolve_config(PAPER, "small")
    assert (small.seq_len, small.long_len, small.factor, small.head_dim) == (128, 1024, 8, 32)
    assert (small.n_seeds, small.workers, small.threads, small.retrieval_frac) == (3, 2, 1, 0.6)
    # Phase A sized for retrieval to emerge (more, smaller steps; see HARPEConfig.small)
    assert (small.steps, small.batch_size, small.min_lr_ratio, small.retrieval_pool) == (3200, 16, 0.3, 12_000)
    assert (small.answer_weight, small.copy_frac, small.retrieval_min_len, small.warmup_tasks_frac) == (
        10.0, 0.2, 48, 0.3)
    assert (small.search_prominence, small.search_normalise, small.base_order, small.multi_stages) == (
        0.05, True, "ascending", 3)
    assert (small.window, small.group) == (32, 8)  # Self-Extend: w = L/4, G = s (spec §6)
    # Phase B after the second referee audit: 4x the steps on the same tokens, packed retrieval rows
    assert (small.cont_steps, small.cont_batch_size, small.cont_lr, small.long_pack) == (160, 1, 1e-3, True)
    assert cfg.run_control and cfg.run_uniform and cfg.n_seeds >= 2  # every path at smoke, a seed spread included
    assert harpe.HARPEConfig.paper().long_len // harpe.HARPEConfig.paper().seq_len == 32
    assert resolve_config(PAPER, "smoke", base_order="descending").base_order == "descending"
    with pytest.raises(ConfigError, match="long_len"):
        resolve_config(PAPER, "smoke", long_len=200)
    with pytest.raises(ConfigError, match="eval_lengths"):
        resolve_config(PAPER, "smoke", eval_lengths=(128, 512))
    with pytest.raises(ConfigError, match="train_tasks"):
        resolve_config(PAPER, "smoke", train_tasks=("passkey", "qa_speaker"))
    with pytest.raises(ConfigError, match="b_max"):
        resolve_config(PAPER, "smoke", b_min=1e5, b_max=5e4)


# ------------------------------------------------------------------------------------- per-head RoPE bases


def _cfg(**kw):
    base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=96)
    return DecoderConfig(**(base | kw))


def test_all_bases_equal_is_standard_rope_exactly():
    torch.manual_seed(0)
    std = Decoder(_cfg())
    same = Decoder(_cfg(position_kwargs=(("bases", (1e4,) * 4),)))
    same.load_state_dict(std.state_dict())
    x = torch.randint(0, 64, (2, 40))
    assert torch.equal(std(x).logits, same(x).logits)  # bit for bit
    other = Decoder(_cfg(position_kwargs=(("bases", (1e4, 1e4, 1e4, 2e4)),)))  # one head differs: logits differ
    other.load_state_dict(std.state_dict())
    assert not torch.allclose(std(x).logits, other(x).logits)


def _scores(pos: RoPE, q, k, m: int, n: int):
    """Per-head q·k of q at position m and k at position n (B=1, T=1)."""
    qr, _ = pos(q, None, ForwardContext(position_ids=torch.tensor([m])))
    kr, _ = pos(k, None, ForwardContext(position_ids=torch.tensor([n])))
    return (qr * kr).sum(-1).flatten()


def test_per_head_scores_depend_only_on_the_distance_and_use_their_own_base():
    bases = (1e4, 3e4, 1.6e5, 4e5)
    pos = RoPE(_cfg(max_seq_len=4096), bases=bases)
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 4, 1, 8, generator=g, dtype=torch.float64), torch.randn(1, 4, 1, 8, generator=g,
                                                                                     dtype=torch.float64)
    pos = pos.double()
    for m, n in ((5, 2), (300, 17), (40, 40)):
        ref = _scores(pos, q, k, m, n)
        for shift in (1, 123, 3000):
            # fp32 angle tables (as transformers): m θ rounds at ~1e-7 m
            torch.testing.assert_close(_scores(pos, q, k, m + shift, n + shift), ref, rtol=0, atol=1e-3)
    # each head rotates with its own base: head h equals the single-base RoPE of b_h, and the heads disagree
    for h, b in enumerate(bases):
        single = RoPE(_cfg(max_seq_len=4096, rope_theta=b)).double()
        torch.testing.assert_close(_scores(pos, q, k, 700, 3)[h], _scores(single, q, k, 700, 3)[h])
    one = RoPE(_cfg(max_seq_len=4096)).double()
    assert not torch.allclose(_scores(pos, q, k, 700, 3), _scores(one, q, k, 700, 3))


def test_pi_and_yarn_wiring():
    cfg = _cfg(max_seq_len=512)
    pi = Decoder(dataclasses.replace(cfg, position_kwargs=M.position_kwargs("pi", factor=8.0))).pos
    torch.testing.assert_close(pi.inv_freq, rope_inv_freq(1e4, 8) / 8)
    yarn = Decoder(dataclasses.replace(cfg, position_kwargs=M.position_kwargs("yarn", factor=8.0, short_len=64))).pos
    f0 = rope_inv_freq(1e4, 8)
    assert torch.all(yarn.inv_freq <= f0 + 1e-12) and torch.all(yarn.inv_freq >= f0 / 8 - 1e-12)
    assert yarn.attention_scaling == pytest.approx(0.1 * math.log(8) + 1)
    assert M.position_kwargs("harpe", bases=(1.0, 2.0)) == (("bases", (1.0, 2.0)),)
    assert M.position_kwargs("abf_single") == ()


# ------------------------------------------------------------------------------------------ the base search


def test_scaling_rule_matches_the_paper_at_32x():
    lo, hi = M.scaled_range(1e4, 32)
    assert lo == pytest.approx(1e6) and hi == pytest.approx(5e6)  # 100x and 500x (spec §6)
    lo8, hi8 = M.scaled_range(1e4, 8)
    assert 1.5e5 < lo8 < 1.7e5 and 4.0e5 < hi8 < 4.3e5
    assert len(M.candidate_grid(1e6, 5e6, 3e4)) == 133  # the paper's grid
    with pytest.raises(ValueError, match="factor"):
        M.scaled_range(1e4, 1)


def test_waveform_and_extrema():
    f = M.waveform(1e4, 32, 500)
    assert f[0] == pytest.approx(math.sqrt(32))  # m = 0: (2/√d) · d/2
    peaks, valleys = M.extrema(1e4, 32, 500, 0.05)
    assert len(peaks) and len(valleys) and set(peaks).isdisjoint(valleys)
    for p in peaks:
        assert f[p] >= f[p - 1] and f[p] >= f[min(p + 1, 500)]
    for v in valleys:
        assert f[v] <= f[v - 1] and f[v] <= f[min(v + 1, 500)]
    all_p, _ = M.extrema(1e4, 32, 500, 0.0)
    assert len(all_p) > len(peaks)  # the prominence filter drops ripples


def _brute_second(b_min, grid, head_dim, length, prominence, normalise):
    """The first greedy step written out: the candidate minimising Σ|p − nearest valley| + Σ|v − nearest peak|."""
    p0, v0 = M.extrema(b_min, head_dim, length, prominence)
    best, arg = np.inf, None
    for b in grid:
        p, v = M.extrema(float(b), head_dim, length, prominence)
        dp = [min(abs(x - y) for y in v0) for x in p]
        dv = [min(abs(x - y) for y in p0) for x in v]
        d = (np.mean(dp) if dp else 0) + (np.mean(dv) if dv else 0) if normalise else sum(dp) + sum(dv)
        if d < best:
            best, arg = d, float(b)
    return arg


@pytest.mark.parametrize("normalise", [True, False])
def test_search_returns_distinct_grid_candidates_and_greedy_steps(normalise):
    lo, hi = M.scaled_range(1e4, 8)
    stride = (hi - lo) / 40
    grid = M.candidate_grid(lo, hi, stride)
    bases = M.peak_valley_search(6, lo, hi, stride, 32, 1024, prominence=0.05, normalise=normalise)
    assert len(set(bases)) == 6 and list(bases) == sorted(bases) and bases[0] == lo
    for b in bases[1:]:
        k = (b - lo) / stride
        assert abs(k - round(k)) < 1e-6 and 1 <= round(k) <= len(grid)  # on the grid
    second = _brute_second(lo, grid, 32, 1024, 0.05, normalise)
    two = M.peak_valley_search(2, lo, hi, stride, 32, 1024, prominence=0.05, normalise=normalise)
    assert two == tuple(sorted((lo, second)))
    with pytest.raises(ValueError, match="n:"):
        M.peak_valley_search(len(grid) + 2, lo, hi, stride, 32, 1024)


def test_uniform_bases_and_multi_stage_schedule():
    assert M.uniform_bases(3, 1.0, 3.0) == (1.0, 2.0, 3.0)
    assert M.uniform_bases(3, 1.0, 3.0, "descending") == (3.0, 2.0, 1.0)
    sched = M.multi_stage_schedule(1e4, 1e6, 4e6, 128, 1024)
    assert [L for _, L in sched] == [256, 512, 1024]
    assert [b for b, _ in sched] == pytest.approx([1e6, 2e6, 4e6])  # geometric b_min -> b_max


def test_stage_plan_spends_the_same_tokens(cfg):
    small = resolve_config(PAPER, "small")
    lo, hi = small.base_range
    plan = X.stage_plan(small, lo, hi)
    assert sum(s for *_, s in plan) == small.cont_steps
    assert {r * L for _, L, r, _ in plan} == {small.cont_batch_size * small.long_len}


# ----------------------------------------------------------------------------------------- Self-Extend


@pytest.mark.parametrize("window,group", [(200, 4), (8, 1)])
def test_self_extend_limiting_cases_are_plain_attention(window, group):
    torch.manual_seed(0)
    std = Decoder(_cfg())
    se = Decoder(_cfg(attention="self_extend", attention_kwargs=(("window", window), ("group", group))))
    se.load_state_dict(std.state_dict())
    x = torch.randint(0, 64, (2, 50))
    torch.testing.assert_close(se(x).logits, std(x).logits, rtol=1e-5, atol=1e-5)
    grouped = Decoder(_cfg(attention="self_extend", attention_kwargs=(("window", 4), ("group", 4))))
    grouped.load_state_dict(std.state_dict())
    assert not torch.allclose(grouped(x).logits, std(x).logits, atol=1e-4)
    assert torch.allclose(grouped(x[:, :4]).logits, std(x[:, :4]).logits, atol=1e-5)  # inside the window: plain


# ------------------------------------------------------------------------------------ evaluation machinery


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_needle_at_requested_depth_and_scorer(depth):
    s = synthetic.make("niah_single_1", 3, 0, 2000, depth, header=False)
    assert abs(s.depths[0] - depth) < 0.05
    hay = s.prompt.rsplit("\n", 1)[0]  # the haystack with the needle (the question follows the last line break)
    before = hay.index(s.needles[0])
    after = len(hay) - before - len(s.needles[0])
    assert abs(before / (before + after) - depth) < 0.03  # the haystack's share before the needle
    assert synthetic.score(s.answer, s) == 1.0
    assert synthetic.score(" 00000", s) == 0.0


# ------------------------------------------------------------------------------------- the plan at smoke


@pytest.fixture(scope="module")
def bundle(env, cfg):
    return harpe.run_experiments(cfg)


def test_plan_at_smoke(bundle, cfg):
    b = bundle
    assert set(b.runs.frame["variant"]) == {"short", *X.TRAINED}
    assert (b.runs.frame["variant"] == "harpe").sum() == cfg.n_seeds
    assert set(b.evals.scores["variant"]) == set(X.ARMS)
    assert set(b.evals.scores["kind"]) == {"ruler", "heat", "passkey"}
    assert b.evals.scores["score"].between(0, 1).all() and np.all(np.asarray(b.data.gold_scores) == 1.0)
    assert len(b.bases.harpe) == cfg.n_heads and len(set(b.bases.harpe)) == cfg.n_heads
    # every table and figure is a pure function of the bundle
    for fn in (R.setup, R.validity_table, R.checks_table, R.table2, R.table3, R.table4, R.table5, R.table6,
               R.table7, R.table8, R.comparisons_table, R.passkey_table):
        assert len(fn(b))
    for fig in (R.fig2, R.fig_ppl_length, R.fig_waveforms):
        assert fig(b) is not None
    # retrieval rows: whole samples, never cut; weights 0 on the padding, 1 on the prompt, answer_weight on the
    # answer and its EOS. At seq_len one sample per row (EOS padding first); above it (long_pack) samples back to
    # back after an EOS, EOS padding last
    d = b.data
    assert cfg.long_pack and any(L > cfg.seq_len for L in d.pools)
    for L, rows in d.pools.items():
        assert rows.ids.shape == rows.weight.shape and rows.ids.shape[1] == L + 1 and np.all(rows.ids[:, -1] == d.eos)
        assert set(np.unique(rows.weight)) <= {0.0, 1.0, cfg.answer_weight}
        aw = rows.weight == cfg.answer_weight
        starts, ends = aw[:, 1:] & ~aw[:, :-1], aw[:, :-1] & ~aw[:, 1:]  # first / last token of each answer run
        assert np.all(rows.ids[:, :-1][ends] == d.eos) and np.all(rows.ids[:, -1][aw[:, -1]] == d.eos)
        if L == cfg.seq_len:
            assert rows.samples is None and np.all(aw[:, -1]) and np.all(starts.sum(1) == 1)
            pad = (rows.weight == 0).sum(1)
            assert all(np.all(r[:k] == d.eos) for r, k in zip(rows.ids, pad))
        else:
            assert np.all(rows.ids[:, 0] == d.eos) and rows.samples.min() >= 1
            assert np.array_equal(starts.sum(1), rows.samples)  # one answer per counted sample
            zero = rows.weight[:, 1:] == 0  # padding only at the end (the room no task fits), a small share
            assert all(np.all(z[np.argmax(z):]) or not z.any() for z in zero)
            assert zero.mean() < 0.25
        got = dataclasses.replace(X._batches(cfg, d, L, 3, 0, 0), frac=1.0).batch(0)
        assert all(any(np.array_equal(r, x) for x in rows.ids) for r in got["ids"].numpy())
    # Phase B: every arm and every stage of ABF multi-stage sees the same expected samples per step
    want = cfg.retrieval_frac * cfg.cont_batch_size * d.pools[cfg.long_len].per_row
    assert X.cont_frac(cfg, d, cfg.long_len, cfg.cont_batch_size) == cfg.retrieval_frac
    for _, L, n, _ in b.bases.stages:
        f = X.cont_frac(cfg, d, L, n)
        assert f == 1.0 or f * n * d.pools[L].per_row == pytest.approx(want)
    # Phase A: the curriculum draws warm-up tasks only before warmup_until; copy rows repeat a span
    rows = d.pools[cfg.seq_len]
    warm = dataclasses.replace(X._batches(cfg, d, cfg.seq_len, 8, 0, 0, copy_frac=0.0), frac=1.0, warmup_until=5)
    easy = {r.tobytes() for r in rows.ids[rows.easy]}
    assert rows.easy.any() and not rows.easy.all()
    assert all(r.tobytes() in easy for r in warm.batch(4)["ids"].numpy())
    assert not all(r.tobytes() in easy for s in range(5, 9) for r in warm.batch(s)["ids"].numpy())
    cp = dataclasses.replace(X._batches(cfg, d, cfg.seq_len, 4, 0, 0), frac=0.0, copy_frac=1.0).batch(0)["ids"]
    for r in cp.numpy():
        k = next(k for k in range(8, cfg.seq_len // 2 + 1) if np.array_equal(r[k:], r[:-k]))
        assert k >= 8
    # Phase-B rows of one seed are the same for every single-stage arm; another seed differs
    b0, b1 = X._batches(cfg, d, cfg.long_len, 2, 0, cfg.steps), X._batches(cfg, d, cfg.long_len, 2, 1, cfg.steps)
    assert torch.equal(b0.batch(0)["ids"], X._batches(cfg, d, cfg.long_len, 2, 0, cfg.steps).batch(0)["ids"])
    assert not torch.equal(b0.batch(0)["ids"], b1.batch(0)["ids"])
    # evaluation prompts are laid out as training rows: every answer ends inside its length
    for p in d.prompts:
        assert len(p.ids) + p.n_answer <= p.length and (p.kind == "heat") == (p.depth is not None)


def test_claims_at_smoke_are_invalid_not_judged(bundle, cfg):
    """At smoke nothing learns: every judged claim must be `invalid` (the validity gate), the paper-scale ones
    `not_run`, and no verdict `reproduced`."""
    cl = {c.claim_id: c for c in R.claims(cfg, bundle)}
    assert set(cl) == {f"C{i}" for i in range(1, 14)}
    assert {cl["C12"].verdict, cl["C13"].verdict} == {"not_run"}
    for cid in [f"C{i}" for i in range(1, 12)]:
        assert cl[cid].verdict == "invalid", (cid, cl[cid])
    assert cl["C4"].paper_value == pytest.approx(0.6671) and cl["C8"].paper_value is None
    note = R.closing_note(cfg, bundle)
    assert "C1" in note and "peak memory" in note


def test_verdict_rules_can_fail(bundle, cfg):
    """With validity forced to pass, identical arms are not `reproduced`; a clear gap is."""
    from replicate import claims as C

    null = C.seed_gap_claim("x", "x", [0.0, 0.0, 0.0], metric="m")
    assert null.verdict == "inconclusive"
    assert C.seed_gap_claim("x", "x", [0.2, 0.21, 0.19], metric="m").verdict == "reproduced"
    assert C.seed_gap_claim("x", "x", [-0.2, -0.21, -0.19], metric="m").verdict == "not_reproduced"
    # the retrieval gate: a short model with no skill makes retrieval claims invalid, not inconclusive
    strict = dataclasses.replace(cfg, retrieval_floor=0.5)
    v = R.validity(_with_cfg(bundle, strict), ["harpe"], True)
    assert not v.ok and any("no retrieval skill" in f for f in v.failures)
    # the recovery gate: an extended arm that lost the short model's skill at seq_len makes the claim invalid
    from replicate.experiments import Bundle

    sc = bundle.evals.scores.copy()
    at = (sc["kind"] == "ruler") & (sc["length"] == cfg.seq_len)
    sc.loc[at & (sc["variant"] == "short"), "score"] = 1.0
    sc.loc[at & (sc["variant"] == "harpe"), "score"] = 0.2
    sc.loc[at & (sc["variant"] == "abf_multi"), "score"] = 0.9
    vals = {k: getattr(bundle, k) for k in dir(bundle) if k != "seconds"}
    vals["evals"] = dataclasses.replace(bundle.evals, scores=sc)
    fake = Bundle(vals, dict(bundle.seconds))
    lost = R.validity(fake, ["harpe", "abf_multi"], True)
    assert not lost.ok and any("harpe 0.200" in f and "abf_multi" not in f for f in lost.failures)
    assert not any("lost the short model" in f for f in R.validity(fake, ["abf_multi"], True).failures)
    # a baseline (not the method under test) that lost the skill makes its comparison untestable (not_run), and
    # drops out of C10's legs as untestable, never as a win for HARPE
    sc.loc[at & (sc["variant"] == "harpe"), "score"] = 0.9
    sc.loc[at & (sc["variant"] == "pi"), "score"] = 0.0
    vals["evals"] = dataclasses.replace(bundle.evals, scores=sc)
    cl = {c.claim_id: c for c in R.claims(cfg, Bundle(vals, dict(bundle.seconds)))}
    assert cl["C4"].verdict == "not_run" and "untestable" in cl["C4"].evidence and "pi lost retrieval (NIAH 0.000" in cl["C4"].evidence
    assert "lost the short model" not in cl["C10"].evidence and cl["C10"].verdict != "reproduced"
    fig = R.fig2(_with_cfg(bundle, strict))  # an all-failed heat map says why on its face
    assert fig._suptitle is not None and "INVALID" in fig._suptitle.get_text()
    assert R.fig2(bundle)._suptitle is None


def test_c10_needs_harpe_above_every_other_method(bundle):
    """C10 ("first among the methods") is HARPE beating each other method: one clear loss makes it not_reproduced,
    one tie inconclusive, no comparator is picked from the data."""
    from replicate.experiments import Bundle

    rng = np.random.default_rng(0)

    def verdict(gaps):
        per = {("ruler", f"harpe - {a}"): ([g, g + 0.01, g - 0.01] if a == "abf_multi" else [g])
               for a, g in gaps.items()}
        boot = {("ruler", f"harpe - {a}"): rng.normal(g, 0.01, 500) for a, g in gaps.items()}
        vals = {k: getattr(bundle, k) for k in dir(bundle) if k != "seconds"}
        vals["comparisons"] = X.Comparisons(bundle.comparisons.frame, per, boot)
        best = min(gaps, key=gaps.get)
        c = R.ranks_first(Bundle(vals, dict(bundle.seconds)), "t", "m", [f"harpe - {a}" for a in gaps], best)
        assert c.ours_value == pytest.approx(gaps[best]) and "pi" in c.evidence
        return c.verdict

    assert verdict({"abf_multi": 0.3, "pi": 0.5}) == "reproduced"
    assert verdict({"abf_multi": 0.3, "pi": -0.3}) == "not_reproduced"
    assert verdict({"abf_multi": 0.3, "pi": 0.0}) == "inconclusive"


def _with_cfg(b, cfg):
    from replicate.experiments import Bundle

    vals = {k: getattr(b, k) for k in dir(b) if k != "seconds"}
    vals["cfg"] = cfg
    return Bundle(vals, dict(b.seconds))


def test_experiments_import_first_in_a_fresh_process():
    """A prefetch worker (spawned) imports ``experiments`` before anything else of the package: no import cycle."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "import replicate.papers.harpe.experiments"], check=True)


def test_self_extend_cached_decoding_equals_recomputing():
    torch.manual_seed(0)
    se = Decoder(_cfg(attention="self_extend", attention_kwargs=(("window", 6), ("group", 3))))
    x = torch.randint(0, 64, (2, 30))
    torch.testing.assert_close(se.generate(x, 8), se.generate(x, 8, use_cache=False))
    full = se(x).logits
    from replicate.models.generate import KVCache

    cache = KVCache(se, 2, 30)
    se(x[:, :20], cache=cache)
    torch.testing.assert_close(se(x[:, 20:], cache=cache).logits, full[:, 20:], rtol=1e-5, atol=1e-5)


def test_evaluations_are_cached_and_reloaded(bundle, cfg, env):
    """An evaluation is written once and read back (weights_only loading): the second call must not recompute."""
    from replicate.io import torch_load

    d, b = bundle.data, bundle.bases
    path = X.eval_path(cfg, d, b, "harpe", cfg.seed)
    assert torch_load(path) is not None
    again = X.evaluate_arm(cfg, d, b, "harpe", cfg.seed)
    assert torch.equal(again["scores"], torch_load(path)["scores"])
