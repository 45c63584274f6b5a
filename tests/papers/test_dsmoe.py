"""DSMoE replication (replicate/papers/dsmoe/): the paper's mechanism -- the partition's experts sum to the dense FFN
exactly; without the STE a gate that starts below τ gets no gradient, with it it does (and equals the spec's
reference); the n/k rescale is the same in training and inference; k = 0 active experts passes the token through the
residual; the sparsity loss summed over layers is exactly λ/(L·N) Σ_l Σ_j mean_t G; at inference inactive experts are
not computed -- the pruning baselines' conversions, and the whole plan at ``smoke``: its artifacts, its mechanism
checks, its validity policy and verdict rules that can fail."""

import dataclasses
import functools
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from replicate.config import ConfigError
from replicate.experiments import Bundle
from replicate.models.decoder import Block, Decoder, DecoderConfig, LayerSpec
from replicate.models.context import ForwardContext
from replicate.models.ffn import SwiGLU, build_ffn
from replicate.models.trainer import CONVERSIONS
from replicate.moe.layer import SigmoidGatedMoE
from replicate.papers import dsmoe, resolve_config
from replicate.papers.dsmoe import baselines as B
from replicate.papers.dsmoe import experiments as X
from replicate.papers.dsmoe import method as M
from replicate.papers.dsmoe import report as R

PAPER = "dsmoe"  # the shared fixtures (conftest.py): env, cfg = its smoke config
d, D, N = 16, 32, 4


# ------------------------------------------------------------------------------------------------- config


def test_scales_and_unconfirmed_choices(cfg):
    small = resolve_config(PAPER, "small")
    assert (small.n_experts, small.tau, small.lam, small.n_seeds) == (8, 0.5, 1.0, 3)
    assert (small.topk_split, small.topk_scale, small.soft_rescale, small.gate_init_std) == (
        "contiguous", "n_over_k", False, 0.02)
    assert (small.workers, small.threads) == (2, 1) and small.run_ablations
    assert small.d_ff % small.n_experts == 0 and 0.5 in small.tau_sweep
    assert cfg.run_ablations and cfg.n_seeds >= 2  # every path at smoke, a seed spread included
    assert dsmoe.DSMoEConfig.paper().n_layers >= 12  # the W-shape claim's path exists at `paper`
    for split in dsmoe.TOPK_SPLITS:
        assert resolve_config(PAPER, "smoke", topk_split=split).topk_split == split
    with pytest.raises(ConfigError, match="d_ff"):
        resolve_config(PAPER, "smoke", d_ff=66)
    with pytest.raises(ConfigError, match="topk_k"):
        resolve_config(PAPER, "smoke", topk_k=5)
    with pytest.raises(ConfigError, match="topk_scale"):
        resolve_config(PAPER, "smoke", topk_scale="sqrt")
    with pytest.raises(ConfigError, match="lam_sweep"):
        resolve_config(PAPER, "smoke", lam=0.25, lam_sweep=(0.25,))


# ---------------------------------------------------------------------------------------------- the part


def _layer(seed=0, std=0.5, **kw) -> SigmoidGatedMoE:
    torch.manual_seed(seed)
    layer = build_ffn("dsmoe", d_model=d, d_ff=D, n_experts=N, gate_init_std=std, **kw).double()
    layer.gate.weight.data = layer.gate.weight.data.float()  # the gate's math is fp32 (as in the decoder)
    return layer


def test_registered_part_is_the_shared_sigmoid_gated_moe_with_the_paper_weighting():
    layer = build_ffn("dsmoe", d_model=d, d_ff=D, n_experts=N, lam=0.6, n_layers=3)
    assert isinstance(layer, SigmoidGatedMoE) and layer.gate_kind == "threshold" and layer.sparse_eval
    assert layer.gate.ste and layer.gate.rescale and layer.gate.threshold == 0.5
    assert layer.sparsity_coef == pytest.approx(0.6 / 3)
    soft = build_ffn("dsmoe", d_model=d, d_ff=D, n_experts=N, soft=True)
    assert soft.gate.threshold is None and soft.sparsity_coef == 0.0 and not soft.gate.rescale


@pytest.mark.parametrize("perm_seed", [-1, 3])
def test_partition_of_a_dense_decoder_sums_to_the_dense_ffn_exactly(perm_seed):
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=50, d_model=d, n_layers=2, n_heads=2, d_ff=D, max_seq_len=16)
    dense = Decoder(cfg).double()
    target = Decoder(dataclasses.replace(cfg, layers=(LayerSpec(ffn="dsmoe", ffn_kwargs=(("n_experts", N),)),) * 2))
    sd = CONVERSIONS["dsmoe_partition"]({f"model.{k}": v for k, v in dense.state_dict().items()},
                                        type("M", (), {"model": target})(), perm_seed=perm_seed)
    target.load_state_dict({k.removeprefix("model."): v for k, v in sd.items()})
    target.double()
    x = torch.randn(40, d, dtype=torch.float64)
    for blk_d, blk_t in zip(dense.layers, target.layers):
        o = blk_t.ffn.experts.all_outputs(x)  # [T, n, d]
        assert (o.sum(1) - blk_d.ffn(x)).abs().max() <= 1e-12  # Σ_i o_i = FFN(ĥ)
        assert (o[:, 0] - blk_d.ffn(x)).abs().max() > 1e-3  # one expert is not the whole FFN
    assert torch.equal(target.embed.weight, dense.embed.weight)  # everything else copied


def test_reference_forward_matches_the_part_in_value_and_every_gradient():
    layer = _layer()
    x = torch.randn(50, d, dtype=torch.float64)
    E = layer.experts
    wg = E.w_gate_EDF.permute(1, 0, 2).reshape(d, D)
    wu = E.w_up_EDF.permute(1, 0, 2).reshape(d, D)
    wd = E.w_down_EFD.reshape(D, d)
    Y = layer.gate.weight.T
    for training in (True, False):
        layer.train(training)
        layer.sparse_eval = False  # the dense-compute path, with autograd
        y, aux = layer(x)
        y_ref, share, k = M.reference_forward(x.float(), wg.float(), wu.float(), wd.float(), Y, 0.5, training=training)
        torch.testing.assert_close(y.float(), y_ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(aux["sparsity"], share * layer.sparsity_coef)
        assert 0 < float(k.min()) or float(k.max()) > 0
    layer.train()
    g_part = torch.autograd.grad(layer(x)[0].float().square().sum(), layer.gate.weight)[0]
    Yr = layer.gate.weight.detach().clone().requires_grad_(True)
    y_ref, _, _ = M.reference_forward(x.float(), wg.float().detach(), wu.float().detach(), wd.float().detach(), Yr.T,
                                      0.5, training=True)
    g_ref = torch.autograd.grad(y_ref.square().sum(), Yr)[0]
    torch.testing.assert_close(g_part, g_ref, atol=1e-4, rtol=1e-3)


def test_without_ste_a_gate_below_tau_gets_no_gradient_with_ste_it_does():
    """Expert 0's gate starts at q = 0.5 exactly (Y_0 = 0), not > τ = 0.5: inactive for every token. Without the STE
    (G in training) its gate vector gets exactly zero gradient -- a dead expert; with it, a non-zero one. Its
    expert weights get none either way (its forward weight is 0)."""
    x = torch.randn(30, d, dtype=torch.float64)
    grads = {}
    for ste in (False, True):
        layer = _layer(seed=1, ste=ste)
        layer.gate.weight.data[0] = 0.0
        layer.train()
        y, _ = layer(x)
        q = torch.sigmoid(layer.gate.logits(x))
        assert (q[:, 0] == 0.5).all() and (q[:, 1:] > 0.5).any()
        y.square().sum().backward()
        grads[ste] = layer.gate.weight.grad[0].clone()
        assert (layer.experts.w_up_EDF.grad[0] == 0).all() and (layer.experts.w_up_EDF.grad[1:] != 0).any()
    assert (grads[False] == 0).all()
    assert grads[True].abs().sum() > 0


def test_without_ste_a_gate_pushed_below_tau_never_comes_back_with_ste_it_can():
    """The ratchet C4 rests on, over optimiser steps: every token's gate 0 starts just below τ while the loss wants
    expert 0 on (its output is the target). Without the STE the gate gets no gradient, so it stays below τ however
    long it trains; with the STE the LM gradient lifts it above τ."""
    torch.manual_seed(3)
    x = torch.randn(64, d, dtype=torch.float64)
    x[:, 0] = 3.0 + 0.1 * x[:, 0]  # a shared positive feature: Y_0 = -0.05 e_0 puts every token's q_0 below τ
    up = {}
    for ste in (False, True):
        layer = _layer(seed=4, std=0.0, ste=ste, lam=0.0)
        with torch.no_grad():
            target = layer.experts.all_outputs(x)[:, 0].detach() * N  # what expert 0 alone, rescaled, gives
            layer.gate.weight.zero_()
            layer.gate.weight[1:] = 1.0  # the other gates on (the rescale has a k > 0)
            layer.gate.weight[0, 0] = -0.05
        start = layer.gate.weight[0].detach().clone()
        assert (torch.sigmoid(layer.gate.logits(x))[:, 0] < 0.5).all()
        layer.train()
        opt = torch.optim.Adam(layer.gate.parameters(), lr=0.05)
        for _ in range(40):
            opt.zero_grad()
            y, _ = layer(x)
            (y - target).square().mean().backward()
            opt.step()
        up[ste] = float((torch.sigmoid(layer.gate.logits(x))[:, 0] > 0.5).double().mean())
        if not ste:
            assert torch.equal(layer.gate.weight[0].detach(), start)  # not one step moved it
    assert up[False] == 0.0 and up[True] > 0.5


def test_rescale_is_the_same_in_training_and_inference():
    layer = _layer(seed=2, std=0.4)
    x = torch.randn(64, d, dtype=torch.float64)
    q = torch.sigmoid(layer.gate.logits(x)).double()
    act = q > 0.5
    k = act.sum(-1)
    assert len(set(k.tolist())) >= 3  # tokens with different k
    o = layer.experts.all_outputs(x)
    expect = (N / k.clamp(min=1))[:, None] * torch.einsum("te,ted->td", q * act, o)  # (n/k) Σ_i G(q_i) o_i
    layer.train()
    y_train, _ = layer(x)
    layer.eval()  # the sparse path: only active experts run, through the routed kernels
    with torch.no_grad():
        y_eval, _ = layer(x)
    torch.testing.assert_close(y_train.detach(), expect, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(y_eval, expect, atol=1e-6, rtol=1e-5)
    # without the rescale the output is Σ G o: the factor n/k is what differs
    layer.gate.rescale = False
    torch.testing.assert_close(layer(x)[0], torch.einsum("te,ted->td", q * act, o), atol=1e-6, rtol=1e-5)


def test_k_zero_passes_the_token_through_the_residual():
    """Every gate at q = 0.5 (Y = 0), none > τ: k = 0 for every token. The FFN adds exactly 0 in training and at
    inference, the block's output is its post-attention stream, and nothing is NaN (the n/k guard)."""
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=50, d_model=d, n_layers=1, n_heads=2, d_ff=D, max_seq_len=16,
                        layers=(LayerSpec(ffn="dsmoe", ffn_kwargs=(("n_experts", N),)),))
    block = Block(cfg, 0)
    torch.nn.init.zeros_(block.ffn.gate.weight)
    x = torch.randn(2, 8, d, requires_grad=True)
    from replicate.models.position import POSITION

    pos = POSITION["rope"](cfg)
    for training in (True, False):
        block.train(training)
        h = x + block.attn(block.attn_norm(x), pos, ForwardContext())
        out, aux = block(x, pos, ForwardContext())
        assert torch.equal(out, h)
        assert float(block.ffn.last_stats["active_per_token"]) == 0.0
    block.train()
    out, aux = block(x, pos, ForwardContext())
    (out.sum() + aux["sparsity"]).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(block.ffn.gate.weight.grad).all()
    assert aux["sparsity"].item() == 0.0


def test_sparsity_loss_summed_over_layers_is_the_papers_weighting():
    """L_sparse = λ/(L·N) Σ_l Σ_j mean_t G(q^l_j), recomputed by hand from each layer's captured input; and it has
    no gradient for gates below τ (G is flat there)."""
    torch.manual_seed(3)
    L, lam = 3, 0.7
    spec = LayerSpec(ffn="dsmoe", ffn_kwargs=(("n_experts", N), ("lam", lam), ("n_layers", L), ("gate_init_std", 0.5)))
    model = Decoder(DecoderConfig(vocab_size=50, d_model=d, n_layers=L, n_heads=2, d_ff=D, max_seq_len=16,
                                  layers=(spec,) * L))
    ins = {}
    for i, blk in enumerate(model.layers):
        blk.ffn.register_forward_pre_hook(lambda mod, a, i=i: ins.__setitem__(i, a[0].reshape(-1, d)) and None)
    ids = torch.randint(0, 50, (2, 10))
    _, aux = model.loss(ids, ids)
    G = [(lambda q: q * (q > 0.5))(torch.sigmoid(ins[i] @ model.layers[i].ffn.gate.weight.T)) for i in range(L)]
    by_hand = lam / (L * N) * sum(g.sum(1).mean() for g in G)  # (λ/(L·N)) Σ_l Σ_j mean_t G
    torch.testing.assert_close(aux["sparsity"], by_hand.float())
    assert not torch.allclose(aux["sparsity"], sum(g.mean() for g in G).float())  # an unweighted sum differs
    # gradient of the sparsity loss alone: G is flat below τ, so a gate vector at or below τ on every token gets none
    # from its own term. The last layer's (earlier layers' gates also reach later layers' terms through the STE'd
    # weights: their inputs depend on the earlier FFN outputs)
    last = model.layers[-1].ffn
    last.gate.weight.data[0] = 0.0  # q = 0.5 exactly: not above τ
    model.zero_grad()
    _, aux = model.loss(ids, ids)
    aux["sparsity"].backward()
    q = torch.sigmoid(ins[L - 1] @ last.gate.weight.T)
    assert (q[:, 0] <= 0.5).all() and (q[:, 1:] > 0.5).any()
    assert (last.gate.weight.grad[0] == 0).all()
    assert (last.gate.weight.grad[1:].abs().sum(-1) > 0).any()  # active gates are pushed down


def test_at_inference_inactive_experts_are_not_computed(monkeypatch):
    layer = _layer(seed=4, std=0.4).eval()
    x = torch.randn(40, d, dtype=torch.float64)
    q = torch.sigmoid(layer.gate.logits(x))
    n_active = int((q > 0.5).sum())
    assert 0 < n_active < 40 * N
    seen = []

    def routed(x_TD, idx_TK, w_TK, _orig=layer.experts.forward):
        seen.append(int((idx_TK >= 0).sum()))
        return _orig(x_TD, idx_TK, w_TK)

    monkeypatch.setattr(layer.experts, "forward", routed)
    monkeypatch.setattr(layer.experts, "all_outputs", lambda *a: pytest.fail("every expert computed at inference"))
    with torch.no_grad():
        layer(x)
    assert seen == [n_active]  # exactly the (token, expert) pairs above τ went through the experts
    assert M.inference_ffn_flops(d, D, N, n_active / 40) == pytest.approx(2 * d * N + n_active / 40 * 6 * d * (D // N))


def test_set_threshold_and_gate_values():
    torch.manual_seed(0)
    spec = LayerSpec(ffn="dsmoe", ffn_kwargs=(("n_experts", N), ("soft", True)))
    model = Decoder(DecoderConfig(vocab_size=50, d_model=d, n_layers=2, n_heads=2, d_ff=D, max_seq_len=16,
                                  layers=(spec,) * 2)).eval()
    w = torch.randint(0, 50, (3, 9))
    qs = M.gate_values(model, w)
    assert len(qs) == 2 and qs[0].shape == (3 * 8, N) and ((qs[0] > 0) & (qs[0] < 1)).all()
    soft_out = model(w[:, :-1]).logits
    M.set_threshold(model, 1.0)  # nothing passes: every FFN adds 0
    none_out = model(w[:, :-1]).logits
    M.set_threshold(model, 0.0)  # everything passes without rescale: the soft model again
    torch.testing.assert_close(model(w[:, :-1]).logits, soft_out)
    assert not torch.allclose(none_out, soft_out)


# ------------------------------------------------------------------------------------------------ baselines


def test_magnitude_mask_and_masked_swiglu():
    torch.manual_seed(0)
    w = torch.randn(7, 9)
    m = B.magnitude_mask(w, 0.3)
    assert int(m.sum()) == round(0.3 * 63)
    assert w.abs()[m.bool()].min() >= w.abs()[~m.bool()].max()
    dense = SwiGLU(d, D)
    masked = B.MaskedSwiGLU(d, D)
    masked.load_state_dict(dense.state_dict(), strict=False)
    x = torch.randn(5, d)
    torch.testing.assert_close(masked(x), dense(x))  # all-ones masks: the SwiGLU
    masked.down_proj_mask.zero_()
    masked.down_proj_mask[:, :3] = 1
    masked(x).sum().backward()
    assert (masked.down_proj.weight.grad[:, 3:] == 0).all() and (masked.down_proj.weight.grad[:, :3] != 0).any()
    assert masked.nonzero_params() == 2 * d * D + 3 * d


def test_prune_conversions():
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=50, d_model=d, n_layers=2, n_heads=2, d_ff=D, max_seq_len=16)
    dense = Decoder(cfg)
    sd = {f"model.{k}": v for k, v in dense.state_dict().items()}
    imp = B.neuron_importance(dense, torch.randint(0, 50, (4, 9)))
    assert len(imp) == 2 and imp[0].shape == (D,) and (imp[0] >= 0).all()
    keep = B.keep_top(imp, 10)
    narrow = Decoder(dataclasses.replace(cfg, layers=(LayerSpec(d_ff=10),) * 2))
    out = CONVERSIONS["prune_neurons"](sd, None, keep=keep)
    narrow.load_state_dict({k.removeprefix("model."): v for k, v in out.items()})
    x = torch.randn(6, d)
    f, g = dense.layers[0].ffn, narrow.layers[0].ffn
    idx = list(keep[0])
    a = torch.nn.functional.silu(f.gate_proj(x)) * f.up_proj(x)
    torch.testing.assert_close(g(x), a[:, idx] @ f.down_proj.weight[:, idx].T)  # exactly the kept neurons
    masked = Decoder(dataclasses.replace(cfg, layers=(LayerSpec(ffn="masked_swiglu"),) * 2))
    out = CONVERSIONS["prune_magnitude"](sd, None, density=0.25)
    masked.load_state_dict({k.removeprefix("model."): v for k, v in out.items()})
    assert masked.layers[1].ffn.nonzero_params() == 3 * round(0.25 * d * D)


def test_topk_arm_uses_the_same_partition_and_the_score_scale(cfg):
    spec = X.topk_spec(cfg, 2)
    kw = dict(spec.ffn_kwargs)
    assert spec.ffn == "moe" and spec.d_ff == cfg.d_ff // cfg.n_experts
    assert kw["k"] == 2 and kw["score_scale"] == cfg.n_experts / 2
    assert dict(X.topk_spec(dataclasses.replace(cfg, topk_scale="none"), 2).ffn_kwargs)["score_scale"] == 1.0
    assert X.conversion_of(cfg, "topk", None) == ("dsmoe_partition", {"perm_seed": -1})
    assert X.conversion_of(dataclasses.replace(cfg, topk_split="random"), "topk", None)[1]["perm_seed"] == cfg.seed


def test_w_shape_rule():
    assert R.w_shape([5, 3, 2, 3, 5, 4, 3, 2, 3, 4, 5, 6])
    assert not R.w_shape(list(range(12)))  # monotone: no W
    assert not R.w_shape([6, 5, 4, 3, 2, 1, 1, 2, 3, 4, 5, 6])  # a V: no middle bump


# ------------------------------------------------------------------------------------------ the plan at smoke


@pytest.fixture(scope="module")
def bundle(env, cfg):
    return dsmoe.run_experiments(cfg)


def test_plan_at_smoke(cfg, bundle, tmp_path):
    m = bundle.mechanism
    assert m["ok"].all(), m[~m["ok"]]
    f = bundle.runs.frame
    assert set(f["variant"]) == set(X.ARMS) | {X.lam_arm(x) for x in cfg.lam_sweep}
    assert sorted(f[f["variant"] == "dsmoe"]["seed"]) == list(range(cfg.seed, cfg.seed + cfg.n_seeds))
    assert np.isfinite(f["loss"]).all() and (f["loss"] > 0).all()
    match = bundle.runs.match
    assert 0 < match["frac"] <= 1 and 1 <= match["k"] <= cfg.n_experts and len(match["keep"]) == cfg.n_layers
    a = bundle.analysis.activation
    assert set(a["domain"]) == {"all", "english", "code"} and (a["active_experts"] <= cfg.n_experts).all()
    sw = bundle.sweeps.frame
    ds = sw[sw["model"] == "dsmoe"].sort_values("tau")
    assert (np.diff(ds["active_experts"].to_numpy()) <= 1e-12).all()  # re-thresholding: a higher τ never activates more
    assert set(cfg.tau_sweep) | {cfg.tau} <= set(ds["tau"]) and ds["grid"].str.contains("quantile").any()
    assert ds["tau"].is_unique and set(sw["in_range"]) <= {True, False}
    assert set(R.dead_experts(bundle)["variant"]) == {"dsmoe", "dsmoe_no_ste", "dsmoe_soft", X.lam_arm(0.25)}
    assert len(bundle.comparisons.domain["null"]) == cfg.null_gates
    inf = R.inference_table(bundle).set_index(["variant", "path"])
    assert inf.loc[("dsmoe", "as run at inference"), "ffn_flops_vs_dense"] < inf.loc[
        ("dsmoe", "every expert computed"), "ffn_flops_vs_dense"]
    for fn in (R.setup, R.validity_table, R.table1, R.table3, R.table4, R.inference_table, R.activation_table):
        t = fn(bundle)
        assert len(t)
    t1 = R.table1(bundle)
    assert set(t1["source"]) == {"paper", "ours"} and (t1[t1["source"] == "paper"]["ppl"] == 7.41).any()
    for fig in (R.fig2, R.fig3, R.fig_gate_hist):
        fig(bundle).savefig(tmp_path / f"{fig.__name__}.png")
    cl = {c.claim_id: c for c in R.claims(cfg, bundle)}
    assert list(cl) == [f"C{i}" for i in range(1, 9)]
    assert cl["C7"].verdict == "not_run"  # 2 layers: the W shape needs the `paper` scale
    assert "Closing note" in R.closing_note(cfg, bundle)


def test_run_calls_are_picklable(cfg, bundle):
    for a in X.ARMS:
        pickle.dumps(functools.partial(X.train_arm, cfg, bundle.data, a, cfg.seed, bundle.runs.match))


def test_continued_runs_read_the_shared_checkpoint_while_another_process_holds_its_lock(cfg, bundle):
    """Workers training continued runs side by side all start from the one pre-trained run: reading it must not
    take the run's lock (``train`` would refuse the second reader), and must give the same weights."""
    from replicate.io import Busy, run_lock
    from replicate.paths import runs_dir

    key = X.pretrain_spec(cfg, bundle.data).key
    with run_lock(runs_dir() / PAPER / key / ".lock", "another worker"):
        with pytest.raises(Busy):
            X.train_pretrain(cfg, bundle.data)
        got = X.pretrained(cfg, bundle.data)
    assert got["key"] == key and all(torch.equal(got["state_dict"][k], v)
                                     for k, v in bundle.pretrain["state_dict"].items())


def _with(bundle: Bundle, **steps) -> Bundle:
    values = dict(bundle._values)
    values.update(steps)
    return Bundle(values, dict(bundle.seconds))


def _learned(bundle: Bundle) -> Bundle:
    """The smoke bundle with count-model bars every smoke run beats (the smoke runs learn nothing): the claims are
    then judged on their numbers, so the rules themselves can be tested."""
    lm = dataclasses.replace(bundle.data.lm, unigram_nats=99.0,
                             seen_bigram_nats={s: 99.0 for s in bundle.data.lm.seen_bigram_nats})
    return _with(bundle, data=dataclasses.replace(bundle.data, lm=lm))


def test_a_run_above_its_seen_bigram_makes_the_model_claims_invalid(cfg, bundle):
    ok = _learned(bundle)
    assert all(c.verdict != "invalid" for c in R.claims(cfg, ok))
    lm = dataclasses.replace(ok.data.lm, seen_bigram_nats={s: 0.01 for s in ok.data.lm.seen_bigram_nats})
    bad = _with(ok, data=dataclasses.replace(ok.data, lm=lm))
    cl = {c.claim_id: c for c in R.claims(cfg, bad)}
    for cid in ("C1", "C2", "C3", "C4", "C5", "C6", "C8"):
        assert cl[cid].verdict == "invalid" and "Kneser-Ney" in cl[cid].evidence
    # a failed mechanism check, or a baseline off DSMoE's activated parameters, invalidates too
    mech = ok.mechanism.copy()
    mech.loc[mech["check"] == "activated parameters topk vs DSMoE (relative)", "ok"] = False
    assert {c.claim_id: c for c in R.claims(cfg, _with(ok, mechanism=mech))}["C1"].verdict == "invalid"


def test_verdict_rules_can_fail(cfg, bundle):
    """C1 on a null (identical arms: zero gaps) is never reproduced; on clear positive gaps it is; on clear
    negative ones it is not_reproduced. C8 on a null domain gap stays inconclusive."""
    ok = _learned(bundle)
    cmp_ = ok.comparisons
    n = cfg.n_seeds

    def c1(gaps):
        pc = dict(cmp_.per_seed, **{"topk - dsmoe": gaps})
        b = _with(ok, comparisons=dataclasses.replace(cmp_, per_seed=pc, drift={}))
        return {c.claim_id: c for c in R.claims(cfg, b)}["C1"].verdict

    assert c1([0.0] * n) == "inconclusive"
    assert c1([0.05 + 0.001 * i for i in range(n)]) == "reproduced"
    assert c1([0.05 + 0.001 * i for i in range(n)]) == "reproduced"
    assert c1([-0.05 - 0.001 * i for i in range(n)]) == "not_reproduced"
    dom = dict(cmp_.domain, reps=np.linspace(-0.1, 0.1, 101), point=0.0)
    b = _with(ok, comparisons=dataclasses.replace(cmp_, domain=dom))
    assert {c.claim_id: c for c in R.claims(cfg, b)}["C8"].verdict == "inconclusive"

    def c8(seed_gaps, null):
        dom = dict(cmp_.domain, reps=np.linspace(0.4, 0.6, 101), point=0.5, null=np.asarray(null),
                   seed_gaps=dict(enumerate(seed_gaps)))
        return R._c8(_with(ok, comparisons=dataclasses.replace(cmp_, domain=dom))).verdict

    assert c8([0.5, 0.6, 0.3], np.linspace(-0.2, 0.2, 20)) == "reproduced"
    assert c8([0.5, 0.6, 0.3], np.linspace(-0.5, 0.5, 20)) == "inconclusive"  # untrained gates differ as much
    assert c8([0.5, -0.1, 0.3], np.linspace(-0.05, 0.05, 20)) == "inconclusive"  # the seeds disagree in sign


def _sweep_bundle(ok, cfg, rows):
    """``ok`` with the trained DSMoE's sweep replaced by ``rows`` (tau, loss, active_frac): per-window losses all
    equal to the point's loss, so the paired intervals are degenerate at the gaps."""
    W = len(ok.data.windows)
    frame = pd.DataFrame([{"model": "dsmoe", "tau": t, "grid": "fixed", "loss": l, "ppl": np.exp(l),
                           "active_experts": a * cfg.n_experts, "active_frac": a,
                           "in_range": bool(0 < l <= np.log(ok.data.n_ids))} for t, l, a in rows])
    losses = {("dsmoe", t): np.full(W, l) for t, l, _ in rows}
    sw = X.Sweeps(frame, losses)
    reps_of = lambda d_w: np.tile(d_w.mean(), 50)  # noqa: E731
    cmp_ = dataclasses.replace(ok.comparisons, tau=X.tau_halves(cfg, sw, reps_of))
    return _with(ok, sweeps=sw, comparisons=cmp_)


def test_c6_judges_only_valid_sweep_points_and_needs_both_halves(cfg, bundle):
    """C6: points above ln V or with (almost) every expert on or off are not judged; the loss must rise above the
    training τ and fall below it; a half going the wrong way refutes; too few valid points leave it undecided."""
    ok = _learned(bundle)
    lnv = float(np.log(ok.data.n_ids))
    mono = [(0.2, 3.0, 1.0), (0.4, 3.1, 0.7), (0.5, 3.2, 0.5), (0.6, 3.4, 0.3), (0.8, lnv + 1, 0.0)]
    b = _sweep_bundle(ok, cfg, mono)
    assert b.comparisons.tau["up"]["tau"] == 0.6 and b.comparisons.tau["down"]["tau"] == 0.4  # 0.8, 0.2 excluded
    assert R._c6(b).verdict == "reproduced"
    knee = [(0.4, 3.25, 0.8), (0.5, 3.2, 0.5), (0.6, 3.4, 0.3)]  # more experts, higher loss below τ
    assert R._c6(_sweep_bundle(ok, cfg, knee)).verdict == "not_reproduced"
    flat = [(0.4, 3.2, 0.8), (0.5, 3.2, 0.5), (0.6, 3.4, 0.3)]
    assert R._c6(_sweep_bundle(ok, cfg, flat)).verdict == "inconclusive"
    cliff = [(0.2, 3.0, 1.0), (0.5, 3.2, 0.5), (0.8, lnv + 1, 0.0)]  # nothing valid beside the training τ
    c = R._c6(_sweep_bundle(ok, cfg, cliff))
    assert c.verdict == "inconclusive" and "(> ln V)" in c.ours_ci


def test_c4_judges_the_ablated_arm_as_a_capacity_loss(cfg, bundle):
    """The no-STE arm above its bigram bar (what dead gates do) keeps C4 judgeable; above the unigram, or a parent
    that never beat the bigram, makes it invalid; DSMoE itself still needs its bigram bar."""
    ok = _learned(bundle)
    lm = ok.data.lm
    loss = float(ok.runs.frame.query("variant == 'dsmoe_no_ste'")["loss"].iloc[0])
    ds = float(ok.runs.frame.query("variant == 'dsmoe'")["loss"].max())
    pre = R._pretrain_loss(ok)

    def c4(unigram, seen):
        lm2 = dataclasses.replace(lm, unigram_nats=unigram, seen_bigram_nats={s: seen for s in lm.seen_bigram_nats})
        b = _with(ok, data=dataclasses.replace(ok.data, lm=lm2))
        return {c.claim_id: c for c in R.claims(cfg, b)}["C4"]

    hi = max(loss, ds, pre) + 1.0
    assert c4(hi + 1.0, hi).verdict != "invalid"
    if loss > max(ds, pre):  # the ablated arm alone above the bar: still judged
        assert c4(hi + 1.0, (loss + max(ds, pre)) / 2).verdict != "invalid"
    assert c4(min(loss, ds, pre) - 1.0, hi).verdict == "invalid"  # nothing below the unigram
    assert c4(hi + 1.0, min(ds, pre) - 0.5).verdict == "invalid"  # DSMoE / the parent above its bar
