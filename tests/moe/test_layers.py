"""The MoE layer family on the PyTorch path: equivalences that pin the maths down, router semantics, aux losses,
load statistics, determinism, and the FFN registry."""

import pytest
import torch
import torch.nn.functional as F

import replicate.moe as moe
from replicate.models.ffn import SwiGLU, build_ffn
from replicate.moe import (
    ExpertBank, HashRouter, MaskedRouter, MoE, SigmoidGatedMoE, TopKRouter, TopPRouter,
    load_balancing_loss, router_z_loss,
)

D, FW = 16, 24


def oracle(layer: MoE, x_TD, routing):
    """Run every expert on every token, zero the unselected ones (the dense oracle of the notes)."""
    w_TE = torch.zeros(x_TD.shape[0], layer.n_experts, dtype=x_TD.dtype)
    for k in range(routing.topk_idx_TK.shape[1]):
        idx = routing.topk_idx_TK[:, k]
        ok = idx >= 0
        w_TE[ok, idx[ok]] += routing.topk_w_TK[ok, k].to(x_TD.dtype)
    return layer.experts.dense_combine(x_TD, w_TE)


# ---------------------------------------------------------------- equivalences


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_moe_with_one_expert_equals_dense_ffn(dtype):
    dense = SwiGLU(D, FW).to(dtype)
    layer = build_ffn("moe", d_model=D, d_ff=FW, n_experts=1, k=1).to(dtype)
    layer.experts = ExpertBank.from_dense(dense, 1)
    x = torch.randn(3, 5, D, dtype=dtype)
    y, aux = layer(x)
    torch.testing.assert_close(y, dense(x), atol=1e-6 if dtype == torch.float32 else 1e-12, rtol=1e-5)
    # and the gradient w.r.t. the input
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    layer(x1)[0].square().sum().backward()
    dense(x2).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=1e-5)


@pytest.mark.parametrize("n_experts, perm", [(1, False), (4, False), (6, False), (4, True)])
def test_partition_identity(n_experts, perm):
    dense = SwiGLU(D, 48).double()
    p = torch.randperm(48) if perm else None
    bank = ExpertBank.from_dense(dense, n_experts, p)
    x = torch.randn(11, D, dtype=torch.float64)
    torch.testing.assert_close(bank.all_outputs(x).sum(1), dense(x), atol=1e-12, rtol=1e-12)
    # routed with every expert at weight 1 gives the same
    idx = torch.arange(n_experts).expand(11, n_experts)
    torch.testing.assert_close(bank(x, idx, torch.ones(11, n_experts, dtype=torch.float64)), dense(x),
                               atol=1e-12, rtol=1e-12)
    # the gated layer with gate="none" is the dense FFN; to_dense inverts from_dense
    layer = SigmoidGatedMoE.from_dense(dense, n_experts, p, gate="none")
    torch.testing.assert_close(layer(x)[0], dense(x), atol=1e-12, rtol=1e-12)
    back = bank.to_dense()
    torch.testing.assert_close(back(x), dense(x), atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="divisible"):
        ExpertBank.from_dense(dense, 5)


ROUTER_FACTORIES = {
    "topk-k1": lambda: TopKRouter(D, 5, 1),
    "topk-k2-renorm": lambda: TopKRouter(D, 5, 2),
    "topk-kE": lambda: TopKRouter(D, 5, 5, renormalize=False),
    "topp": lambda: TopPRouter(D, 7, top_p=0.4),
    "hash-k2": lambda: HashRouter(50, 5, k=2, seed=1),
    "masked-k2": lambda: MaskedRouter(D, 5, 2, mask_VE=torch.rand(50, 5) < 0.5),
}


@pytest.mark.parametrize("name", list(ROUTER_FACTORIES))
def test_sparse_path_equals_dense_oracle_in_float64(name):
    router = ROUTER_FACTORIES[name]()
    n_experts = router.n_experts
    layer = MoE(D, FW, n_experts, router).double()
    x = torch.randn(4, 6, D, dtype=torch.float64)
    ids = torch.randint(0, 50, (4, 6))
    y, _ = layer(x, token_ids_BT=ids)
    r = layer.router(x.view(-1, D), ids.view(-1))
    torch.testing.assert_close(y.view(-1, D), oracle(layer, x.view(-1, D), r), atol=1e-12, rtol=1e-12)
    # gradients of the oracle and of the sparse path agree too (experts and router)
    x1 = x.clone().requires_grad_()
    y1, _ = layer(x1, token_ids_BT=ids)
    g_sparse = torch.autograd.grad(y1.square().sum(), [x1, *layer.parameters()], allow_unused=True)
    x2 = x.clone().requires_grad_()
    r2 = layer.router(x2.view(-1, D), ids.view(-1))
    w_TE = torch.zeros(24, n_experts, dtype=torch.float64)
    for k in range(r2.topk_idx_TK.shape[1]):
        idx = r2.topk_idx_TK[:, k]
        ok = idx >= 0
        w_TE = w_TE.index_put((torch.arange(24)[ok], idx[ok]), r2.topk_w_TK[ok, k].double(), accumulate=True)
    y2 = layer.experts.dense_combine(x2.view(-1, D), w_TE)
    g_dense = torch.autograd.grad(y2.square().sum(), [x2, *layer.parameters()], allow_unused=True)
    for a, b in zip(g_sparse, g_dense):
        if a is None or b is None:
            assert a is None and b is None or (a if a is not None else b).abs().max() == 0
            continue
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("build", [
    lambda: build_ffn("moe", d_model=D, d_ff=FW, n_experts=7, k=2, d_shared=8, z_coef=1e-3),
    lambda: build_ffn("sigmoid_moe", d_model=D, d_ff=FW, n_experts=4, gate="threshold"),
    lambda: build_ffn("sigmoid_moe", d_model=D, d_ff=FW, n_experts=4, gate="output"),
], ids=["moe", "dsmoe", "finedeep"])
def test_repeated_forwards_are_identical(build):
    layer = build()
    x = torch.randn(2, 9, D, requires_grad=True)
    runs = []
    for _ in range(5):
        y, aux = layer(x)
        loss = y.square().sum() + sum(aux.values(), torch.zeros(()))
        grads = torch.autograd.grad(loss, [x, *layer.parameters()], allow_unused=True)
        runs.append((y.detach(), *[g for g in grads if g is not None]))
    for later in runs[1:]:
        for a, b in zip(runs[0], later):
            assert torch.equal(a, b)


# ---------------------------------------------------------------- routers


def test_topk_router_semantics():
    r = TopKRouter(D, 6, 2)(torch.randn(10, D))
    assert r.topk_idx_TK.shape == (10, 2) and (r.topk_idx_TK >= 0).all()
    assert (r.topk_idx_TK[:, 0] != r.topk_idx_TK[:, 1]).all()
    torch.testing.assert_close(r.topk_w_TK.sum(-1), torch.ones(10))  # renormalized (k > 1)
    assert torch.equal(r.topk_idx_TK[:, 0], r.probs_TE.argmax(-1))
    assert r.counts_E.sum() == 20 and r.probs_TE.dtype == torch.float32
    r1 = TopKRouter(D, 6, 1)(torch.randn(10, D))
    torch.testing.assert_close(r1.topk_w_TK[:, 0], r1.probs_TE.max(-1).values)  # k = 1: not renormalized


def test_router_math_is_fp32_for_bf16_inputs():
    router = TopKRouter(D, 4, 2).to(torch.bfloat16)
    r = router(torch.randn(5, D, dtype=torch.bfloat16))
    assert r.logits_TE.dtype == r.probs_TE.dtype == r.topk_w_TK.dtype == torch.float32


def test_disable_top1_removes_the_best_expert():
    router = TopKRouter(D, 5, 2)
    x = torch.randn(12, D)
    best = router(x).topk_idx_TK[:, 0]
    router.disable_top1 = True
    r = router(x)
    assert (r.topk_idx_TK != best[:, None]).all()
    router.disable_top1 = False


def test_topp_router_keeps_the_fewest_experts_over_p():
    router = TopPRouter(D, 8, top_p=0.4)
    x = torch.randn(30, D) * 3
    r = router(x)
    for t in range(30):
        p_sorted = r.probs_TE[t].sort(descending=True).values
        n = int((r.topk_idx_TK[t] >= 0).sum())
        assert p_sorted[: n - 1].sum() < 0.4 and (p_sorted[:n].sum() >= 0.4 or n == 8)
        chosen = r.topk_idx_TK[t, :n]
        torch.testing.assert_close(r.topk_w_TK[t, :n], r.probs_TE[t, chosen])  # raw probabilities
        assert (r.topk_idx_TK[t, n:] == -1).all() and (r.topk_w_TK[t, n:] == 0).all()
    assert 1 <= router.k_active <= 8


def test_hash_router_is_a_fixed_function_of_the_token_id():
    router = HashRouter(40, 6, k=2, seed=3)
    ids = torch.tensor([3, 7, 3, 39, 7])
    r = router(torch.randn(5, D), ids)
    assert torch.equal(r.topk_idx_TK[0], r.topk_idx_TK[2]) and torch.equal(r.topk_idx_TK[1], r.topk_idx_TK[4])
    assert (r.topk_idx_TK[:, 0] != r.topk_idx_TK[:, 1]).all()
    assert torch.equal(r.topk_w_TK, torch.full((5, 2), 0.5))
    assert torch.equal(HashRouter(40, 6, k=2, seed=3).table_VK, router.table_VK)  # reproducible
    counts = torch.tensor([100, 90, 80, 70, 10, 5, 1, 1])
    balanced = HashRouter(8, 4, k=1, balanced_counts=counts).table_VK[:, 0]
    assert balanced[:4].tolist() == [0, 1, 2, 3]  # the four most frequent ids spread over the four experts
    with pytest.raises(ValueError, match="token ids"):
        router(torch.randn(2, D))


def test_masked_router_follows_the_mask_and_limits():
    V, E = 30, 6
    rank_VE = torch.rand(V, E, generator=torch.Generator().manual_seed(0)).argsort(-1).argsort(-1)
    mask = rank_VE < torch.where(torch.arange(V) < 6, 3, 1)[:, None]  # ids 0-5 see 3 random experts, the rest 1
    assert mask.sum(-1)[:6].eq(3).all() and mask.sum(-1)[6:].eq(1).all()  # top 20% of types see 3 experts
    router = MaskedRouter(D, E, 1, mask_VE=mask)
    ids = torch.randint(0, V, (40,))
    x = torch.randn(40, D, requires_grad=True)
    r = router(x, ids)
    assert mask[ids, r.topk_idx_TK[:, 0]].all()  # every routed expert is visible
    rare = ids >= 6
    assert torch.equal(r.topk_w_TK[rare, 0], torch.ones(int(rare.sum())))  # gate exactly 1
    # the routing-mask limits (MaskMoE notes 3.6): everything visible == plain top-k router, same weights
    full = MaskedRouter(D, E, 2, mask_VE=torch.ones(V, E, dtype=torch.bool))
    plain = TopKRouter(D, E, 2)
    plain.weight.data.copy_(full.weight.data)
    a, b = full(x, ids), plain(x)
    assert torch.equal(a.topk_idx_TK, b.topk_idx_TK) and torch.equal(a.topk_w_TK, b.topk_w_TK)
    # one visible expert per token == a hash layer with that table
    one = rank_VE < 1
    hashed = HashRouter(V, E, 1, table_VK=one.float().argmax(-1, keepdim=True))
    m = MaskedRouter(D, E, 1, mask_VE=one)(x, ids)
    h = hashed(x, ids)
    assert torch.equal(m.topk_idx_TK, h.topk_idx_TK) and torch.equal(m.topk_w_TK, h.topk_w_TK)


def test_masked_router_with_fewer_visible_experts_than_k_pads_slots():
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:, 2] = True
    r = MaskedRouter(D, 5, 2, mask_VE=mask)(torch.randn(3, D), torch.tensor([0, 1, 3]))
    assert r.topk_idx_TK[:, 0].eq(2).all() and r.topk_idx_TK[:, 1].eq(-1).all()
    assert r.topk_w_TK[:, 0].eq(1).all() and r.topk_w_TK[:, 1].eq(0).all()


# ---------------------------------------------------------------- sigmoid gates (DSMoE, Finedeep)


def test_threshold_gate_ste_gradient_pattern():
    """DSMoE Sec. 3.4: inactive experts' weights get no gradient, but their gate vector does (STE)."""
    torch.manual_seed(1)
    layer = SigmoidGatedMoE(D, 32, 4, gate="threshold", gate_init_std=0.5)
    x = torch.randn(1, 1, D)  # one token: per-expert activity is one bit
    y, aux = layer(x)
    active = layer.last_stats["load_E"] > 0
    assert 0 < int(active.sum()) < 4, "pick a seed with some active and some inactive experts"
    y.sum().backward()
    for w in (layer.experts.w_gate_EDF, layer.experts.w_up_EDF, layer.experts.w_down_EFD):
        assert (w.grad[~active] == 0).all() and (w.grad[active] != 0).any()
    assert (layer.gate.weight.grad.abs().sum(-1) > 0).all()  # every gate row learns, active or not
    # without the STE, inactive gates are dead
    layer.zero_grad()
    layer.gate.ste = False
    layer(x)[0].sum().backward()
    assert (layer.gate.weight.grad[~active] == 0).all()


def test_threshold_gate_forward_rescale_and_sparse_eval_agree():
    layer = SigmoidGatedMoE(D, 32, 8, gate="threshold", gate_init_std=0.3).double()
    x = torch.randn(3, 7, D, dtype=torch.float64)
    y_train, aux = layer(x)
    q = torch.sigmoid(layer.gate.logits(x.view(-1, D)))  # fp32, as the gate computes it
    w = q * (q > 0.5)
    w = w * (8 / (q > 0.5).sum(-1, keepdim=True).clamp(min=1))
    torch.testing.assert_close(y_train.view(-1, D), layer.experts.dense_combine(x.view(-1, D), w), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(aux["sparsity"], (q * (q > 0.5)).mean().float())
    layer.eval()
    layer.sparse_eval = True
    y_sparse, _ = layer(x)  # only active blocks run, through the routed kernels
    torch.testing.assert_close(y_sparse, y_train.detach(), atol=1e-10, rtol=1e-8)
    assert 0 < float(layer.last_stats["active_per_token"]) < 8


def test_sparse_eval_counts_the_same_active_experts_as_the_dense_path():
    """The sparse path's statistics (active experts per token, per-expert load) equal the dense path's, expert 0 and
    tokens with empty routing slots included: an empty slot (-1) must not erase expert 0's activity."""
    torch.manual_seed(5)
    layer = SigmoidGatedMoE(D, 32, 8, gate="threshold", gate_init_std=0.3).double().eval()
    with torch.no_grad():
        layer.gate.weight[0] = layer.gate.weight[0].abs() * 3  # expert 0 active on many tokens, others on some
    x = torch.randn(4, 9, D, dtype=torch.float64).abs()
    q = torch.sigmoid(layer.gate.logits(x.view(-1, D)))
    assert (q[:, 0] > 0.5).any() and ((q > 0.5).sum(-1) < 8).any()  # expert 0 on, and empty slots exist
    stats = {}
    for sparse in (False, True):
        layer.sparse_eval = sparse
        layer(x)
        stats[sparse] = dict(layer.last_stats)
    assert float(stats[True]["active_per_token"]) == pytest.approx(float((q > 0.5).sum(-1).double().mean()))
    shared = set(stats[True]) & set(stats[False])  # the dense path adds its sparsity loss
    assert "active_per_token" in shared and len(shared) >= 3
    for k in shared:
        torch.testing.assert_close(stats[True][k], stats[False][k], msg=k)


def test_output_gate_with_zero_router_is_half_the_dense_output():
    dense = SwiGLU(D, 32).double()
    layer = SigmoidGatedMoE.from_dense(dense, 4, gate="output").double()
    torch.nn.init.zeros_(layer.gate.weight)
    x = torch.randn(5, D, dtype=torch.float64)
    torch.testing.assert_close(layer(x)[0], 0.5 * dense(x), atol=1e-12, rtol=1e-12)


def test_input_soft_gate_has_no_sparsity_loss():
    layer = build_ffn("sigmoid_moe", d_model=D, d_ff=FW, n_experts=4, gate="input")
    y, aux = layer(torch.randn(2, 3, D))
    assert aux == {} and float(layer.last_stats["active_per_token"]) == 4


# ---------------------------------------------------------------- aux losses and statistics


def test_load_balancing_loss_values():
    E = 4
    uniform_p = torch.full((8, E), 0.25)
    spread = torch.arange(8).remainder(E)[:, None]
    assert float(load_balancing_loss(uniform_p, spread)) == pytest.approx(1.0)
    collapsed_p = F.one_hot(torch.zeros(8, dtype=torch.long), E).float()
    assert float(load_balancing_loss(collapsed_p, torch.zeros(8, 1, dtype=torch.long))) == pytest.approx(E)
    # first choice only ignores the second slot; empty slots are not counted
    idx = torch.tensor([[0, 1], [0, -1]])
    p = torch.tensor([[0.6, 0.4, 0, 0], [1.0, 0, 0, 0]])
    assert float(load_balancing_loss(p, idx, first_choice_only=True)) == pytest.approx(4 * 0.8)
    assert float(load_balancing_loss(p, idx)) == pytest.approx(4 * (2 / 3 * 0.8 + 1 / 3 * 0.2))
    z = torch.randn(5, 4)
    torch.testing.assert_close(router_z_loss(z), (torch.logsumexp(z, -1) ** 2).mean())


def test_moe_returns_weighted_aux_and_logs_load():
    layer = build_ffn("moe", d_model=D, d_ff=FW, n_experts=6, k=2, balance_coef=0.01, z_coef=0.001)
    x = torch.randn(3, 8, D)
    y, aux = layer(x)
    assert set(aux) == {"load_balance", "z_loss"} and all(v.ndim == 0 and v.requires_grad for v in aux.values())
    s = layer.last_stats
    torch.testing.assert_close(aux["load_balance"], 0.01 * s["balance_loss"])
    torch.testing.assert_close(aux["z_loss"], 0.001 * s["z_loss"])
    assert s["load_E"].shape == (6,) and float(s["load_E"].sum()) == pytest.approx(1.0)
    assert float(s["empty_slot_frac"]) == 0 and float(s["active_per_token"]) == 2
    assert all(not v.requires_grad for v in s.values())
    # the balance loss trains the router
    aux["load_balance"].backward()
    assert layer.router.weight.grad.abs().sum() > 0
    # hash routing has no router probabilities: no balance loss
    h = build_ffn("moe", d_model=D, d_ff=FW, n_experts=6, k=1, router="hash", vocab_size=20)
    _, aux_h = h(x, token_ids_BT=torch.randint(0, 20, (3, 8)))
    assert aux_h == {}


def test_shared_expert_mixes():
    x = torch.randn(2, 4, D)
    add = build_ffn("moe", d_model=D, d_ff=FW, n_experts=3, k=1, d_shared=12, shared_mix="add")
    routed = add.experts(x.view(-1, D), *[getattr(add.router(x.view(-1, D)), n) for n in ("topk_idx_TK", "topk_w_TK")])
    torch.testing.assert_close(add(x)[0].view(-1, D), routed + add.shared(x.view(-1, D)))
    gate = build_ffn("moe", d_model=D, d_ff=FW, n_experts=3, k=1, d_shared=12, shared_mix="gate")
    torch.nn.init.zeros_(gate.shared_gate.weight)
    torch.nn.init.zeros_(gate.shared_gate.bias)  # a = (1/2, 1/2)
    r = gate.router(x.view(-1, D))
    expect = 0.5 * gate.experts(x.view(-1, D), r.topk_idx_TK, r.topk_w_TK) + 0.5 * gate.shared(x.view(-1, D))
    torch.testing.assert_close(gate(x)[0].view(-1, D), expect)


@pytest.mark.parametrize("mix", ["add", "gate"])
def test_shared_scale_halves_the_shared_expert(mix):
    """``shared_scale=0.5``: the shared SwiGLU of width 2f is the mean of two width-f experts, ½(S1 + S2)
    (CartesianMoE's Fine-grained baseline); the routed part and the gate are unchanged."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, D, dtype=torch.float64)
    one = build_ffn("moe", d_model=D, d_ff=FW, n_experts=3, k=2, d_shared=12, shared_mix=mix).double()
    half = build_ffn("moe", d_model=D, d_ff=FW, n_experts=3, k=2, d_shared=12, shared_mix=mix, shared_scale=0.5).double()
    half.load_state_dict(one.state_dict())
    x_TD = x.view(-1, D)
    r = one.router(x_TD)
    routed = one.experts(x_TD, r.topk_idx_TK, r.topk_w_TK)
    s1, s2 = one.shared.down_proj.weight[:, :6], one.shared.down_proj.weight[:, 6:]  # the two width-6 halves
    h = F.silu(x_TD @ one.shared.gate_proj.weight.T) * (x_TD @ one.shared.up_proj.weight.T)
    mean = 0.5 * (h[:, :6] @ s1.T + h[:, 6:] @ s2.T)  # ½(S1 + S2)
    if mix == "add":
        expect = routed + mean
    else:
        a = torch.softmax(x_TD @ one.shared_gate.weight.T + one.shared_gate.bias, -1)
        expect = a[:, :1] * routed + a[:, 1:] * mean
    torch.testing.assert_close(half(x)[0].view(-1, D), expect)
    assert not torch.allclose(one(x)[0], half(x)[0])  # the scale does change the output


def test_score_scale_multiplies_the_routed_weights():
    """``score_scale`` (LLaMA-MoE's score_scale_factor): the routed output is exactly that constant times the unscaled
    one, and the router's gradient is scaled by it too; a shared expert is not scaled."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, D, dtype=torch.float64)
    one = build_ffn("moe", d_model=D, d_ff=FW, n_experts=4, k=2, balance_coef=0.0).double()
    s = build_ffn("moe", d_model=D, d_ff=FW, n_experts=4, k=2, balance_coef=0.0, score_scale=2.0).double()
    s.load_state_dict(one.state_dict())
    torch.testing.assert_close(s(x)[0], 2.0 * one(x)[0])
    one(x)[0].sum().backward()
    s(x)[0].sum().backward()
    torch.testing.assert_close(s.router.weight.grad, 2.0 * one.router.weight.grad)
    sh = build_ffn("moe", d_model=D, d_ff=FW, n_experts=4, k=2, d_shared=8, shared_mix="add", score_scale=3.0).double()
    x_TD = x.view(-1, D)
    r = sh.router(x_TD)
    torch.testing.assert_close(sh(x)[0].view(-1, D), 3.0 * sh.experts(x_TD, r.topk_idx_TK, r.topk_w_TK) + sh.shared(x_TD))


def test_registry_and_errors():
    from replicate.models.ffn import FFN_REGISTRY

    assert {"moe", "sigmoid_moe"} <= set(FFN_REGISTRY)
    with pytest.raises(ValueError, match="unknown router"):
        build_ffn("moe", d_model=D, d_ff=FW, router="expert_choice")
    with pytest.raises(ValueError, match="vocab_size"):
        build_ffn("moe", d_model=D, d_ff=FW, router="hash")
    with pytest.raises(ValueError, match="mask_VE"):
        build_ffn("moe", d_model=D, d_ff=FW, router="masked")
    with pytest.raises(ValueError, match="k=9"):
        build_ffn("moe", d_model=D, d_ff=FW, n_experts=4, k=9)
    assert isinstance(moe.build_moe(d_model=D, d_ff=FW), MoE)


def test_masked_router_full_gate_keeps_the_routing_and_learns_the_gate():
    V, E = 20, 4
    one = torch.nn.functional.one_hot(torch.arange(V) % E, E).bool()  # one visible expert per token
    masked = MaskedRouter(D, E, 1, mask_VE=one)
    full = MaskedRouter(D, E, 1, mask_VE=one, gate="full")
    full.weight.data.copy_(masked.weight.data)
    ids = torch.randint(0, V, (30,))
    x = torch.randn(30, D)
    a, b = masked(x, ids), full(x, ids)
    assert torch.equal(a.topk_idx_TK, b.topk_idx_TK)  # the mask alone decides where a token goes
    assert a.topk_w_TK.eq(1).all()  # masked softmax: gate exactly 1
    p = torch.softmax(x @ full.weight.T, -1)
    assert torch.allclose(b.topk_w_TK[:, 0], p[torch.arange(30), ids % E])  # the chosen expert's full probability
    b.topk_w_TK.sum().backward()
    assert full.weight.grad.abs().sum() > 0  # the gate is learned although the routing is frozen
    sig = MaskedRouter(D, E, 1, mask_VE=one, gate="sigmoid")
    sig.weight.data.copy_(masked.weight.data)
    c = sig(x, ids)
    assert torch.equal(a.topk_idx_TK, c.topk_idx_TK)
    logit = (x @ sig.weight.T)[torch.arange(30), ids % E]
    assert torch.allclose(c.topk_w_TK[:, 0], torch.sigmoid(logit))  # StableMoE's gate: sigmoid of its own logit
    assert not torch.allclose(c.topk_w_TK[:, 0], b.topk_w_TK[:, 0])
    with pytest.raises(ValueError, match="gate"):
        MaskedRouter(D, E, 1, mask_VE=one, gate="soft")
