"""Finedeep replication (replicate/papers/finedeep/): the FFN slot's identities and limits (M = 1 with r ≡ 1 is the
dense FFN on the same weights; R = 0 gives scores exactly 0.5 and half the experts' sum; the sub-layers are sequential),
the fast forward against the spec's reference form (values and every gradient, the hand-derived dL/dR), the exact
parameter accounting (M·K + M − 1)·d per layer, the paired initialisation, NSAR of known tensors, the NSAR verdict
rule on disagreeing metrics, the whole plan at ``smoke``: its count models (``replicate.data.ngram`` on exactly the
windows each seed's runs consume), its picklable run calls (``prefetch``), and the validity policy (a run above the
bigram of its own training windows makes the claims resting on it ``invalid``)."""

import dataclasses
import pickle

import lightning as L
import numpy as np
import pytest
import torch

from replicate.config import ConfigError
from replicate.data.ngram import KneserNeyBigram, seen_windows, unigram_nll
from replicate.experiments import Bundle
from replicate.models.decoder import Decoder
from replicate.models.ffn import SwiGLU, build_ffn
from replicate.models.probes import capture
from replicate.papers import finedeep, resolve_config
from replicate.papers.finedeep import experiments as X
from replicate.papers.finedeep import method as M
from replicate.papers.finedeep import report as R

PAPER = "finedeep"  # the shared fixtures (conftest.py): env, cfg = its smoke config


# ------------------------------------------------------------------------------------------------- config


def test_scales_and_unconfirmed_choices(cfg):
    small = resolve_config("finedeep", "small")
    assert small.grid == ((1, 8), (2, 4), (4, 2), (8, 1)) and small.deciding == (2, 4)
    assert (small.norm, small.score, small.router_init) == ("pre", "output", "normal")
    assert small.n_seeds == 3 and small.budget_rtol == 0.01
    assert (small.workers, small.threads) == (2, 1)  # two one-thread runs side by side on the 2 cores
    assert finedeep.NORMS == M.NORMS and finedeep.SCORES == M.SCORES  # the torch-free copies agree
    assert cfg.run_ablations and finedeep.FinedeepConfig.paper().run_ablations  # the paper path runs at smoke
    for norm in M.NORMS:
        assert resolve_config("finedeep", "smoke", norm=norm).norm == norm
    with pytest.raises(ConfigError, match="grid_M"):
        resolve_config("finedeep", "smoke", grid_M=(1, 3))
    with pytest.raises(ConfigError, match="deciding_M"):
        resolve_config("finedeep", "smoke", deciding_M=8)
    with pytest.raises(ConfigError, match="score"):
        resolve_config("finedeep", "smoke", score="topk")


# -------------------------------------------------------------------------------------------- the FFN slot


def _dense_and_finedeep(Mn, Kn, score="none", norm="pre", d=32, D=64, seed=0):
    torch.manual_seed(seed)
    dense = SwiGLU(d, D)
    fd = M.FinedeepFFN(d, D, Mn, Kn, score=score, norm=norm)
    for j, (g, u, w) in enumerate(M.slice_dense_ffn(dense.gate_proj.weight, dense.up_proj.weight,
                                                    dense.down_proj.weight, Mn, Kn)):
        e = fd.sub[j].experts
        e.w_gate_EDF.data.copy_(g), e.w_up_EDF.data.copy_(u), e.w_down_EFD.data.copy_(w)
    return dense, fd


@pytest.mark.parametrize("K", [1, 2, 8])
def test_one_sublayer_without_gate_is_the_dense_ffn(K):
    """M = 1, r ≡ 1: h + Σ_i E_i(RMSNorm(h)) = h + FFN(RMSNorm(h)) on the same weights (partition identity)."""
    dense, fd = _dense_and_finedeep(1, K, "none", D=64)
    h = torch.randn(3, 5, 32)
    ref = h + dense(fd.sub[0].norm(h))
    torch.testing.assert_close(fd(h), ref, rtol=1e-5, atol=1e-6)


def test_zero_router_halves_the_sum_and_scores_are_exactly_half():
    """R = 0: every score is sigmoid(0) = 0.5 exactly, so one sub-layer adds 0.5 Σ_i o_i = 0.5 FFN(RMSNorm(h))."""
    dense, fd = _dense_and_finedeep(1, 4, "output")
    fd.sub[0].router.weight.data.zero_()
    h = torch.randn(2, 6, 32)
    with capture(fd.sub[0], ["score"]) as rec:
        y = fd(h)
    r = rec.cat("score")
    assert r.shape == (12, 4) and bool((r == 0.5).all())
    torch.testing.assert_close(y, h + 0.5 * dense(fd.sub[0].norm(h)), rtol=1e-5, atol=1e-6)


def test_scores_in_open_interval_and_sublayers_are_sequential():
    torch.manual_seed(1)
    fd = M.FinedeepFFN(16, 32, 2, 2, score="output", router_init_std=0.5)
    h = torch.randn(4, 16)[None]
    with capture(fd, ["score"]) as rec:
        y = fd(h)
    r = torch.cat([v[0] for v in rec.data.values()])
    assert bool(((r > 0) & (r < 1)).all()) and r.std() > 0
    # ĥ^2 = ĥ^1 + S_2(RMSNorm_2(ĥ^1)) with ĥ^1 = h + S_1(RMSNorm_1(h)): sub-layer 2 sees sub-layer 1's output
    x = h[0]
    h1 = x + fd.sub[0](fd.sub[0].norm(x))
    torch.testing.assert_close(y[0], h1 + fd.sub[1](fd.sub[1].norm(h1)))
    parallel = x + fd.sub[0](fd.sub[0].norm(x)) + fd.sub[1](fd.sub[1].norm(x))
    assert (y[0] - parallel).abs().max() > 1e-4  # not the parallel (shared-input) arrangement
    shared = M.FinedeepFFN(16, 32, 2, 2, norm="shared")
    u = shared.norm(x)
    torch.testing.assert_close(shared(h)[0], x + shared.sub[0](u) + shared.sub[1](u))


@pytest.mark.parametrize("score", M.SCORES)
def test_fast_forward_matches_reference_with_gradients(score):
    """The forward that never materialises o [T, K, d] equals the spec's §3.8 form, value and every gradient."""
    torch.manual_seed(2)
    layer = M.FinedeepFFN(24, 48, 1, 3, score=score, router_init_std=0.3).sub[0]
    u = torch.randn(7, 24, requires_grad=True)
    params = [p for n, p in layer.named_parameters() if not n.startswith("norm.")]  # the norm acts outside
    y1 = layer(u)
    g = torch.randn_like(y1)
    grads1 = torch.autograd.grad((y1 * g).sum(), [u, *params])
    y2 = layer.reference(u)
    grads2 = torch.autograd.grad((y2 * g).sum(), [u, *params])
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads1, grads2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_router_gradient_matches_the_closed_form():
    """dL/dR_e = Σ_t (g_t · o_{t,e}) s'(z_{t,e}) o_{t,e} (spec §7), and it is nonzero: the router learns."""
    torch.manual_seed(3)
    layer = M.FinedeepFFN(16, 32, 1, 4, score="output", router_init_std=0.2).sub[0]
    u = torch.randn(9, 16)
    g = torch.randn(9, 16)
    (layer(u) * g).sum().backward()
    with torch.no_grad():
        o = layer.experts.all_outputs(u)  # [T, K, d]
        s = torch.sigmoid(torch.einsum("tkd,kd->tk", o, layer.router.weight))
        expected = torch.einsum("tk,tkd->kd", torch.einsum("td,tkd->tk", g, o) * s * (1 - s), o)
    torch.testing.assert_close(layer.router.weight.grad, expected, rtol=1e-4, atol=1e-7)
    assert bool((layer.router.weight.grad.norm(dim=-1) > 0).all())


# ------------------------------------------------------------------------------------------------ accounting


@pytest.mark.parametrize("norm", M.NORMS)
@pytest.mark.parametrize("score", M.SCORES)
def test_exact_parameter_difference(cfg, norm, score):
    """Decoder parameters of Finedeep − dense = n_layers · (M·K + M − 1)·d for the default; the formula's variants
    for the other norm placements and for r ≡ 1 — counted by the shared counter on built decoders."""
    from replicate.moe import param_counts

    dense = param_counts(Decoder(X.model_config(cfg, 300))).total
    for Mn, Kn in ((1, 8), (2, 4), (4, 2), (8, 1), (3, 5)):
        c = dataclasses.replace(cfg, n_experts=Mn * Kn, d_ff=Mn * Kn * 4, grid_M=(Mn,), deciding_M=Mn)
        dn = param_counts(Decoder(X.model_config(c, 300))).total
        fd = param_counts(Decoder(X.model_config(c, 300, Mn, Kn, score, norm=norm))).total
        assert fd - dn == c.n_layers * M.extra_params_per_layer(c.d_model, Mn, Kn, norm, score)
    if (norm, score) == ("pre", "output"):
        # spec §3.4's example (d 2048, M 4, K 8) writes "36·2048"; the formula gives 4·8 + 4 − 1 = 35 (a slip there)
        assert M.extra_params_per_layer(2048, 4, 8) == 35 * 2048
        assert M.ffn_matmul_flops(64, 256, 2, 4) - M.ffn_matmul_flops(64, 256) == 2 * 8 * 64
    assert dense > 0


def test_registered_ffn_kind_and_paired_initialisation(cfg):
    """The decoder hosts the "finedeep" kind; a Finedeep run of seed s starts from the dense run of seed s: with
    M = 1, r ≡ 1 its initial logits equal dense's, and every shared weight is identical."""
    assert isinstance(build_ffn("finedeep", d_model=16, d_ff=32, M=2, K=2), M.FinedeepFFN)
    ids = torch.randint(0, 300, (2, 16))
    L.seed_everything(5, verbose=False)
    dense = X.build_module(cfg, 300)
    L.seed_everything(5, verbose=False)
    fd = X.build_module(cfg, 300, 1, cfg.n_experts, "none")
    torch.testing.assert_close(fd.model(ids).logits, dense.model(ids).logits, rtol=1e-5, atol=1e-6)
    L.seed_everything(5, verbose=False)
    fd2 = X.build_module(cfg, 300, *cfg.deciding, "output")
    sd, d2 = dense.model.state_dict(), fd2.model.state_dict()
    shared = [k for k in sd if k in d2]
    assert shared and all(torch.equal(sd[k], d2[k]) for k in shared)
    assert torch.equal(d2["layers.0.ffn.sub.0.norm.weight"], sd["layers.0.ffn_norm.weight"])


# ------------------------------------------------------------------------------------------------ analyses


def test_nsar_of_known_tensors():
    a = torch.tensor([0.0, 0.005, -0.02, 0.2])
    assert M.nsar(a, 0.01) == 0.5 and M.nsar(a, 0.0) == 0.75 and M.nsar(a, 1.0) == 0.0
    rms = float(a.double().pow(2).mean().sqrt())  # 0.1005...
    assert M.nsar(a, 0.1, relative=True) == float((a.abs() > 0.1 * rms).double().mean()) == 0.5
    # scale-free: multiplying by a constant changes the raw NSAR, never the RMS-relative one
    assert M.nsar(a * 100, 0.01) == 0.75 and M.nsar(a * 100, 0.1, relative=True) == M.nsar(a, 0.1, relative=True)


def test_nsar_rule_needs_both_metrics():
    _, _, v, agree = R.nsar_verdict([0.1, 0.12, 0.11], [0.05, 0.06, 0.04])
    assert (v, agree) == ("reproduced", "agree")
    _, _, v, agree = R.nsar_verdict([0.1, 0.12, 0.11], [-0.05, -0.06, -0.04])  # raw up, scale-free down
    assert (v, agree) == ("inconclusive", "mixed")
    _, _, v, agree = R.nsar_verdict([0.1, -0.05, 0.05], [-0.1, 0.05, -0.06])  # both undecided, opposite ways
    assert (v, agree) == ("inconclusive", "mixed")
    _, _, v, _ = R.nsar_verdict([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])  # identical arms: the rule rejects
    assert v == "inconclusive"


# ------------------------------------------------------------------------------------------------ the plan


@pytest.fixture(scope="module")
def bundle(env, cfg):
    return finedeep.run_experiments(cfg)


def test_plan_at_smoke(cfg, bundle, tmp_path):
    b = bundle
    assert b.budgets["exact"].all() and b.mechanism["ok"].all()
    t = finedeep.table1(b)
    assert list(t["variant"])[:4] == ["dense", "finedeep(1,4)", "finedeep(2,2)", "finedeep(4,1)"]
    assert (t["source"] == "ours").all() and len(t) == 6  # + the two ablations
    n = finedeep.nsar_frame(b)
    assert n["nsar"].between(0, 1).all() and set(n["threshold"]) == {"raw", "rms-relative", "mean-abs-relative"}
    assert set(n["tensor"]) == set(M.NSAR_TENSORS) == set(finedeep.NSAR_TENSORS)
    init = finedeep.nsar_frame(b, "init")  # the dense models at initialisation, one per dense seed
    assert set(init["variant"]) == {"dense"} and set(init["seed"]) == set(range(cfg.seed, cfg.seed + cfg.n_seeds))
    assert set(finedeep.nsar_by_tensor(b)["tensor"]) == set(M.NSAR_TENSORS)
    assert len(b.runs.frame) == 2 * cfg.n_seeds + 2 * cfg.n_seeds_grid + 2
    cl = finedeep.claims(cfg, b)
    assert [c.claim_id for c in cl] == ["C0", "C1", "C2", "C3", "C4", "C6", "C7"]
    v = finedeep.validity(b)
    for c in cl:
        if c.claim_id == "C4":
            assert c.verdict == "reproduced"
        elif not v.ok:  # six smoke steps do not beat the count models: the claims say so
            assert c.verdict == "invalid" and "validity check failed" in c.evidence
    for fig in (finedeep.fig_depth_width(b), finedeep.fig_nsar(b), finedeep.fig_scores(b)):
        fig.savefig(tmp_path / "f.png")
    assert "Closing note" in finedeep.closing_note(cfg, b)


def test_count_models_are_the_shared_ones_on_the_seen_windows(cfg, bundle):
    """The validity bar is ``replicate.data.ngram``'s Kneser-Ney bigram fitted on exactly the windows a run of each
    seed consumes (its batches are a pure function of (seed, step)); no count model of Finedeep's own remains."""
    d = bundle.data
    assert not hasattr(X, "count_models")
    assert d.unigram_nats == pytest.approx(float(unigram_nll(d.stream, d.n_ids, d.windows).mean()))
    assert d.bigram_nats == pytest.approx(float(KneserNeyBigram(d.stream, d.n_ids).nll(d.windows).mean()))
    assert set(d.seen_bigram_nats) == set(bundle.runs.frame["seed"]) == set(X.all_seeds(cfg))
    for s, nats in d.seen_bigram_nats.items():
        seen = seen_windows(X.batches(cfg, d, s), cfg.steps)
        assert seen.shape == (cfg.steps * cfg.batch_size, cfg.seq_len + 1)
        assert nats == pytest.approx(float(KneserNeyBigram(seen, d.n_ids).nll(d.windows).mean()))
    assert len({round(x, 9) for x in d.seen_bigram_nats.values()}) == len(d.seen_bigram_nats)  # each seed its own


def test_run_calls_are_picklable_and_cover_every_run(cfg, bundle):
    """``prefetch`` sends the calls to spawned workers: each must pickle, and the calls are exactly the runs read."""
    calls = X.run_calls(cfg, bundle.data)
    keys = [k for k, _ in calls]
    assert [(v, s) for v, _, _, _, s in keys] == list(zip(bundle.runs.frame["variant"], bundle.runs.frame["seed"]))
    for _, c in calls:
        back = pickle.loads(pickle.dumps(c))
        assert back.func is X.train_variant and back.args[2:] == c.args[2:]


def _with_losses(b: Bundle, losses, seen: float, full: float) -> Bundle:
    """``b`` with every run's final loss replaced and the count models set (the claims' validity reads these)."""
    runs = dataclasses.replace(b.runs, frame=b.runs.frame.assign(loss=losses))
    data = dataclasses.replace(b.data, seen_bigram_nats={s: seen for s in b.data.seen_bigram_nats}, bigram_nats=full)
    return Bundle({**b._values, "runs": runs, "data": data}, b.seconds)


def test_a_run_above_its_seen_bigram_makes_the_model_claims_invalid(cfg, bundle):
    """Every run below the bigram of its own windows: no claim is ``invalid`` (beating the whole split's bigram is
    only reported). One dense run above its seen-bigram (yet clearly below the unigram): every claim resting on dense
    becomes ``invalid`` with the run named, not ``inconclusive``; a claim not resting on it is unaffected."""
    uni = bundle.data.unigram_nats
    seen, full = uni - 0.5, uni - 0.7
    f = bundle.runs.frame
    good = _with_losses(bundle, [uni - 0.6] * len(f), seen, full)
    t = finedeep.validity_table(good)
    assert t["beats_bigram"].all() and not t["beats_full_bigram"].any() and t["learned"].all()
    assert finedeep.validity(good).ok
    assert all(c.verdict != "invalid" for c in finedeep.claims(cfg, good))
    bad_row = f.index[(f["variant"] == "dense") & (f["seed"] == cfg.seed)][0]
    losses = [uni - 0.3 if i == bad_row else uni - 0.6 for i in f.index]
    bad = _with_losses(bundle, losses, seen, full)
    assert finedeep.validity_table(bad)["learned"].all()  # (a) and (b) hold; only (c) fails
    cl = {c.claim_id: c for c in finedeep.claims(cfg, bad)}
    for cid in ("C0", "C1", "C2", "C3", "C6", "C7"):  # all rest on dense (C2, C6, C7 through the seed spread)
        assert cl[cid].verdict == "invalid", cid
        assert f"dense/seed {cfg.seed}" in cl[cid].evidence and "own training windows" in cl[cid].evidence
    assert cl["C4"].verdict == "reproduced"
    # a single-seed extreme above its bar: the depth-width claim is invalid, the dense-vs-(2,2) headline is not
    ext = f.index[f["variant"] == X.variant_name(*cfg.grid[0])][0]
    only_ext = _with_losses(bundle, [uni - 0.3 if i == ext else uni - 0.6 for i in f.index], seen, full)
    cl = {c.claim_id: c for c in finedeep.claims(cfg, only_ext)}
    assert cl["C2"].verdict == "invalid" and cl["C1"].verdict != "invalid"
    # a loss above ln V fails (a) even when it is "below" nothing else
    import math
    worse = _with_losses(bundle, [math.log(bundle.data.n_ids) + 1.0] * len(f), seen, full)
    assert not finedeep.validity_table(worse)["in_range"].any()
    assert all(c.verdict == "invalid" for c in finedeep.claims(cfg, worse) if c.claim_id in ("C1", "C3"))


# ------------------------------------------------------------------------- what NSAR reads; null cases


def test_nsar_reads_the_scored_intermediates_per_sub_layer():
    """``ffn_activations``: for Finedeep, ``product`` is exactly the ``ffn_hidden`` probe of each sub-layer (a before
    the score), ``scored`` is r·a with r the ``score`` probe, and ``silu`` times the up projection is the product; for
    r ≡ 1 and for dense, ``scored`` is the product. The RMS-relative threshold is taken per group (sub-layer)."""
    torch.manual_seed(0)
    ffn = M.FinedeepFFN(16, 32, 2, 2)
    for sub in ffn.sub:
        torch.nn.init.normal_(sub.router.weight, std=1.0)  # scores far from 0.5: r·a differs from a
    h = torch.randn(1, 10, 16)
    with capture(ffn, ["ffn_hidden", "score"]) as rec:
        ffn(h)
    acts = M.ffn_activations(ffn, h.reshape(-1, 16))
    probes = {k: v[0] for k, v in rec.data.items()}
    hidden = [probes[k] for k in sorted(probes) if k.endswith("ffn_hidden")]
    score = [probes[k] for k in sorted(probes) if k.endswith("score")]
    assert len(acts["product"]) == len(hidden) == 2
    for j in range(2):
        a, r = hidden[j].reshape(10, 2, 8), score[j]  # T, K, f = D / (M K)
        assert torch.allclose(acts["product"][j], hidden[j].reshape(10, -1))
        assert torch.allclose(acts["scored"][j], (a * r[..., None]).reshape(10, -1))
        assert not torch.allclose(acts["scored"][j], acts["product"][j])
        assert torch.allclose(acts["score"][j], r)
    none = M.FinedeepFFN(16, 32, 2, 2, score="none")
    got = M.ffn_activations(none, h.reshape(-1, 16))
    assert all(torch.equal(x, y) for x, y in zip(got["scored"], got["product"])) and got["score"] == []
    dense = SwiGLU(16, 32)
    got = M.ffn_activations(dense, h.reshape(-1, 16))
    with capture(dense, ["ffn_hidden"]) as rec:
        dense(h)
    assert torch.allclose(got["product"][0], next(iter(rec.data.values()))[0].reshape(10, -1))
    assert got["scored"][0] is got["product"][0]
    # per-group RMS: a group 100x larger does not set the other group's threshold
    small, big = torch.tensor([0.0, 0.01, 0.02, 0.03]), torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert M.nsar([small, big], 0.5, relative=True) == (M.nsar(small, 0.5, True) + M.nsar(big, 0.5, True)) / 2
    assert M.nsar([small, big], 0.5, relative=True) > M.nsar(torch.cat([small, big]), 0.5, relative=True)


def test_c3_is_mixed_when_another_tensor_points_the_other_way(cfg, bundle):
    """C3's tensor rule: the pre-registered tensor says Finedeep raises NSAR at both thresholds (reproduced), the
    product says it lowers it at both (not_reproduced): the claim is inconclusive, the flip named; with every tensor
    agreeing it is reproduced."""
    b = bundle
    f = b.activations.nsar.copy()
    dec = X.variant_name(*cfg.deciding, cfg.score)
    up = (f["variant"] == dec) & (f["state"] == "trained")
    seeds = {s: 0.001 * s for s in f["seed"].unique()}
    base = 0.3 + f["seed"].map(seeds)
    f["nsar"] = np.where(f["variant"] == "dense", 0.3, base)
    f.loc[up, "nsar"] = 0.5 + f.loc[up, "seed"].map(seeds)
    agree = Bundle({**b._values, "activations": dataclasses.replace(b.activations, nsar=f.copy())}, b.seconds)
    flip = f.copy()
    flip.loc[up & (flip["tensor"] == "product"), "nsar"] = 0.1 + flip.loc[up & (flip["tensor"] == "product"), "seed"].map(seeds)
    flipped = Bundle({**b._values, "activations": dataclasses.replace(b.activations, nsar=flip)}, b.seconds)
    ok = lambda bb: {c.claim_id: c for c in finedeep.claims(cfg, bb)}["C3"]
    good = _with_losses(agree, [agree.data.unigram_nats - 0.6] * len(b.runs.frame), agree.data.unigram_nats - 0.5,
                        agree.data.unigram_nats - 0.7)
    bad = _with_losses(flipped, [agree.data.unigram_nats - 0.6] * len(b.runs.frame), agree.data.unigram_nats - 0.5,
                       agree.data.unigram_nats - 0.7)
    assert ok(good).verdict == "reproduced"
    c = ok(bad)
    assert c.verdict == "inconclusive" and "mixed across tensors (product" in c.evidence


def test_null_comparisons_are_never_reproduced(cfg, bundle):
    """Identical arms (every gap 0, every bootstrap replicate 0, every seed gap 0) give no ``reproduced`` comparison
    claim (C1, C2, C6, C7) and no NSAR claim (C0, C3) on identical activations; a failed mechanism check makes every
    model claim ``invalid``."""
    b = _with_losses(bundle, [bundle.data.unigram_nats - 0.6] * len(bundle.runs.frame),
                     bundle.data.unigram_nats - 0.5, bundle.data.unigram_nats - 0.7)
    comp = b.comparisons
    zero = dataclasses.replace(comp, frame=comp.frame.assign(gap=0.0, ci_lo=0.0, ci_hi=0.0),
                               boot={k: np.zeros_like(v) for k, v in comp.boot.items()},
                               per_seed={k: [0.0] * len(v) for k, v in comp.per_seed.items()},
                               depth_width_boot=np.zeros_like(comp.depth_width_boot))
    f = b.activations.nsar.assign(nsar=0.4)
    null = Bundle({**b._values, "comparisons": zero,
                   "activations": dataclasses.replace(b.activations, nsar=f)}, b.seconds)
    cl = {c.claim_id: c for c in finedeep.claims(cfg, null)}
    for cid in ("C0", "C1", "C2", "C3", "C6", "C7"):
        assert cl[cid].verdict == "inconclusive", (cid, cl[cid].verdict)
    broken = b.mechanism.copy()
    broken.loc[0, "ok"] = False
    cl = finedeep.claims(cfg, Bundle({**b._values, "mechanism": broken}, b.seconds))
    assert all(c.verdict == "invalid" for c in cl if c.claim_id != "C4")
    assert "mechanism checks failed" in cl[1].evidence


def test_nsar_mean_abs_threshold_and_scale_invariance():
    """The mean-|a|-relative threshold: exact on a known tensor, per group, and invariant to rescaling (C0's
    comparison with initialisation must not move when every activation is multiplied by a constant)."""
    a = torch.tensor([0.0, 0.1, 0.2, 1.0])  # mean |a| = 0.325
    assert M.nsar(a, 1.0, relative="mean_abs") == 0.25 and M.nsar(a, 0.5, relative="mean_abs") == 0.5
    for rel in ("rms", "mean_abs"):
        assert M.nsar([a, 3 * a], 0.5, relative=rel) == M.nsar([7 * a, a / 9], 0.5, relative=rel)


def _bundle_with(b, **changes):
    return Bundle({**b._values, **changes}, b.seconds)


def test_c2_takes_the_extreme_closest_to_the_deciding_arm(cfg, bundle):
    """C2 needs the deciding (M, K) to beat *both* extremes: its value is the smaller of the two gaps (min, not max),
    and its drift check reads that extreme's comparison."""
    b = _with_losses(bundle, [bundle.data.unigram_nats - 0.6] * len(bundle.runs.frame),
                     bundle.data.unigram_nats - 0.5, bundle.data.unigram_nats - 0.7)
    comp = b.comparisons
    dec = X.variant_name(*cfg.deciding, cfg.score)
    lo, hi = (f"{X.variant_name(*g, cfg.score)} - {dec}" for g in (cfg.grid[0], cfg.grid[-1]))
    frame = comp.frame.copy()
    frame.loc[frame["comparison"] == lo, "gap"] = 0.30
    frame.loc[frame["comparison"] == hi, "gap"] = -0.20
    c2 = {c.claim_id: c for c in finedeep.claims(cfg, _bundle_with(b, comparisons=dataclasses.replace(
        comp, frame=frame)))}["C2"]
    assert c2.ours_value == pytest.approx(-0.20)
    assert hi in c2.ours_ci or "gap trend: not measured" in c2.ours_ci


def test_noisy_null_and_converging_gaps_are_not_decided(cfg, bundle):
    """A noisy null (seed gaps ±0.01 around 0, activation gaps ±0.01) gives no decided verdict; a decided gap that is
    still closing at the end of training (drift towards 0 larger than the seed spread) becomes inconclusive, one that
    widens keeps its verdict."""
    b = _with_losses(bundle, [bundle.data.unigram_nats - 0.6] * len(bundle.runs.frame),
                     bundle.data.unigram_nats - 0.5, bundle.data.unigram_nats - 0.7)
    comp = b.comparisons
    noisy = dataclasses.replace(comp, per_seed={k: list(np.resize([0.01, -0.012, 0.003], len(v)))
                                                for k, v in comp.per_seed.items()})
    f = b.activations.nsar.copy()
    f["nsar"] = 0.4 + 0.01 * np.sin(np.arange(len(f)))
    cl = {c.claim_id: c for c in finedeep.claims(cfg, _bundle_with(
        b, comparisons=noisy, activations=dataclasses.replace(b.activations, nsar=f)))}
    for cid in ("C0", "C1", "C3"):
        assert cl[cid].verdict == "inconclusive", (cid, cl[cid].verdict)
    # C1 decided against the paper; its held-out gap closing by +0.012 a stretch (+0.06 over one more run length)
    # would no longer pass the rule: still converging; widening, or a drift the seeds cannot tell from 0, keeps it
    dec = X.variant_name(*cfg.deciding, cfg.score)
    name = f"dense - {dec}"
    W = len(b.data.windows)
    gaps = {**comp.per_seed, name: [-0.05, -0.055, -0.06]}

    def c1(drift_rows):
        c = dataclasses.replace(comp, per_seed=gaps, drift={**comp.drift, name: drift_rows})
        return {c.claim_id: c for c in finedeep.claims(cfg, _bundle_with(b, comparisons=c))}["C1"]

    assert c1(None).verdict == "not_reproduced" and "gap trend: not measured" in c1(None).ours_ci
    closing = c1([np.full(W, x) for x in (0.011, 0.012, 0.013)])
    assert closing.verdict == "inconclusive" and "still converging" in closing.ours_ci
    assert c1([np.full(W, x) for x in (-0.011, -0.012, -0.013)]).verdict == "not_reproduced"  # widening
    assert c1([np.full(W, x) for x in (0.05, -0.03, 0.02)]).verdict == "not_reproduced"  # seeds disagree
