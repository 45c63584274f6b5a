"""CartesianMoE replication (replicate/papers/cartesian_moe/): the Cartesian product layer against the explicit sum over
the composite experts it implies (float64), exactly k distinct experts per sub-layer, the top-1-disabled protocol
(routing only, renormalised, per sub-layer), the budget table asserted by the parameter counter, the shared-expert
mixing option (gate | add), the Fine-grained shared expert as ½(S1 + S2), null cases of every claim rule, and the
whole plan at ``smoke`` (every artifact, the validity policy)."""

import contextlib
import dataclasses
import math
import pickle

import numpy as np
import pytest
import torch

from replicate.config import ConfigError
from replicate.experiments import Bundle
from replicate.models.decoder import Decoder
from replicate.models.ffn import build_ffn
from replicate.moe import MoE, check_budgets, param_counts
from replicate.papers import cartesian_moe, resolve_config
from replicate.papers.cartesian_moe import experiments as X
from replicate.papers.cartesian_moe import method as M
from replicate.papers.cartesian_moe import report as R

PAPER = "cartesian_moe"  # the shared fixtures (conftest.py): env, cfg = its smoke config


class _Ctx:
    token_ids_BT = None


def _layer(variant="cartesian", d=16, D=24, N=5, mix="gate", seed=0):
    torch.manual_seed(seed)
    spec = M.variant_layer(variant, D, N, shared_mix=mix)
    layer = build_ffn(spec.ffn, d_model=d, d_ff=spec.d_ff, **dict(spec.ffn_kwargs)).double()
    for m in layer.modules():  # move the gates off their zero init and the norms off 1, so they matter
        if isinstance(m, MoE) and m.shared_gate is not None:
            torch.nn.init.normal_(m.shared_gate.weight, std=0.5)
            torch.nn.init.normal_(m.shared_gate.bias, std=0.5)
    for s in layer.sub:
        torch.nn.init.normal_(s.norm.weight, 1.0, 0.3)
    return layer


def _routes(layer, x):
    """Top-k ids per sub-layer from the shared routers, in the layer's own forward."""
    from replicate.models.probes import capture

    with capture(layer, ["router"]) as rec:
        layer(x, _Ctx())
    return [v[0] for _, v in sorted(rec.data.items())]


# ------------------------------------------------------------------------------------------------- config


def test_scales_and_unconfirmed_choices():
    small = resolve_config(PAPER, "small")
    assert (small.shared_mix, small.disable_top1_in, small.hash_kind) == ("gate", "both", "random")
    assert small.n_seeds == 3 and small.n_seeds_baselines == 1 and not small.run_no_shared
    assert (small.workers, small.threads) == (2, 1)
    assert set(small.variants) == set(cartesian_moe.VARIANTS)
    assert resolve_config(PAPER, "smoke").run_no_shared and cartesian_moe.CartesianMoEConfig.paper().run_no_shared
    for mix in cartesian_moe.SHARED_MIXES:
        assert resolve_config(PAPER, "smoke", shared_mix=mix).shared_mix == mix
    with pytest.raises(ConfigError, match="shared_mix"):
        resolve_config(PAPER, "smoke", shared_mix="sum")
    with pytest.raises(ConfigError, match="disable_top1_in"):
        resolve_config(PAPER, "smoke", disable_top1_in="C")
    with pytest.raises(ConfigError, match="variants"):
        resolve_config(PAPER, "smoke", variants=("dense", "smoe_share"))  # the deciding pair is required
    with pytest.raises(ConfigError, match="d_ff"):
        resolve_config(PAPER, "smoke", d_ff=33)


# --------------------------------------------------------------------------------------- the product layer


@pytest.mark.parametrize("mix", ["gate", "add"])
@pytest.mark.parametrize("where", [None, "A", "B", "both"])
def test_layer_equals_the_explicit_sum_over_composite_experts(mix, where):
    """float64: y = Σ_{i,j} w^A_i w^B_j P_ij over the N x N composite experts, exactly k_A k_B = 4 of them weighted,
    weights summing to 1 (fp32 router and norm inside the layer: tolerance 1e-6)."""
    layer = _layer(mix=mix)
    x = torch.randn(1, 50, 16, dtype=torch.float64)
    with M.disable_top1(layer, where) if where else contextlib.nullcontext():
        y = layer(x, _Ctx())[0][0]
    ref, W = M.product_reference(layer, x[0], where)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)
    assert ((W > 0).sum((1, 2)) == 4).all()
    torch.testing.assert_close(W.sum((1, 2)), torch.ones(50, dtype=W.dtype))
    assert (layer.sub[0].ffn.shared_gate is None) == (mix == "add")


def test_the_oracle_can_fail():
    """The check has power: the same layer with the sub-layers swapped, or with sub-layer B routed on u_A (a parallel
    product instead of a sequential one), differs from the oracle by far more than the tolerance."""
    layer = _layer()
    x = torch.randn(1, 50, 16, dtype=torch.float64)
    ref, _ = M.product_reference(layer, x[0])
    swapped = _layer()
    swapped.sub = torch.nn.ModuleList([layer.sub[1], layer.sub[0]])
    with torch.no_grad():
        assert float((swapped(x, _Ctx())[0][0] - ref).abs().max()) > 1e-3
    # parallel: both sub-layers read the same normed input of x
    A, B = layer.sub
    parallel = x + A.ffn(A.norm(x))[0] + B.ffn(B.norm(x))[0]
    assert float((parallel[0] - ref).abs().max()) > 1e-3


@pytest.mark.parametrize("variant,k", [("cartesian", 2), ("cartesian_noshared", 3)])
def test_each_sublayer_picks_exactly_k_distinct_experts(variant, k):
    layer = _layer(variant)
    x = torch.randn(2, 40, 16, dtype=torch.float64)
    for where in (None, "A", "B", "both"):
        with M.disable_top1(layer, where) if where else contextlib.nullcontext():
            idx = _routes(layer, x)
        assert len(idx) == 2
        for t in idx:
            assert t.shape[1] == k and (t >= 0).all()
            assert all(len(set(row.tolist())) == k for row in t)


def test_disabling_top1_changes_only_the_routing_per_sublayer():
    """Disable in A: A's experts become ranks 2..k+1 of its normal logits, renormalised; no weight changes; only A's
    flag is set (and restored); B still routes by its own rule on the (changed) u_B. Same for B and both."""
    layer = _layer()
    x = torch.randn(1, 30, 16, dtype=torch.float64)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    A, B = (s.ffn.router for s in layer.sub)
    assert M.routers(layer, "A") == [A] and M.routers(layer, "B") == [B] and M.routers(layer, "both") == [A, B]
    uA = layer.sub[0].norm(x[0])
    order = torch.argsort(A.logits(uA), -1, descending=True)
    normal = _routes(layer, x)
    for where, changed in (("A", (True, None)), ("B", (False, True)), ("both", (True, True))):
        with M.disable_top1(layer, where) as rs:
            assert [r.disable_top1 for r in (A, B)] == [r in rs for r in (A, B)]
            idx = _routes(layer, x)
            r = A(uA)
        assert not A.disable_top1 and not B.disable_top1  # restored
        if where in ("A", "both"):
            assert torch.equal(torch.sort(idx[0], -1).values, torch.sort(order[:, 1:3], -1).values)
            torch.testing.assert_close(r.topk_w_TK.sum(-1), torch.ones(30))
            p = torch.softmax(A.logits(uA), -1)
            sel = p.gather(1, order[:, 1:3])
            torch.testing.assert_close(torch.sort(r.topk_w_TK, -1).values, torch.sort(sel / sel.sum(-1, keepdim=True), -1).values)
        else:
            assert torch.equal(idx[0], normal[0])  # A untouched when only B is disabled
        if where == "B":
            uB_routes = idx[1]
            assert not (torch.sort(uB_routes, -1).values == torch.sort(normal[1], -1).values).all(-1).any()
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())


def test_routers_of_a_plain_moe_and_hash_are_excluded():
    moe = build_ffn("moe", d_model=8, d_ff=4, n_experts=4, k=2)
    assert M.routers(moe, "A") == [moe.router]  # one sub-layer: every value of disable_top1_in disables it
    h = build_ffn("moe", d_model=8, d_ff=4, n_experts=4, k=2, router="hash", vocab_size=10)
    assert M.routers(h) == []
    with pytest.raises(ValueError, match="disable_top1_in"):
        M.routers(moe, "C")


def test_fine_grained_shared_expert_is_the_mean_of_two_half_experts():
    spec = M.variant_layer("fine_grained", 24, 5)
    layer = build_ffn(spec.ffn, d_model=16, d_ff=spec.d_ff, **dict(spec.ffn_kwargs))
    assert layer.shared_scale == 0.5 and layer.shared.gate_proj.weight.shape[0] == 24
    assert layer.n_experts == 10 and layer.router.k == 4 and layer.experts.d_expert == 12


# ------------------------------------------------------------------------------------------------- budgets


def test_budget_table_at_small_and_the_counter_rejects_a_mismatch():
    """Every MoE layer: total width (N+1)·D; active 3·D (SMoE-Top3 3·D·(N+1)/N; TopP dynamic); MoE-layer
    parameters within 0.5% (spec §3.4); a wrong width is caught by the counter."""
    cfg = resolve_config(PAPER, "small")
    D, N = cfg.d_ff, cfg.n_experts
    counts = {}
    for v in cartesian_moe.VARIANTS[1:] + ("cartesian_noshared",):
        model = Decoder(X.model_config(cfg, 1024, v, 0))
        ffn = model.layers[cfg.moe_layers[0]].ffn
        total, active = M.ffn_widths(ffn)
        assert total == (N + 1) * D, v
        if v == "smoe_top3":
            assert active == 3 * D * (N + 1) / N
        elif v != "topp":
            assert active == 3 * D, v
        block = model.layers[cfg.moe_layers[0]]
        norms = block.ffn_norm.weight.numel() if block.ffn_norm is not None else 0
        c = param_counts(ffn)
        counts[v] = c._replace(total=c.total + norms)
    check_budgets({"smoe_share": counts["smoe_share"], **counts}, field="total", rtol=0.005)
    dense = Decoder(X.model_config(cfg, 1024, "dense", 0))
    assert M.ffn_widths(dense.layers[1].ffn) == (D, float(D))
    bad = dataclasses.replace(cfg, d_ff=cfg.d_ff)  # a variant with the wrong expert width must fail the counter
    wrong = build_ffn("moe", d_model=cfg.d_model, d_ff=D + 64, n_experts=N, k=2, d_shared=D)
    with pytest.raises(ValueError, match="total parameters differ"):
        check_budgets({"smoe_share": counts["smoe_share"], "wrong": param_counts(wrong)}, field="total", rtol=0.005)
    assert bad.d_ff == D


# ------------------------------------------------------------------------------------- claim rules: null cases


def test_claim_rules_reject_null_cases():
    from replicate import claims as C

    c = C.seed_gap_claim("C1", "x", [0.0, 0.0, 0.0], metric="m", need=True)  # identical arms
    assert c.verdict == "inconclusive"
    c = C.seed_gap_claim("C1", "x", [0.01, -0.01, 0.005], metric="m", need=True)  # noise around zero
    assert c.verdict == "inconclusive" and "paired seeds" in c.ours_ci
    c = C.single_seed_gap_claim("C2", "x", 0.0, np.zeros(100), [0.01, -0.01, 0.0], metric="m", what="w")
    assert c.verdict == "inconclusive"
    c = C.seed_gap_claim("C1", "x", [0.05, 0.06, 0.055], metric="m")
    assert c.verdict == "reproduced"


# ------------------------------------------------------------------------------------------------ the plan


@pytest.fixture(scope="module")
def bundle(env, cfg):
    return cartesian_moe.run_experiments(cfg)


def test_plan_at_smoke(cfg, bundle, tmp_path):
    b = bundle
    assert b.mechanism["ok"].all(), b.mechanism[~b.mechanism["ok"]]
    n_runs = sum(len(s) for _, s in X.arms(cfg))
    assert len(X.final_frame(b.runs)) == n_runs
    for t in (R.table1(b), R.table2(b), R.table3(b), R.table4(b), R.table5(b)):
        assert set(t["source"]) == {"paper", "ours"}
    t4 = R.table4(b)
    ours = t4[t4["source"] == "ours"]
    assert set(ours[ours["variant"] == "CartesianMoE"]["disabled_in"]) == {"A", "B", "both"}
    assert "Hash Layer" not in set(ours["variant"])
    cl = cartesian_moe.claims(cfg, b)
    assert [c.claim_id for c in cl] == ["C1", "C2", "C3", "C4", "C4p", "C5", "C5b", "C6", "C7", "C8"]
    by = {c.claim_id: c for c in cl}
    assert by["C4"].verdict == by["C6"].verdict == "not_run"
    assert b.mechanism["ok"].all()  # a validity condition of every model claim (extra_mechanism), not a claim
    v = R.validity(b)
    for c in cl:
        if c.claim_id not in ("C4", "C6") and not v.ok:  # six smoke steps learn nothing: said so
            assert c.verdict == "invalid" and "validity check failed" in c.evidence
    for fig in (R.fig4(b), R.fig_robustness(b)):
        fig.savefig(tmp_path / "f.png")
    assert "Closing note" in R.closing_note(cfg, b)


def test_run_calls_are_picklable_and_cover_every_run(cfg, bundle):
    calls = X.run_calls(cfg, bundle.data)
    f = X.final_frame(bundle.runs)
    assert [k for k, _ in calls] == list(zip(f["variant"], f["seed"]))
    for _, c in calls:
        assert pickle.loads(pickle.dumps(c)).func is X.train_variant


def test_table4_at_small_does_not_include_claims_without_runs(cfg, bundle):
    """Without the ablation run (small), Table 3's claims are not_run with the reason, never invented."""
    small_like = dataclasses.replace(cfg, run_no_shared=False)
    cl = {c.claim_id: c for c in cartesian_moe.claims(small_like, bundle)}
    assert cl["C7"].verdict == cl["C8"].verdict == "not_run" and "run_no_shared" in cl["C7"].evidence


def _with_losses(b: Bundle, loss, seen: float, full: float) -> Bundle:
    runs = dataclasses.replace(b.runs, frame=b.runs.frame.assign(loss=loss))
    data = dataclasses.replace(b.data, seen_bigram_nats={s: seen for s in b.data.seen_bigram_nats}, bigram_nats=full)
    return Bundle({**b._values, "runs": runs, "data": data}, b.seconds)


def test_a_run_above_its_bigram_makes_the_claims_resting_on_it_invalid(cfg, bundle):
    uni = bundle.data.unigram_nats
    f = bundle.runs.frame
    good = _with_losses(bundle, [uni - 0.6] * len(f), uni - 0.5, uni - 0.7)
    assert R.validity(good).ok
    assert all(c.verdict != "invalid" for c in cartesian_moe.claims(cfg, good))
    bad_rows = (f["variant"] == "smoe_share") & f["final"]
    bad = _with_losses(bundle, np.where(bad_rows, uni - 0.3, uni - 0.6), uni - 0.5, uni - 0.7)
    cl = {c.claim_id: c for c in cartesian_moe.claims(cfg, bad)}
    assert cl["C2"].verdict == cl["C3"].verdict == cl["C5b"].verdict == "invalid"
    assert "smoe_share/seed 0" in cl["C2"].evidence
    assert cl["C1"].verdict != "invalid"  # C1 rests on the deciding pair only
    worse = _with_losses(bundle, [math.log(bundle.data.n_ids) + 1.0] * len(f), uni - 0.5, uni - 0.7)
    assert all(c.verdict == "invalid" for c in cartesian_moe.claims(cfg, worse) if c.claim_id in ("C1", "C5"))


def test_robustness_is_judged_at_the_preregistered_protocol_only(cfg, bundle):
    """C5 is judged with the top-1 disabled in ``disable_top1_in`` (both); the other protocols (A, B) are weaker
    interventions than the baselines get and are shown beside it, not judged: one pointing the other way leaves the
    verdict as it is (after the referee audit; they were second metrics, 'mixed', before)."""
    uni = bundle.data.unigram_nats
    ok = _with_losses(bundle, [uni - 0.6] * len(bundle.runs.frame), uni - 0.5, uni - 0.7)

    def with_gaps(**g):
        per_seed = dict(ok.comparisons.per_seed)
        for w, gaps in g.items():
            per_seed[(f"degradation{'' if w == 'main' else '@' + w}", "fine_grained - cartesian")] = gaps
        comp = dataclasses.replace(ok.comparisons, per_seed=per_seed)
        return Bundle({**ok._values, "comparisons": comp}, ok.seconds)

    up, down = [0.05, 0.06, 0.055], [-0.05, -0.06, -0.055]
    agree = {c.claim_id: c for c in cartesian_moe.claims(cfg, with_gaps(main=up, A=up, B=up, both=up))}
    assert agree["C5"].verdict == "reproduced"
    c5 = {c.claim_id: c for c in cartesian_moe.claims(cfg, with_gaps(main=up, A=down, B=up, both=up))}["C5"]
    assert c5.verdict == "reproduced" and "shown, not judged: top-1 disabled in A instead: gap -0.0550 " \
        "(not_reproduced)" in c5.ours_ci
    against = {c.claim_id: c for c in cartesian_moe.claims(cfg, with_gaps(main=down, A=up, B=up, both=down))}["C5"]
    assert against.verdict == "not_reproduced"


def test_an_all_of_claim_is_refuted_by_any_one_decided_comparison(cfg, bundle):
    """C2 ("beats every other MoE baseline") is judged on the smallest gap; where that one stays open (here: its
    held-out gap still closing), another baseline decided against CartesianMoE on its own refutes the claim."""
    uni = bundle.data.unigram_nats
    ok = _with_losses(bundle, [uni - 0.6] * len(bundle.runs.frame), uni - 0.5, uni - 0.7)
    comp = ok.comparisons
    frame, boot = comp.frame.copy(), dict(comp.boot)
    W = len(ok.data.windows)
    per_seed = {**comp.per_seed, ("loss", "fine_grained - cartesian"): [0.001, 0.002, 0.0015]}  # seed std 0.0005
    drift = dict(comp.drift)
    gaps = {"smoe_share - cartesian": -0.06, "smoe_top3 - cartesian": -0.03, "hash - cartesian": 0.02,
            "topp - cartesian": 0.02}
    for name, gap in gaps.items():
        frame.loc[(frame["metric"] == "loss") & (frame["comparison"] == name), "gap"] = gap
        boot[("loss", name)] = np.full(200, gap) + np.linspace(-1e-3, 1e-3, 200)
        drift[name] = [np.full(W, 0.0)]
    drift["smoe_share - cartesian"] = [np.full(W, 0.02)]  # the smallest gap closes fast: +0.1 over one more run
    b = Bundle({**ok._values, "comparisons": dataclasses.replace(comp, frame=frame, boot=boot, per_seed=per_seed,
                                                                 drift=drift)}, ok.seconds)
    c2 = {c.claim_id: c for c in cartesian_moe.claims(cfg, b)}["C2"]
    assert c2.verdict == "not_reproduced" and "refuted by smoe_top3 - cartesian" in c2.evidence
    drift["smoe_top3 - cartesian"] = [np.full(W, 0.02)]  # now every decided comparison is still converging
    b = Bundle({**ok._values, "comparisons": dataclasses.replace(comp, frame=frame, boot=boot, per_seed=per_seed,
                                                                 drift=drift)}, ok.seconds)
    assert {c.claim_id: c for c in cartesian_moe.claims(cfg, b)}["C2"].verdict == "inconclusive"
