"""UniAttn replication (replicate/papers/uniattn/): the paper's mechanism -- with no member layers and a zero
compensation the model is the base model bit for bit; a member with W_c = 0 is exactly softmax sharing; after the
closed-form init the calibration residual is no larger than with W_c = 0 (per member, in depth order); members hold
no W_q / W_k and store no K; gradients reach the leader's W_q from a member's loss alone; stage 1 trains only W_c;
the KV-cache decoder's cached path equals the full recompute for every arm; the paper's two-stage protocol keeps
UniAttn's stage 2 on FT's batches step by step, every exposure-matched arm (FT-2x, <baseline>2x) reads exactly the
batches UniAttn's two stages read, and the held-out convergence check pairs the arms at the same batch -- and the whole
plan at ``smoke``: its artifacts, its validity policy and verdict rules that can fail (one smallest effect of interest,
the horizon against the decision bar, C1 over the FT seeds and the whole depth, C2 on the softmax alone, C7 at the
recipe level with its schedule-matched contrast, what the closing note says would settle each open claim)."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from replicate.claims import Validity
from replicate.config import ConfigError
from replicate.experiments import Bundle
from replicate.models import convert
from replicate.models.decoder import Decoder, DecoderConfig
from replicate.models.generate import KVCache
from replicate.papers import resolve_config, uniattn
from replicate.papers.uniattn import experiments as X
import replicate.papers.uniattn.method as M
from replicate.papers.uniattn import report as R

PAPER = "uniattn"
BASE = DecoderConfig(vocab_size=61, d_model=32, n_layers=6, n_heads=4, d_ff=48, max_seq_len=64)


def _trained_like(cfg=BASE, seed=0) -> Decoder:
    """A base model with non-trivial weights (a stand-in for a trained one: larger init std)."""
    torch.manual_seed(seed)
    return Decoder(dataclasses.replace(cfg, init_std=0.2)).eval()


def _unified(base: Decoder, members: dict, compensation=True) -> Decoder:
    uni = Decoder(M.unified_config(base.cfg, members, compensation)).eval()
    uni.load_state_dict(convert.attention_state(base.state_dict(), uni))
    return uni


# ------------------------------------------------------------------------------------------------- config


def test_scales_and_unconfirmed_choices(cfg):
    small = resolve_config(PAPER, "small")
    assert (small.group_size, small.begin, small.end, small.n_layers) == (4, 4, 8, 8)  # 3 of 8 layers unified
    assert (small.init, small.two_stage, small.cla_group, small.llmdrop_count) == ("lstsq_tokens", True, "uniattn", 0)
    assert small.n_seeds >= 3 and (small.workers, small.threads) == (2, 1)
    # at small: the ablation arms that decide a claim (C9, C10), all at the deciding arms' steps
    assert set(small.ablations) == {"uniattn_gqa", "uniattn_1stage"} and small.sft_steps >= 160
    assert set(cfg.ablations) == set(uniattn.ABLATIONS) and cfg.n_seeds >= 2  # every path at smoke, a seed spread
    assert set(uniattn.UniAttnConfig.paper().ablations) == set(uniattn.ABLATIONS)
    # the paper's protocol (spec §3.5) at every scale: one W_c-only stage as long as the full one; every compared
    # baseline also gets UniAttn's data exposure (post-audit B1), and C4, C5, C7, C10 are judged against it
    for c in (cfg, small, uniattn.UniAttnConfig.paper()):
        assert c.stage_protocol == "paper" and c.s1 == c.sft_steps
        assert set(c.matched_arms) == set(uniattn.MATCHABLE) and c.judge_exposure == "matched"
        assert c.matched_schedule == "restart" and c.min_effect == 0.03 and c.softmax_share_def == "alone"
        assert c.horizon_bar == "decision" and c.sim_full_depth
        assert [X.judged_arm(c, a) for a in ("cla", "llmdrop", "softmax", "gqa")] == ["cla2x", "llmdrop2x",
                                                                                     "softmax2x", "gqa2x"]
    assert cfg.ft2x_seeds >= 1 and "ft2x" in X.arms(cfg)
    every = ["ft", "ft2x", "softmax", "softmax2x", "uniattn", "cla", "cla2x", "llmdrop", "llmdrop2x", "gqa", "gqa2x"]
    assert X.arms(resolve_config(PAPER, "smoke", ablations=())) == every
    assert X.arms(resolve_config(PAPER, "smoke", ablations=(), stage_protocol="step_matched")) == list(X.MAIN)
    assert X.arms(resolve_config(PAPER, "smoke", ablations=(), ft2x_seeds=0, matched_arms=())) == list(X.MAIN)
    one = resolve_config(PAPER, "smoke", ablations=(), matched_arms=("cla",), judge_exposure="one_pass")
    assert "cla2x" in X.arms(one) and "gqa2x" not in X.arms(one) and X.judged_arm(one, "cla") == "cla"
    assert X.judged_arm(resolve_config(PAPER, "smoke", matched_arms=("cla",)), "gqa") == "gqa"  # not trained: 1 pass
    with pytest.raises(ConfigError, match="matched_arms"):
        resolve_config(PAPER, "smoke", matched_arms=("uniattn",))
    # the workload counts the matched arms' second passes (restart: the first is the one-pass arm's own run)
    extra = {r.name: r for r in small.workload()}["exposure-matched passes (FT-2x, <arm>2x)"]
    assert (extra.steps, extra.count) == (small.sft_steps, small.ft2x_seeds + len(small.matched_arms))
    single = {r.name: r for r in dataclasses.replace(small, matched_schedule="single").workload()}
    assert single["exposure-matched passes (FT-2x, <arm>2x)"].steps == 2 * small.sft_steps
    with pytest.raises(ConfigError, match=r"^parameter 'stage_protocol': must be one of 'paper' \| 'step_matched', "
                                          r"got 'epochs'$"):
        resolve_config(PAPER, "smoke", stage_protocol="epochs")
    with pytest.raises(ConfigError, match="stage1_steps"):
        resolve_config(PAPER, "smoke", stage1_steps=-1)
    with pytest.raises(ConfigError, match="ablations"):
        resolve_config(PAPER, "smoke", ablations=("uniattn_random",))
    with pytest.raises(ConfigError, match="ablations"):
        resolve_config(PAPER, "smoke", ablations=("uniattn_zero", "uniattn_zero"))
    for init in uniattn.INITS:
        assert resolve_config(PAPER, "smoke", init=init).init == init
    with pytest.raises(ConfigError, match="gqa_kv_heads"):
        resolve_config(PAPER, "smoke", gqa_kv_heads=3)
    with pytest.raises(ConfigError, match="init"):
        resolve_config(PAPER, "smoke", init="random")
    with pytest.raises(ConfigError, match="group_begin"):
        resolve_config(PAPER, "smoke", group_begin=3)  # leaves no member before group_end = 4
    p = uniattn.UniAttnConfig.paper()
    assert p.n_layers >= 12 and p.accelerator == "auto" and p.n_heads % p.gqa_kv_heads == 0


def test_superblocks_follow_one_leader_rule():
    assert M.superblocks(32, 4, 16, 32) == {l: l - (l - 16) % 4 for l in range(16, 32) if (l - 16) % 4}
    assert len(M.superblocks(32, 4, 16, 32)) == 12  # the code's LLaMA-3.1 default: 12 members
    assert M.superblocks(8, 4, 4, 8) == {5: 4, 6: 4, 7: 4}
    assert M.superblocks(8, 3, 1, 8) == {2: 1, 3: 1, 5: 4, 6: 4}  # begin not aligned to G: (l - begin) % G
    assert M.superblocks(8, 1, 0, 8) == {}  # G = 1: no members
    with pytest.raises(ValueError, match="begin"):
        M.superblocks(8, 4, 6, 4)


# ---------------------------------------------------------------------------------------------- mechanism


def test_no_members_and_zero_compensation_is_the_base_model_bit_for_bit():
    base = _trained_like()
    ids = torch.randint(0, 61, (3, 20))
    same = _unified(base, M.superblocks(6, 1, 3, 6))  # G = 1: no member layer
    assert torch.equal(same(ids).logits, base(ids).logits)
    # and a member with W_c = 0 computes exactly softmax sharing without compensation
    members = M.superblocks(6, 3, 3, 6)
    with_c, without = _unified(base, members), _unified(base, members, compensation=False)
    assert all(float(with_c.layers[m].attn.comp_proj.weight.detach().abs().max()) == 0 for m in members)
    assert torch.equal(with_c(ids).logits, without(ids).logits)
    assert not torch.allclose(with_c(ids).logits, base(ids).logits)  # sharing does change the model


@pytest.mark.parametrize("mode", ["paper_mean", "lstsq_tokens"])
def test_closed_form_init_leaves_no_larger_residual_than_zero(mode):
    base = _trained_like()
    members = M.superblocks(6, 3, 3, 6)  # members 4, 5 after leader 3
    uni = _unified(base, members)
    ids = torch.randint(0, 61, (8, 24))
    mask = torch.ones(8, 24, dtype=torch.bool)
    mask[:3, 18:] = False  # padded tails: left out of the fit
    fit = M.fit_compensation(base, uni, ids, mask, mode)
    assert [f["layer"] for f in fit] == sorted(members)
    own = "residual" if mode == "lstsq_tokens" else "mean_residual"  # the objective each solves
    for f in fit:
        assert f[f"{own}_init"] <= f[f"{own}_zero"] * (1 + 1e-9) and f["w_norm"] > 0
    if mode == "lstsq_tokens":  # the least-squares guarantee, strictly better on trained weights
        assert all(f["residual_init"] < 0.9 * f["residual_zero"] for f in fit)
    # the fit is sequential: the second member's Δ is measured with the first member compensated
    uni0 = _unified(base, members)
    X0, h0 = M._stream(uni0, ids, 5)
    assert not torch.allclose(M._stream(uni, ids, 5)[0], X0)  # the first W_c changed what layer 5 sees


def test_solve_compensation_recovers_a_known_map_and_zero_mode():
    torch.manual_seed(0)
    X = torch.randn(16, 10, 6, dtype=torch.float64)
    W = torch.randn(6, 6, dtype=torch.float64)
    m = torch.ones(16, 10, dtype=torch.bool)
    torch.testing.assert_close(M.solve_compensation(X, X @ W, m, "lstsq_tokens", ridge=0.0), W)
    torch.testing.assert_close(M.solve_compensation(X, X @ W, m, "paper_mean"), W)  # 10 positions >= 6 columns
    assert float(M.solve_compensation(X, X @ W, m, "zero").abs().max()) == 0
    with pytest.raises(ValueError, match="init"):
        M.solve_compensation(X, X @ W, m, "svd")


def test_members_store_no_k_and_have_no_wq_wk_in_the_exported_model():
    base = _trained_like()
    members = M.superblocks(6, 3, 3, 6)
    uni = _unified(base, members)
    keys = set(uni.state_dict())
    for m in members:
        own = {k.split(f"layers.{m}.attn.")[1] for k in keys if k.startswith(f"layers.{m}.attn.")}
        assert own == {"v_proj.weight", "o_proj.weight", "comp_proj.weight"}  # no W_q, W_k (no fused qkv either)
    cache = KVCache(uni, 1, max_len=16)
    assert set(cache.k) == set(range(6)) - set(members) and set(cache.v) == set(range(6))
    full = KVCache(base, 1, max_len=16)
    assert cache.nbytes == full.nbytes * (2 * 6 - len(members)) // (2 * 6)
    ops_u, ops_b = M.decode_ops(uni, 100), M.decode_ops(base, 100)
    assert ops_u["qk_macs"] == ops_b["qk_macs"] * (6 - len(members)) // 6 and ops_u["pv_macs"] == ops_b["pv_macs"]
    # the parameter count: members lose W_q, W_k (2 d^2 for MHA) and gain W_c (d^2)
    d = BASE.d_model
    assert base.num_params() - uni.num_params() == len(members) * d * d


def test_gradients_reach_the_leaders_wq_from_member_losses():
    base = _trained_like()
    uni = _unified(base, {4: 3, 5: 3}).train()
    with torch.no_grad():
        for m in (4, 5):
            uni.layers[m].attn.comp_proj.weight.normal_(0, 0.1)
    ids = torch.randint(0, 61, (2, 12))
    grads = {}
    for m in (4, 5):  # a loss on one member's attention output alone
        uni.zero_grad()
        out = {}
        h = uni.layers[m].attn.register_forward_hook(lambda mod, a, o: out.setdefault("y", o))
        uni(ids)
        h.remove()
        out["y"].square().sum().backward()
        q_rows = uni.layers[3].attn.qkv_proj.weight.grad[: BASE.d_model]
        grads[m] = float(q_rows.abs().sum())
        assert uni.layers[m].attn.comp_proj.weight.grad.abs().sum() > 0
    assert all(g > 0 for g in grads.values())
    # and only W_c trains in stage 1
    from replicate.models.lm import CausalLM, OptimConfig

    lm = CausalLM(uni.cfg, OptimConfig(trainable=M.STAGE1_TRAINABLE))
    names = [n for n, _ in lm.trainable_parameters()]
    assert sorted(names) == [f"model.layers.{m}.attn.comp_proj.weight" for m in (4, 5)]


def test_member_output_is_the_leaders_probs_times_own_values_plus_compensation():
    """§3.3: a member's attention output is concat_h(P^h V^h) W_o + u W_c, with u its normed block input, V = u W_v
    its own values and P the leader's softmax map: the P with which the leader weights its own values."""
    from replicate.models.probes import capture

    base = _trained_like()
    uni = _unified(base, {4: 3, 5: 3})
    with torch.no_grad():
        for m in (4, 5):
            uni.layers[m].attn.comp_proj.weight.normal_(0, 0.1)  # a non-zero W_c
    ids = torch.randint(0, 61, (2, 12))
    io = {}
    hooks = [uni.layers[i].attn.register_forward_hook(lambda mod, a, o, i=i: io.__setitem__(i, (a[0], o)))
             for i in (3, 4, 5)]
    with capture(uni, ["attn_probs", "attn_in"]) as rec:
        uni(ids)
    for h in hooks:
        h.remove()
    P = rec.by_layer("attn_probs")[3][0]  # (B, H, T, S): the leader's
    B, T, D = io[3][0].shape
    H, dh = BASE.n_heads, D // BASE.n_heads
    assert torch.allclose(P.sum(-1), torch.ones(B, H, T)) and float(P.triu(1).abs().max()) == 0  # causal rows

    def heads_out(u, W_v, W_o):  # concat_h(P^h (u W_v)^h) W_o
        V = (u @ W_v.T).view(B, T, H, dh).transpose(1, 2)
        return (P @ V).transpose(1, 2).reshape(B, T, D) @ W_o.T

    lead = uni.layers[3].attn
    torch.testing.assert_close(io[3][1], heads_out(io[3][0], lead.qkv_proj.weight[2 * D:], lead.o_proj.weight))
    for m in (4, 5):
        u, y = io[m]
        a = uni.layers[m].attn
        torch.testing.assert_close(y, heads_out(u, a.v_proj.weight, a.o_proj.weight) + u @ a.comp_proj.weight.T)
        torch.testing.assert_close(u, rec[f"layer{m}/attn_in"][0])  # u: the normed block input (§3.3)
    assert not torch.allclose(io[4][1], io[5][1])  # own values, own W_o, own W_c


def test_measurements_leave_a_module_about_to_train_in_train_mode():
    """The closed-form fit and the probes measure in eval mode and give the mode back: a UniAttn module built for
    training (W_c fitted on it) starts training with every submodule in train mode (Lightning keeps the mode it is
    handed, and warned "Found N module(s) in eval mode" when the fit left the module in eval mode)."""
    base = _trained_like()
    uni = _unified(base, M.superblocks(6, 3, 3, 6)).train()
    ids = torch.randint(0, 61, (4, 16))
    mask = torch.ones(4, 16, dtype=torch.bool)
    M.fit_compensation(base, uni, ids, mask, "lstsq_tokens")
    M.attention_importance(uni, ids, mask)
    assert all(m.training for m in uni.modules())
    assert not any(m.training for m in base.modules())  # and an eval-mode model stays in eval mode
    dense = _trained_like().train()
    M.probs_similarity(dense, ids, mask)
    assert all(m.training for m in dense.modules())


@pytest.mark.parametrize("arm", ["uniattn", "cla", "llmdrop", "gqa", "uniattn_gqa"])
def test_cached_decoding_equals_full_recompute_for_every_arm(cfg, arm):
    torch.manual_seed(0)
    c = X.model_config(dataclasses.replace(cfg, n_layers=6, group_size=3), 61, arm, dropped=(4,))
    model = Decoder(c).eval()
    ids = torch.randint(0, 61, (2, 9))
    assert torch.equal(model.generate(ids, 6), model.generate(ids, 6, use_cache=False))


def test_llmdrop_score_and_probs_similarity():
    base = _trained_like()
    ids = torch.randint(0, 61, (4, 16))
    mask = torch.ones(4, 16, dtype=torch.bool)
    s = M.attention_importance(base, ids, mask)
    assert len(s) == 6 and all(0 <= x <= 2 for x in s)
    sim = M.probs_similarity(base, ids, mask)
    assert sim.shape == (4, 6, 6)
    torch.testing.assert_close(torch.diagonal(sim, dim1=1, dim2=2), torch.ones(4, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(sim, sim.transpose(1, 2))
    # a model whose layers share one attention map has similarity 1 everywhere
    same = _trained_like(dataclasses.replace(BASE, n_layers=2))
    same.layers[1].attn.qkv_proj.weight.data.copy_(same.layers[0].attn.qkv_proj.weight.data)
    same.layers[0].ffn.down_proj.weight.data.zero_()
    same.layers[0].attn.o_proj.weight.data.zero_()
    same.layers[1].attn_norm.weight.data.copy_(same.layers[0].attn_norm.weight.data)
    torch.testing.assert_close(M.probs_similarity(same, ids, mask)[:, 0, 1], torch.ones(4), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- the plan


@pytest.fixture(scope="module")
def bundle(env, cfg):
    return X.run_experiments(cfg)


def test_plan_at_smoke_writes_every_artifact(bundle, cfg, tmp_path, monkeypatch):
    from replicate.results import Results

    monkeypatch.setenv("REPLICATE_RESULTS", str(tmp_path))
    f = bundle.runs.frame
    assert set(f["variant"]) == set(X.arms(cfg))
    assert (f[f["variant"] == "uniattn"]["seed"].tolist() == [cfg.seed, cfg.seed + 1])
    assert bundle.runs.dropped and len(bundle.runs.dropped) == len(M.superblocks(cfg.n_layers, cfg.group_size,
                                                                                  cfg.begin, cfg.end))
    cost = bundle.analysis.cost
    assert set(cost["impl"]) == {"sdpa", "eager"} and set(cost["context"]) == set(cfg.bench_contexts)
    c = cost.set_index(["variant", "impl", "context"])
    L = max(cfg.bench_contexts)
    assert c.loc[("uniattn", "sdpa", L), "cache_bytes"] < c.loc[("ft", "sdpa", L), "cache_bytes"]
    assert c.loc[("uniattn_gqa", "sdpa", L), "cache_bytes"] < c.loc[("gqa", "sdpa", L), "cache_bytes"]
    r = bundle.analysis.init
    assert (r["residual_init"] <= r["residual_zero"] * (1 + 1e-9))[r["init"] == "lstsq_tokens"].all()
    # stage 1 trained W_c only: every other weight is still the pre-trained one; stage 2 moved them
    from replicate.io import torch_load
    from replicate.paths import runs_dir

    uni = next(x["result"] for x in bundle.runs.records if x["variant"] == "uniattn")
    s1 = torch_load(runs_dir() / PAPER / uni["stage1"]["key"] / "result.pt")["state_dict"]
    pre = bundle.runs.pretrain["state_dict"]
    key = "model.layers.0.attn.qkv_proj.weight"
    assert torch.equal(s1[key], pre[key]) and not torch.equal(uni["state_dict"][key], pre[key])
    m = max(M.superblocks(cfg.n_layers, cfg.group_size, cfg.begin, cfg.end))
    assert torch.equal(s1[f"model.layers.{m}.attn.v_proj.weight"],
                       pre[f"model.layers.{m}.attn.qkv_proj.weight"][-cfg.d_model:])  # MHA: the V rows come last
    assert not torch.equal(s1[f"model.layers.{m}.attn.comp_proj.weight"],
                           X.initial_model(cfg, bundle.data, "uniattn", pre and bundle.runs.pretrain)[0]
                           .model.layers[m].attn.comp_proj.weight)  # W_c itself trained
    res = Results(cfg)
    res.table("extra_main", R.main_table(bundle))
    res.table("extra_ablation", R.ablation_table(bundle))
    res.table("extra_validity", R.validity_table(bundle))
    for name in ("fig_similarity", "fig_latency", "fig_softmax_share"):
        res.figure("extra_" + name.removeprefix("fig_"), getattr(R, name)(bundle))
    cl = R.claims(cfg, bundle)
    assert [c.claim_id for c in cl] == [f"C{i}" for i in (1, 2, 3, 4, 5, 7, 6, 8, 9, 10, 11)]
    assert all(c.paper_value is None for c in cl)  # the paper's numbers were not recovered
    assert {c.verdict for c in cl} <= {"reproduced", "not_reproduced", "inconclusive", "not_run", "invalid"}
    assert next(c for c in cl if c.claim_id == "C11").verdict == "not_run"
    c3 = next(c for c in cl if c.claim_id == "C3")
    c3_text = c3.ours_ci + c3.evidence  # a smoke run learns nothing: an invalid claim keeps its text in the evidence
    assert "UniAttn − FT-2x" in c3_text and "exposure-matched" in c3_text
    main = R.main_table(bundle).set_index("method")
    for a in ("ft2x", "softmax2x", "cla2x", "llmdrop2x", "gqa2x"):  # UniAttn's exposure, every step full-parameter
        assert main.loc[a, "full_steps"] == cfg.s1 + cfg.sft_steps and main.loc[a, "wc_only_steps"] == 0, a
        assert np.isnan(main.loc[a, "decode_ms_sdpa"]) and main.loc[a, "params"] == main.loc[X.base_arm(a), "params"]
    assert main.loc["uniattn", "wc_only_steps"] == cfg.s1
    assert main.loc["uniattn", "full_steps"] == main.loc["ft", "full_steps"] == cfg.sft_steps
    # restart: a matched arm's first pass is its one-pass arm's own run (trained once), its second continues it
    recs = {(r["variant"], r["seed"]): r["result"] for r in bundle.runs.records}
    for a in ("ft2x", "cla2x", "llmdrop2x"):
        assert recs[(a, cfg.seed)]["stage1"]["key"] == recs[(X.base_arm(a), cfg.seed)]["key"], a
    assert R.training_seconds(f) == pytest.approx(f["wall_s"].sum() - f[f["stage1_shared_with"] != ""][
        "stage1_wall_s"].sum())
    for c in cl:  # each verdict rule names δ where it judges a loss
        if c.claim_id in ("C3", "C4", "C5", "C7", "C9", "C10"):
            assert "δ" in c.metric and f"{cfg.min_effect:g}" in c.metric, c.claim_id
    res.claims(cl)
    assert "Closing note" in R.closing_note(cfg, bundle)


def _train_calls(monkeypatch, cfg, data, arm, seed, dropped=()):
    """The train calls ``train_arm`` makes for ``arm`` (the trainer stubbed): per stage its steps, the rows of every
    batch it reads in step order, what trains and its held-out evaluation steps."""
    calls = []

    def fake_train(paper, spec, batches, evals, **kw):
        rows = [batches.batch(t)["ids"] for t in range(spec.optim.max_steps)]
        calls.append({"steps": spec.optim.max_steps, "offset": batches.offset, "seed": batches.seed, "rows": rows,
                      "trainable": tuple(spec.optim.trainable), "eval_steps": spec.eval_steps, "evals": bool(evals),
                      "key": spec.key})
        return {"key": spec.key, "final": {}, "wall_s": 0.0, "state_dict": {}, "n_params": 0}

    monkeypatch.setattr(X, "train", fake_train)
    X.train_arm(cfg, data, arm, seed, dropped)
    return calls


def _rowset(rows) -> set:
    return {tuple(r.tolist()) for b in rows for r in b}


@pytest.mark.parametrize("stage1", ["equal", "longer"])
@pytest.mark.parametrize("matched", ["restart", "single"])
def test_paper_protocol_pairs_stage_two_with_ft_and_matched_arms_see_uniattns_batches(bundle, cfg, monkeypatch, stage1,
                                                                                      matched):
    """The paper's protocol (spec §3.5: each stage one epoch over the SAME data): UniAttn's stage 1 trains W_c alone
    for stage1_steps on exactly FT's batches, in FT's order (from batch 0 again when longer than an epoch), so UniAttn
    sees no row FT does not; its stage 2 trains everything for sft_steps on exactly FT's batches, step t on FT's batch t
    (the pairing UniAttn − FT rests on), with a fresh schedule; every one-stage arm reads FT's batches. Every
    exposure-matched arm (FT-2x and the baselines' <arm>2x, post-audit B1) trains every parameter on exactly the
    batches UniAttn's two stages read, in their order: restart, in two runs with a fresh schedule each (the first the
    one-pass arm's own run when stage 1 is one epoch), single, in one run; every evaluated stage scores the held-out
    rows at the same shared batch."""
    extra = {"equal": 0, "longer": cfg.sft_steps + 2}[stage1]  # longer: stage 1 wraps around FT's epoch
    c = dataclasses.replace(cfg, stage1_steps=extra, matched_schedule=matched)
    seed, n, s1 = cfg.seed + 1, c.sft_steps, c.s1
    ft = _train_calls(monkeypatch, c, bundle.data, "ft", seed)
    ua = _train_calls(monkeypatch, c, bundle.data, "uniattn", seed)
    assert len(ft) == 1 and ft[0]["steps"] == n and ft[0]["trainable"] == () and ft[0]["seed"] == seed
    assert [x["steps"] for x in ua] == [s1, n] and ua[0]["trainable"] == M.STAGE1_TRAINABLE and ua[1]["trainable"] == ()
    assert all(torch.equal(a, b) for a, b in zip(ua[1]["rows"], ft[0]["rows"]))  # stage 2 step t = FT's step t
    # stage 1 reads FT's batches in FT's order (the same epoch again): batch for batch, and no row FT does not see
    assert all(torch.equal(a, ft[0]["rows"][t % n]) for t, a in enumerate(ua[0]["rows"]))
    assert _rowset(ua[0]["rows"]) <= _rowset(ft[0]["rows"])
    assert not ua[0]["evals"] and ua[1]["evals"] and ft[0]["evals"]
    k = ft[0]["eval_steps"]
    assert len(k) == 1 and 0 < k[0] < n and ua[1]["eval_steps"] == k
    uni_rows = ua[0]["rows"] + ua[1]["rows"]  # what UniAttn's two stages read, in order
    keys = {x["key"] for x in ft + ua}
    for arm in ("ft2x", "softmax2x", "cla2x", "llmdrop2x", "gqa2x"):
        base = X.base_arm(arm)
        dropped = bundle.runs.dropped if base == "llmdrop" else ()
        got = _train_calls(monkeypatch, c, bundle.data, arm, seed, dropped)
        one = _train_calls(monkeypatch, c, bundle.data, base, seed, dropped)
        rows = [r for x in got for r in x["rows"]]
        assert len(rows) == len(uni_rows) == s1 + n and all(torch.equal(a, b) for a, b in zip(rows, uni_rows)), arm
        assert all(x["trainable"] == () for x in got) and all(x["seed"] == seed for x in got), arm
        assert sum(x["steps"] for x in got) == s1 + n and X.cost_weight(c, arm) == s1 + n, arm
        assert got[-1]["evals"] and got[-1]["eval_steps"] == (k if matched == "restart" else (s1 + k[0],)), arm
        if matched == "single":
            assert len(got) == 1 and got[0]["key"] not in keys, arm
        else:
            assert [x["steps"] for x in got] == [s1, n], arm
            # the first pass: the one-pass arm's own run when stage 1 is one epoch (trained once), else its own
            assert (got[0]["key"] == one[0]["key"]) == (stage1 == "equal") == X.shares_first_pass(c, arm), arm
            assert got[0]["evals"] == (stage1 == "equal"), arm
        keys |= {x["key"] for x in got if x["key"] != one[0]["key"]}
    for arm in ("softmax", "cla", "llmdrop", "uniattn_1stage", "gqa"):  # every one-stage arm: FT's batches
        got = _train_calls(monkeypatch, c, bundle.data, arm, seed, bundle.runs.dropped if arm == "llmdrop" else ())
        assert len(got) == 1 and got[0]["steps"] == n and got[0]["eval_steps"] == k, arm
        assert len(got[0]["rows"]) == n and all(torch.equal(a, b) for a, b in zip(got[0]["rows"], ft[0]["rows"])), arm
    for arm in ("uniattn_gqa", "uniattn_zero"):  # UniAttn's schedule
        got = _train_calls(monkeypatch, c, bundle.data, arm, seed)
        assert [(x["steps"], x["trainable"]) for x in got] == [(s1, M.STAGE1_TRAINABLE), (n, ())], arm
        assert all(torch.equal(a, b) for x, y in zip(got, ua) for a, b in zip(x["rows"], y["rows"])), arm
    assert X.cost_weight(c, "uniattn") == 0.4 * s1 + n
    # distinct runs: FT, UniAttn's two stages, and per matched arm its second pass (restart) or its one run (single),
    # plus its own first pass where stage 1 is not one epoch
    assert len(keys) == 3 + 5 * (2 if matched == "restart" and stage1 == "longer" else 1)
    assert X.schedule(cfg, "uniattn")[0]["reads"] == tuple(range(cfg.sft_steps))  # default: one epoch, FT's
    for arm in ("ft2x", "cla2x"):
        with pytest.raises(ValueError, match=arm):
            X.schedule(dataclasses.replace(cfg, stage_protocol="step_matched"), arm)
    with pytest.raises(ValueError, match="matched_arms"):
        X.schedule(dataclasses.replace(cfg, matched_arms=()), "cla2x")


def test_one_pass_runs_inside_a_matched_arm_are_not_trained_twice(bundle, cfg, monkeypatch):
    """Two workers never train one run (the second would be refused): a one-pass run that an exposure-matched arm
    continues (restart) is left out of the side-by-side list and trained inside that arm's task."""
    calls = []
    monkeypatch.setattr(X, "prefetch", lambda fns, workers, threads: calls.extend(fns))
    X.runs(cfg, bundle.data, bundle.runs.pretrain)
    listed = [(f.args[2], f.args[3]) for f in calls]
    assert len(listed) == len(set(listed))
    for a in ("cla", "llmdrop", "softmax", "gqa"):
        assert (a, cfg.seed) not in listed and (a + "2x", cfg.seed) in listed
    assert ("ft", cfg.seed) not in listed and ("ft", cfg.seed + 1) in listed and ("ft2x", cfg.seed) in listed


def test_step_matched_protocol_splits_fts_steps(bundle, cfg, monkeypatch):
    """``stage_protocol='step_matched'`` (ours): every arm spends sft_steps steps on batches 0 .. sft_steps − 1 of its
    seed, UniAttn's two stages splitting them (stage 1 W_c only for stage1_frac of them), never adding steps."""
    c = dataclasses.replace(cfg, stage_protocol="step_matched")
    for arm in X.arms(c):
        calls = _train_calls(monkeypatch, c, bundle.data, arm, cfg.seed + 1,
                             bundle.runs.dropped if arm == "llmdrop" else ())
        assert sum(x["steps"] for x in calls) == c.sft_steps, arm
        covered = [t for x in calls for t in range(x["offset"], x["offset"] + x["steps"])]
        assert covered == list(range(c.sft_steps)), arm  # the same batches as FT, each once
        if X.two_stage(c, arm):
            assert len(calls) == 2 and calls[0]["trainable"] == M.STAGE1_TRAINABLE and calls[1]["trainable"] == ()
            assert calls[0]["steps"] == round(c.stage1_frac * c.sft_steps)
    assert "ft2x" not in X.arms(c)
    sch = X.schedule(dataclasses.replace(c, sft_steps=100, stage1_frac=0.3), "uniattn")
    assert [(x["steps"], x["reads"][0], x["reads"][-1]) for x in sch] == [(30, 0, 29), (70, 30, 99)]


def test_heldout_drift_pairs_the_arms_at_the_same_shared_batch(bundle, cfg):
    """The convergence check the claims use: each arm's held-out answer loss scored after the same shared batch
    (FT's step k, UniAttn's stage-2 step k, a matched arm's second-pass step k -- or, in one schedule, step
    stage1_steps + k), the paired gap's change from there to the end; recomputed here from the runs' own records, and
    reported for every comparison."""
    fr = bundle.comparisons.frame.set_index("comparison")
    assert fr["heldout_gap_drift"].notna().all() and "ft2x - uniattn" in fr.index and "cla2x - uniattn" in fr.index
    assert {"uniattn_gqa - gqa2x", "softmax - uniattn_1stage"} <= set(fr.index)
    by = {(r["variant"], r["seed"]): r["result"] for r in bundle.runs.records}
    k = X.heldout_step(cfg, X.schedule(cfg, "ft")[-1])
    assert X.heldout_step(cfg, X.schedule(cfg, "ft2x")[-1]) == k  # restart: the second pass, as UniAttn's stage 2
    single = dataclasses.replace(cfg, matched_schedule="single")
    assert X.heldout_step(single, X.schedule(single, "cla2x")[-1]) == cfg.s1 + k
    for name in ("ft - uniattn", "ft2x - uniattn", "cla2x - uniattn"):
        a = name.split(" - ")[0]
        kk = k
        d = []
        for s in X.seeds_of(cfg, a):
            ra, ru = by[(a, s)], by[("uniattn", s)]
            end = X.row_metrics(ra["final"]["qa"])[0] - X.row_metrics(ru["final"]["qa"])[0]
            mid = X.row_metrics(ra["evals"]["qa"][kk])[0] - X.row_metrics(ru["evals"]["qa"][k])[0]
            d.append(end.mean() - mid.mean())
        assert fr.loc[name, "heldout_gap_drift"] == pytest.approx(float(np.mean(d)), abs=1e-12)
        assert bundle.comparisons.drift[name] == fr.loc[name, "heldout_gap_drift"]
        assert "held-out" in bundle.comparisons.drift_what[name]
    # a stage whose held-out point falls outside it is not scored there (step-matched: inside UniAttn's stage 1)
    sm = dataclasses.replace(cfg, stage_protocol="step_matched", stage1_frac=0.9, sft_steps=10)
    assert X.heldout_step(sm, X.schedule(sm, "uniattn")[-1]) is None and X.heldout_step(sm, X.schedule(sm, "ft")[-1])


def test_stage_two_starts_from_stage_one_with_everything_trainable(bundle, cfg, monkeypatch):
    """The two stages as they train (a fresh UniAttn run, every fit's start recorded): stage 1 starts from the
    closed-form init with every module in train mode and only W_c trainable (the only parameters the optimiser holds);
    stage 2 starts from stage 1's final weights, with every parameter trainable and in the optimiser."""
    from replicate.io import torch_load
    from replicate.models.lm import CausalLM
    from replicate.paths import runs_dir

    starts = []

    def on_train_start(self):
        opt = {id(p) for g in self.trainer.optimizers[0].param_groups for p in g["params"]}
        starts.append({"state": {k: v.detach().clone() for k, v in self.state_dict().items()},
                       "grad": {n for n, p in self.named_parameters() if p.requires_grad},
                       "optim": {n for n, p in self.named_parameters() if id(p) in opt},
                       "all": {n for n, _ in self.named_parameters()},
                       "train_mode": all(m.training for m in self.modules())})

    monkeypatch.setattr(CausalLM, "on_train_start", on_train_start, raising=False)
    c = dataclasses.replace(cfg, sft_steps=cfg.sft_steps + 2)  # new run keys: both stages train here
    res = X.train_arm(c, bundle.data, "uniattn", cfg.seed)
    assert len(starts) == 2 and all(s["train_mode"] for s in starts)
    s1, s2 = starts
    wc = {n for n in s1["all"] if n.endswith("attn.comp_proj.weight")}
    assert wc and s1["grad"] == wc and s1["optim"] == wc
    init = X.initial_model(c, bundle.data, "uniattn", X.pretrained(c, bundle.data))[0].state_dict()
    assert all(torch.equal(s1["state"][k], init[k]) for k in init)  # the closed-form init, nothing else
    assert s2["grad"] == s2["all"] and s2["optim"] == s2["all"]
    end1 = torch_load(runs_dir() / PAPER / res["stage1"]["key"] / "result.pt")["state_dict"]
    assert set(end1) == set(s2["state"]) and all(torch.equal(s2["state"][k], end1[k]) for k in end1)
    assert any(not torch.equal(end1[k], init[k]) for k in wc)  # stage 1 moved W_c (and, above, nothing else)
    assert all(torch.equal(end1[k], init[k]) for k in init if k not in wc)


def test_initial_model_is_in_train_mode(bundle, cfg):
    """The module stage 1 trains: W_c fitted on it, every submodule back in train mode (the eval-mode warning's
    cause was the fit leaving it in eval mode)."""
    lm, fit = X.initial_model(cfg, bundle.data, "uniattn", X.pretrained(cfg, bundle.data))
    assert fit and all(m.training for m in lm.modules())


def test_latency_ratio_is_paired_by_round_and_ablations_are_not_timed(bundle, cfg):
    """Each arm's latency ratio to FT is taken round by round (a load change that slows one round slows every arm of
    it alike); the init and stage ablations, UniAttn's modules exactly, are not timed again but keep their cache bytes
    and counted work."""
    ft = [1.0, 10.0, 3.0, 2.0]  # a noisy machine: FT's own time moves 10x between rounds
    rows = [{"variant": v, "impl": "sdpa", "context": 8, "repeat": r, "s_per_token": x * k}
            for v, k in (("ft", 1.0), ("uniattn", 0.5)) for r, x in enumerate(ft)]
    t = X.latency_summary(pd.DataFrame(rows)).set_index("variant")
    assert t.loc["uniattn", "vs_ft"] == t.loc["uniattn", "vs_ft_q25"] == t.loc["uniattn", "vs_ft_q75"] == 0.5
    assert t.loc["uniattn", "s_per_token_q75"] - t.loc["uniattn", "s_per_token_q25"] > 0.5  # unpaired: wide
    assert t.loc["ft", "vs_ft"] == 1.0 and t.loc["uniattn", "repeats"] == 4
    cost = bundle.analysis.cost
    assert set(cost[cost["timed"]]["variant"]) == set(X.bench_arms(cfg))
    c = cost.set_index(["variant", "impl", "context"])
    L = max(cfg.bench_contexts)
    for a in ("uniattn_zero", "uniattn_mean", "uniattn_1stage"):
        assert np.isnan(c.loc[(a, "sdpa", L), "s_per_token"])
        for col in ("cache_bytes", "qk_macs", "params"):
            assert c.loc[(a, "sdpa", L), col] == c.loc[("uniattn", "sdpa", L), col]
    tm = bundle.analysis.timings
    assert len(tm) == len(X.bench_arms(cfg)) * 2 * len(cfg.bench_contexts) * cfg.bench_repeats
    assert set(tm["repeat"]) == set(range(cfg.bench_repeats))


def test_row_metrics_answer_token_accuracy():
    """Per row: the mean answer loss and the share of answer tokens ranked first, over the masked targets only."""
    loss = torch.tensor([[9.0, 1.0, 3.0], [9.0, 9.0, 2.0]])
    correct = torch.tensor([[True, True, False], [True, False, True]])
    mask = torch.tensor([[False, True, True], [False, False, True]])
    lw, acc = X.row_metrics({"loss": loss, "correct": correct, "mask": mask})
    np.testing.assert_allclose(lw, [2.0, 2.0])
    np.testing.assert_allclose(acc, [0.5, 1.0])


def test_gqa_arms_share_one_untrained_parent(bundle, cfg):
    """GQA and UniAttn-on-GQA start from the same parent: the GQA conversion of the pre-trained model (no
    post-training of its own), so both get exactly sft_steps of post-training. The stage-1 run of UniAttn-on-GQA
    keeps every weight but W_c at that parent's."""
    from replicate.io import torch_load
    from replicate.paths import runs_dir

    par = X.parent_of(cfg, bundle.data, "uniattn_gqa")
    gqa = next(x["result"] for x in bundle.runs.records if x["variant"] == "gqa")
    assert par["key"].startswith(bundle.runs.pretrain["key"]) and gqa["key"] not in par["key"]
    target = Decoder(X.model_config(cfg, bundle.data.n_ids, "gqa"))
    pre = {k.removeprefix("model."): v for k, v in bundle.runs.pretrain["state_dict"].items()}
    want = convert.gqa_state(pre, target)
    assert all(torch.equal(par["state_dict"][k], want[k]) for k in want)
    ug = next(x["result"] for x in bundle.runs.records if x["variant"] == "uniattn_gqa")
    s1 = torch_load(runs_dir() / PAPER / ug["stage1"]["key"] / "result.pt")["state_dict"]
    key = "layers.0.attn.qkv_proj.weight"
    assert torch.equal(s1["model." + key], want[key])  # the GQA conversion, not the post-trained GQA run
    assert not torch.equal(gqa["state_dict"]["model." + key], want[key])


def _with(bundle: Bundle, **values) -> Bundle:
    v = {k: getattr(bundle, k) for k in ("cfg", "data", "pretrain", "runs", "analysis", "comparisons")}
    return Bundle({**v, **values}, {})


def test_validity_fails_when_the_task_was_not_learned(bundle, cfg):
    """The task check: a run is 'learned' only when its answer loss is clearly below both the answer unigram and the
    zero-shot model; one run that is not makes the claims resting on it invalid, naming it."""
    f = bundle.runs.frame.copy()
    bar = min(bundle.data.answer_unigram, float(bundle.analysis.pretrained_rows[0].mean()))
    f["answer_loss"] = bar - 2 * cfg.learn_margin
    f.loc[f["variant"] == "cla2x", "answer_loss"] = bar - cfg.learn_margin / 2  # below the bar, not clearly
    t = R.validity_table(_with(bundle, runs=dataclasses.replace(bundle.runs, frame=f)))
    assert not t[t["variant"] == "cla2x"]["task_learned"].any() and t[t["variant"] != "cla2x"]["task_learned"].all()
    v = R.validity(_with(bundle, runs=dataclasses.replace(bundle.runs, frame=f)), ["uniattn", "cla2x"])
    assert any("cla2x/seed" in x for x in v.failures) and not any("uniattn/seed" in x for x in v.failures
                                                                   if x.startswith("post-training task"))
    c4 = next(c for c in R.claims(cfg, _with(bundle, runs=dataclasses.replace(bundle.runs, frame=f)))
              if c.claim_id == "C4")
    assert c4.verdict == "invalid" and "task not learned" in c4.evidence


def test_verdict_rules_reject_null_cases(bundle, cfg):
    """Two identical arms: C4 (a 'beats' claim, judged against the exposure-matched CLA) is never reproduced: with the
    deciding pair's seed spread wide it is inconclusive, with it tight it is refuted (no win of δ or more); C3
    (equivalence) needs its interval inside ±δ; C6 fails when the cache is not smaller."""
    cmp_ = bundle.comparisons
    fr = cmp_.frame.copy()
    name = "cla2x - uniattn"
    fr.loc[fr["comparison"] == name, ["gap", "ci_lo", "ci_hi"]] = 0.0
    acc = cmp_.acc.copy()
    acc.loc[acc["comparison"] == name, ["acc_gap", "ci_lo", "ci_hi"]] = 0.0
    zeros = dict(frame=fr, boot={**cmp_.boot, name: np.zeros(cfg.n_boot)}, drift={}, acc=acc,
                 acc_boot={**cmp_.acc_boot, name: np.zeros(cfg.n_boot)})
    valid = lambda b, v: Validity()  # noqa: E731  the rules alone
    orig = R.validity
    try:
        R.validity = valid
        for spread, want in (([0.2, -0.2, 0.0], "inconclusive"), ([0.001, -0.001, 0.0], "not_reproduced")):
            null = _with(bundle, comparisons=dataclasses.replace(
                cmp_, per_seed={**cmp_.per_seed, "ft - uniattn": spread}, **zeros))
            c4 = {c.claim_id: c for c in R.claims(cfg, null)}["C4"]
            assert c4.verdict == want, (spread, c4)
        wide = dataclasses.replace(cmp_, per_seed={**cmp_.per_seed, "ft - uniattn": [1.0, -1.0]})
        assert {c.claim_id: c for c in R.claims(cfg, _with(bundle, comparisons=wide))}["C3"].verdict != "reproduced"
        tight = dataclasses.replace(cmp_, per_seed={**cmp_.per_seed, "ft - uniattn": [0.001, -0.001, 0.0]})
        assert {c.claim_id: c for c in R.claims(cfg, _with(bundle, comparisons=tight))}["C3"].verdict in (
            "reproduced", "inconclusive")  # the forgetting second metric may disagree: never not_reproduced
        cost = bundle.analysis.cost.copy()
        cost.loc[cost["variant"] == "uniattn", "cache_bytes"] = cost.loc[cost["variant"] == "ft", "cache_bytes"].max()
        same = _with(bundle, analysis=dataclasses.replace(bundle.analysis, cost=cost))
        assert {c.claim_id: c for c in R.claims(cfg, same)}["C6"].verdict in ("not_reproduced", "inconclusive")
    finally:
        R.validity = orig


def test_second_metrics_make_disagreeing_claims_inconclusive(bundle, cfg):
    """C2 (prefill share over the bar, decode under it), C3 (answer loss on par, forgetting not) and C8 (better at
    init, worse after training) are judged on two metrics: when they disagree the verdict is inconclusive (mixed);
    an arm whose answer loss is above the answer unigram is marked diverged in the main table."""
    orig = R.validity
    try:
        R.validity = lambda b, v: Validity()  # noqa: E731  the rules alone
        sm = bundle.analysis.softmax.copy()
        sm["softmax_share_alone"] = np.where(sm["phase"] == "prefill", 0.9, 0.01)
        f = bundle.runs.frame.copy()
        f.loc[f["variant"] == "uniattn", "lm_loss"] = f.loc[f["variant"] == "ft", "lm_loss"].to_numpy() + 0.25
        zero_shot = float(bundle.analysis.pretrained_rows[0].mean())
        f.loc[f["variant"] == "uniattn_mean", "answer_loss"] = max(bundle.data.answer_unigram, zero_shot) + 1.0
        f.loc[f["variant"] == "uniattn", "answer_loss"] = min(bundle.data.answer_unigram, zero_shot) - 1.0
        cmp_ = bundle.comparisons
        fr = cmp_.frame.copy()
        fr.loc[fr["comparison"] == "uniattn_zero - uniattn", ["gap", "ci_lo", "ci_hi"]] = (-0.5, -0.6, -0.4)
        ini = bundle.analysis.init.copy()
        ini["heldout_residual_init"] = ini["heldout_residual_zero"] / 2
        ini["w_norm"] = np.where(ini["variant"] == "uniattn_mean", 8e5, 1.0)
        comps = dataclasses.replace(cmp_, frame=fr, per_seed={**cmp_.per_seed, "ft - uniattn": [0.001, -0.001, 0.0]},
                                    init_kl={"point": 1.0, "reps": np.full(cfg.n_boot, 1.0), "zero": 1.0,
                                             "init": 0.0, "windows": 8})
        b = _with(bundle, runs=dataclasses.replace(bundle.runs, frame=f), comparisons=comps,
                  analysis=dataclasses.replace(bundle.analysis, softmax=sm, init=ini))
        cl = {c.claim_id: c for c in R.claims(cfg, b)}
        for cid in ("C2", "C3", "C8"):
            assert cl[cid].verdict == "inconclusive" and cl[cid].evidence.startswith("mixed"), (cid, cl[cid])
        assert "forgetting" in cl["C3"].ours_ci and "after training" in cl["C8"].ours_ci
        assert "decode-step" in cl["C2"].ours_ci
        t = R.main_table(b).set_index("method")["status"]
        assert t["uniattn_mean"] == "diverged" and t["uniattn"] == ""
        ini["w_norm"] = 1.0  # the norm alone also marks it
        f.loc[f["variant"] == "uniattn_mean", "answer_loss"] = min(bundle.data.answer_unigram, zero_shot) - 1.0
        ok = _with(b, runs=dataclasses.replace(bundle.runs, frame=f),
                   analysis=dataclasses.replace(b.analysis, init=ini))
        assert R.main_table(ok).set_index("method")["status"]["uniattn_mean"] == ""
        ini["w_norm"] = np.where(ini["variant"] == "uniattn_mean", 8e5, 1.0)
        assert R.main_table(_with(ok, analysis=dataclasses.replace(b.analysis, init=ini))).set_index(
            "method")["status"]["uniattn_mean"] == "diverged"
    finally:
        R.validity = orig


def _drift_bundle(drift, reps, per_seed, bar="decision", name="cla2x - uniattn"):
    from types import SimpleNamespace

    cmp_ = SimpleNamespace(drift={name: drift}, per_seed={"ft - uniattn": per_seed},
                           drift_what={name: "held-out gap {label}"}, drift_boot={name: reps})
    return SimpleNamespace(comparisons=cmp_, cfg=SimpleNamespace(drift_frac=0.2, horizon_bar=bar))


def test_beats_on_par_and_at_least_as_good_share_one_smallest_effect():
    """One δ for every loss claim (post-audit M4): 'beats' needs both intervals above δ and is refuted when both lie
    below it (no win of δ or more: an interval inside ±δ is 'on par', never 'beats'); 'on par' needs them inside ±δ;
    'at least as good' above −δ. A single-seed claim needs the row bootstrap and the one-seed prediction interval to
    agree."""
    rng = np.random.default_rng(0)
    tight = [0.001, -0.001, 0.0]
    reps = lambda g: g + 0.001 * rng.standard_normal(500)  # noqa: E731
    d = 0.03
    assert R.single_two(0.06, reps(0.06), tight, d)[0] == "reproduced"
    assert R.single_two(0.0, reps(0.0), tight, d)[0] == "not_reproduced"  # a tie is not a win
    assert R.single_two(0.0, reps(0.0), tight, d, "equivalent")[0] == "reproduced"
    assert R.single_two(0.03, reps(0.03), tight, d)[0] == "inconclusive"  # straddles δ
    assert R.single_two(0.06, reps(0.06), [0.05, -0.05, 0.0], d)[0] == "inconclusive"  # the seed spread is wide
    assert R.single_two(-0.02, reps(-0.02), tight, d, "noninferior")[0] == "reproduced"
    assert R.single_two(-0.06, reps(-0.06), tight, d, "noninferior")[0] == "not_reproduced"
    assert "paired seeds" in R.single_two(0.04, reps(0.04), [0.01, -0.01, 0.0], d)[1]  # how many would resolve it
    with pytest.raises(ValueError, match="rule"):
        R.verdict_by((0.0, 1.0), "wins", d)


def test_horizon_rule_tests_the_decision_bar_not_zero():
    """The convergence horizon (post-audit M2): a decided claim is 'still converging' when its held-out gap still moves
    and, continued linearly for one more run length, would no longer pass its own rule -- the gap falling inside the bar
    (δ plus the prediction interval's half-width), not merely reaching 0. The former rule (``horizon_bar='zero'``)
    keeps such a gap; a drift indistinguishable from 0, a slow one, or a widening one keeps the verdict."""
    from replicate import claims as C

    rng = np.random.default_rng(0)
    per_seed = [-0.0179, -0.0017, -0.0093]  # the audited FT − UniAttn per seed: std 0.0081
    gap, boot = 0.10, 0.10 + 0.006 * rng.standard_normal(1000)
    rejudge = lambda sh: R.single_two(gap + sh, boot + sh, per_seed, 0.03)[0]  # noqa: E731
    v, how = R.single_two(gap, boot, per_seed, 0.03)
    won = C.Claim("C4", "", "", None, gap, how, v, "ev")
    assert v == "reproduced"
    drift = lambda d, sd=0.0015: d + sd * rng.standard_normal(1000)  # noqa: E731
    # 5 × −0.008 = −0.04: the gap would be 0.06, its prediction interval's lower end below δ
    out = R._converging(_drift_bundle(-0.008, drift(-0.008), per_seed), won, "cla2x - uniattn", rejudge=rejudge)
    assert out.verdict == "inconclusive" and "still converging" in out.evidence and "+0.0600" in out.ours_ci, out
    assert R._converging(_drift_bundle(-0.008, drift(-0.008), per_seed, "zero"), won, "cla2x - uniattn",
                         rejudge=rejudge).verdict == "reproduced"  # the former rule: 0.04 < 0.10, would not reach 0
    assert R._converging(_drift_bundle(-0.008, drift(0.0), per_seed), won, "cla2x - uniattn",
                         rejudge=rejudge).verdict == "reproduced"  # its interval holds 0, below the seed spread
    assert R._converging(_drift_bundle(-0.002, drift(-0.002), per_seed), won, "cla2x - uniattn",
                         rejudge=rejudge).verdict == "reproduced"  # slow: 0.09 still clears the bar
    assert R._converging(_drift_bundle(0.008, drift(0.008), per_seed), won, "cla2x - uniattn",
                         rejudge=rejudge).verdict == "reproduced"  # widening
    # equivalence (C3, C10): refuted while closing into the margin, or held while drifting out of it: inconclusive
    tight = [0.001, -0.001, 0.0]
    for g0, d, v0 in ((0.1, -0.015, "not_reproduced"), (0.0, 0.01, "reproduced")):
        reps = g0 + 0.001 * rng.standard_normal(1000)
        eq = lambda sh, g0=g0, reps=reps: R.equivalence_two(g0 + sh, reps + sh, tight, 0.03)[0]  # noqa: E731
        c = C.Claim("C10", "", "", None, g0, "ci", eq(0.0), "ev")
        assert c.verdict == v0
        out = R._converging(_drift_bundle(d, drift(d), tight, name="uniattn_gqa - gqa2x"), c,
                            "uniattn_gqa - gqa2x", rejudge=eq)
        assert out.verdict == "inconclusive" and "still converging" in out.evidence, (g0, out)
    # no held-out drift measured: the training-loss rule, unchanged (a gap that holds keeps its verdict)
    from types import SimpleNamespace

    nob = SimpleNamespace(comparisons=SimpleNamespace(drift={"x": 0.0}, per_seed={"ft - uniattn": per_seed}),
                          cfg=SimpleNamespace(drift_frac=0.2, horizon_bar="decision"))
    assert R._converging(nob, won, "x", rejudge=rejudge).verdict == "reproduced"


def _rules_only(monkeypatch):
    monkeypatch.setattr(R, "validity", lambda b, v: Validity())  # the rules alone


@pytest.mark.parametrize("exposure", ["matched", "one_pass"])
def test_c10_needs_the_one_seed_prediction_interval_too(bundle, cfg, monkeypatch, exposure):
    """C10 (equivalence on one seed) by the same two-interval rule as every other single-seed claim, against the
    exposure-matched GQA (or, ``judge_exposure='one_pass'``, the one-pass GQA): identical arms (gap 0, every bootstrap
    replicate 0) are not 'reproduced' when the deciding pair's seed spread makes the one-seed prediction interval wider
    than ±δ (the bootstrap alone would say reproduced); with a tight spread they are."""
    _rules_only(monkeypatch)
    c = dataclasses.replace(cfg, judge_exposure=exposure)
    name = "uniattn_gqa - " + {"matched": "gqa2x", "one_pass": "gqa"}[exposure]
    cmp_ = bundle.comparisons
    fr = cmp_.frame.copy()
    fr.loc[fr["comparison"] == name, ["gap", "ci_lo", "ci_hi"]] = 0.0
    acc = cmp_.acc.copy()
    acc.loc[acc["comparison"] == name, ["acc_gap", "ci_lo", "ci_hi"]] = 0.0
    base = dict(frame=fr, boot={**cmp_.boot, name: np.zeros(cfg.n_boot)}, drift={}, drift_boot={},
                acc=acc, acc_boot={**cmp_.acc_boot, name: np.zeros(cfg.n_boot)},
                acc_per_seed={**cmp_.acc_per_seed, "ft - uniattn": [0.0, 0.0005, -0.0005]})

    def c10(per_seed):
        comps = dataclasses.replace(cmp_, per_seed={**cmp_.per_seed, "ft - uniattn": per_seed}, **base)
        return {x.claim_id: x for x in R.claims(c, _with(bundle, comparisons=comps))}["C10"]

    wide = c10([0.2, -0.2])
    assert wide.verdict == "inconclusive" and "prediction interval" in wide.ours_ci, wide
    tight = c10([0.001, -0.001, 0.0])
    assert tight.verdict == "reproduced", tight
    assert "answer-token accuracy" in tight.ours_ci and name.split(" - ")[1] in tight.metric
    assert ("one-pass" in tight.ours_ci) == (exposure == "one_pass") or "against the one-pass GQA" in tight.ours_ci


def test_answer_token_accuracy_is_a_second_metric_of_the_loss_claims(bundle, cfg, monkeypatch):
    """C3, C4, C5, C7, C9 and C10 are also judged on the answer-token accuracy (paired bootstrap over the same row
    resamples); loss and accuracy pointing opposite ways make a claim inconclusive (mixed)."""
    _rules_only(monkeypatch)
    cmp_ = bundle.comparisons
    fr = cmp_.frame.copy()
    fr.loc[fr["comparison"] == "cla2x - uniattn", ["gap", "ci_lo", "ci_hi"]] = (0.5, 0.45, 0.55)
    acc = cmp_.acc.copy()
    acc.loc[acc["comparison"] == "cla2x - uniattn", ["acc_gap", "ci_lo", "ci_hi"]] = (-0.3, -0.35, -0.25)
    tight = [0.001, -0.001, 0.0]

    def c4(acc_reps):
        comps = dataclasses.replace(cmp_, frame=fr, boot={**cmp_.boot, "cla2x - uniattn": np.full(cfg.n_boot, 0.5)},
                                    per_seed={**cmp_.per_seed, "ft - uniattn": tight}, drift={}, drift_boot={},
                                    acc=acc, acc_boot={**cmp_.acc_boot, "cla2x - uniattn": acc_reps},
                                    acc_per_seed={**cmp_.acc_per_seed, "ft - uniattn": tight})
        return {c.claim_id: c for c in R.claims(cfg, _with(bundle, comparisons=comps))}

    cl = c4(np.full(cfg.n_boot, -0.3))
    assert cl["C4"].verdict == "inconclusive" and cl["C4"].evidence.startswith("mixed"), cl["C4"]
    acc.loc[acc["comparison"] == "cla2x - uniattn", "acc_gap"] = 0.3
    assert c4(np.full(cfg.n_boot, 0.3))["C4"].verdict == "reproduced"  # the metrics agree
    acc.loc[acc["comparison"] == "cla2x - uniattn", "acc_gap"] = 0.0
    same = c4(np.zeros(cfg.n_boot))["C4"]  # loss decides, accuracy does not (post-audit M5): said in short
    assert same.verdict == "reproduced" and "beats on loss, indistinguishable on accuracy" in same.ours_ci, same
    for cid in ("C3", "C4", "C5", "C7", "C9", "C10"):
        assert "answer-token accuracy" in cl[cid].ours_ci, cid
    assert set(cmp_.acc["comparison"]) == set(cmp_.frame["comparison"]) and cmp_.acc["acc_gap"].notna().all()


def test_softmax_share_is_the_softmax_alone_by_default_and_decode_has_no_mask(bundle, cfg, monkeypatch):
    """C2's share (post-audit M1): by default the softmax alone over q Kᵀ + mask + softmax + P V (the mask a step of
    its own, as the first author's profiler times F.softmax); ``softmax_share_def='mask_folded'`` judges the mask and
    softmax as one step instead; the other is reported beside. A decode step is timed without a mask, so there the
    two agree."""
    sh = {("prefill", "qk"): 1.0, ("prefill", "mask"): 3.0, ("prefill", "softmax"): 2.0,
          ("prefill", "softmax_masked"): 5.0, ("prefill", "pv"): 2.0,
          ("decode", "qk"): 1.0, ("decode", "softmax"): 1.0, ("decode", "softmax_masked"): 1.0, ("decode", "pv"): 2.0}
    p, d = X.share_row(sh, "prefill"), X.share_row(sh, "decode")
    assert p["softmax_share_alone"] == pytest.approx(2 / 8) and p["softmax_share_mask_folded"] == pytest.approx(5 / 8)
    assert d["softmax_share_alone"] == d["softmax_share_mask_folded"] == pytest.approx(1 / 4) and np.isnan(d["mask_s"])
    got = X.softmax_share(cfg, 16, 2)
    assert ("decode", "mask") not in got and ("prefill", "mask") in got and ("prefill", "softmax_masked") in got
    _rules_only(monkeypatch)
    sm = bundle.analysis.softmax.copy()
    sm["softmax_share_alone"], sm["softmax_share_mask_folded"] = 0.1, 0.6  # the definitions on opposite sides
    b = _with(bundle, analysis=dataclasses.replace(bundle.analysis, softmax=sm))
    alone = {c.claim_id: c for c in R.claims(cfg, b)}["C2"]
    folded = {c.claim_id: c for c in R.claims(dataclasses.replace(cfg, softmax_share_def="mask_folded"), b)}["C2"]
    assert (alone.verdict, alone.ours_value, folded.verdict, folded.ours_value) == ("not_reproduced", 0.1,
                                                                                    "reproduced", 0.6)
    assert "0.600" in alone.ours_ci and "the softmax alone" in alone.metric


def test_c1_is_judged_over_the_ft_seeds_inside_the_window_and_over_the_whole_depth(bundle, cfg, monkeypatch):
    """C1 (post-audit B3): the adjacent − distant similarity inside the unified layers and over the whole depth, each
    per FT seed and judged by a t-interval over the seeds; opposite resolved signs: inconclusive (mixed), and the
    closing note says a metric conflict, not noise, keeps it open. The per-seed contrasts are recomputed here from the
    maps."""
    _rules_only(monkeypatch)
    s = bundle.comparisons.similarity
    assert set(s["full"]["seeds"]) == set(X.seeds_of(cfg, "ft")) == set(bundle.analysis.similarity_seeds)
    assert ("window" in s) == (cfg.end - cfg.begin >= 3)  # smoke: a 2-layer unified range has no distant pair
    for key, (lo, hi) in (("window", (cfg.begin, cfg.end)), ("full", (0, cfg.n_layers))):
        for seed, got in zip(s.get(key, {}).get("seeds", []), s.get(key, {}).get("per_seed", [])):
            assert got == pytest.approx(float(X.sim_contrast(bundle.analysis.similarity_seeds[seed], lo, hi)[0].mean()))
    assert X.sim_contrast(np.ones((2, 4, 4)), 0, 2) is None  # fewer than 3 layers: no distant pair
    full = s["full"]

    def c1(window, full_, **kw):
        sim = {**s, "window": {**full, "per_seed": window}, "full": {**full, "per_seed": full_}}
        b = _with(bundle, comparisons=dataclasses.replace(bundle.comparisons, similarity=sim))
        c = dataclasses.replace(cfg, **kw)
        return {x.claim_id: x for x in R.claims(c, b)}["C1"], b

    got, b = c1([-0.008, -0.004, -0.005], [0.033, 0.040, 0.032])
    assert got.verdict == "inconclusive" and got.evidence.startswith("mixed") and "whole depth" in got.ours_ci
    assert "metric conflict" in R._to_settle(got, b)
    assert c1([-0.008, -0.004, -0.005], [0.033, 0.040, 0.032], sim_full_depth=False)[0].verdict == "not_reproduced"
    assert c1([0.01, 0.012, 0.011], [0.033, 0.040, 0.032])[0].verdict == "reproduced"
    assert c1([0.01, -0.012, 0.001], [0.033, 0.040, 0.032])[0].verdict == "inconclusive"  # the window unresolved


def test_c7_is_judged_at_the_recipe_level_with_the_schedule_matched_contrast_beside(bundle, cfg, monkeypatch):
    """C7 (post-audit B2): the recipe level (UniAttn's W_c with its W_c-only stage against softmax sharing given the
    same data exposure) with the schedule-matched contrast (both one stage: W_c alone) as a second metric; the two
    disagreeing make it inconclusive (mixed), and the closing note says the claim's wording, not seeds, settles it."""
    _rules_only(monkeypatch)
    cmp_ = bundle.comparisons
    tight = [0.001, -0.001, 0.0]

    def c7(recipe, schedule):
        fr, boot = cmp_.frame.copy(), dict(cmp_.boot)
        for name, g in (("softmax2x - uniattn", recipe), ("softmax - uniattn_1stage", schedule)):
            fr.loc[fr["comparison"] == name, ["gap", "ci_lo", "ci_hi"]] = (g, g, g)
            boot[name] = np.full(cfg.n_boot, g)
        acc = cmp_.acc.copy()
        acc["acc_gap"] = 0.0
        comps = dataclasses.replace(cmp_, frame=fr, boot=boot, drift={}, per_seed={**cmp_.per_seed,
                                    "ft - uniattn": tight}, acc=acc, acc_boot={k: np.zeros(cfg.n_boot)
                                                                               for k in cmp_.acc_boot},
                                    acc_per_seed={**cmp_.acc_per_seed, "ft - uniattn": tight})
        b = _with(bundle, comparisons=comps)
        return {x.claim_id: x for x in R.claims(cfg, b)}["C7"], b

    agree, _ = c7(0.1, 0.1)
    assert agree.verdict == "reproduced" and "softmax2x" in agree.metric and "schedule-matched" in agree.ours_ci
    mixed, b = c7(0.1, -0.05)  # W_c with its stage wins, W_c alone loses
    assert mixed.verdict == "inconclusive" and mixed.evidence.startswith("mixed"), mixed
    assert "wording" in R._to_settle(mixed, b)
    assert c7(0.0, 0.0)[0].verdict == "not_reproduced"  # a tie at the recipe level: no win of δ


def test_closing_note_says_what_would_settle_each_open_claim(bundle, cfg, monkeypatch):
    """PAPER_DONE 9 / 11 (post-audit M6): a claim kept open by a resolved metric conflict (C3: forgetting clearly
    outside ±δ) is not settled by more seeds, and the note says so; C2 is a definition and a platform; a still
    converging claim needs longer training; an undecided single-seed comparison needs seeds of its arm."""
    from replicate import claims as C

    _rules_only(monkeypatch)
    f = bundle.runs.frame.copy()
    f.loc[f["variant"] == "uniattn", "lm_loss"] = f.loc[f["variant"] == "ft", "lm_loss"].to_numpy() + 0.3
    b = _with(bundle, runs=dataclasses.replace(bundle.runs, frame=f))
    c3 = C.Claim("C3", "", "", None, 0.0, "", "inconclusive", "mixed: the metrics disagree; ev")
    text = R._to_settle(c3, b)
    assert text.startswith("not more seeds") and "retention" in text and "FT-2x" in text, text
    assert "platform" in R._to_settle(C.Claim("C2", "", "", None, 0.2, "", "inconclusive", "mixed: x"), b)
    assert "longer post-training" in R._to_settle(C.Claim("C4", "", "", None, 0.1, "", "inconclusive",
                                                          "still converging; ev"), b)
    assert "seeds of the single-seed arm" in R._to_settle(C.Claim("C5", "", "", None, 0.1, "", "inconclusive", "ev"), b)


def test_c8_is_judged_on_the_kl_from_the_pretrained_model(bundle, cfg, monkeypatch):
    """C8's primary metric: KL(pre-trained || unified model at init) on the held-out pre-training windows (0 for the
    pre-trained model itself), zero − closed form; the answer loss at init only as context."""
    base = _trained_like()
    assert np.allclose(X.window_kl(base, base, torch.randint(0, 61, (5, 17))), 0.0, atol=1e-9)
    other = _trained_like(seed=1)
    assert (X.window_kl(base, other, torch.randint(0, 61, (5, 17))) > 0).all()
    _rules_only(monkeypatch)
    kl = bundle.analysis.init_kl
    assert {"uniattn", "uniattn_zero", "uniattn_mean"} <= set(kl) and all((v >= -1e-9).all() for v in kl.values())
    c8 = {c.claim_id: c for c in R.claims(cfg, bundle)}["C8"]
    assert c8.metric.startswith("KL(pre-trained") and "context (not judged)" in c8.ours_ci
    assert bundle.comparisons.init_kl["point"] == pytest.approx(float((kl["uniattn_zero"] - kl["uniattn"]).mean()))
