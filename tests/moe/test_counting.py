"""Parameter / FLOP counters and budget matching (CartesianMoE Sec. 3.4 table, at the notes' small scale)."""

import pytest
import torch
from torch import nn

from replicate.models.ffn import SwiGLU, build_ffn
from replicate.moe import (
    ParamCount, check_budgets, dense_width_for_active, expert_width_for_total, ffn_flops_per_token, moe_params,
    param_counts, swiglu_params,
)


def test_moe_counts_match_analytic_formula():
    d, f, E, k, s = 32, 48, 8, 2, 48
    layer = build_ffn("moe", d_model=d, d_ff=f, n_experts=E, k=k, d_shared=s, shared_mix="gate")
    total, active = param_counts(layer)
    expect = moe_params(d, f, E, k, d_shared=s, shared_gate=True)
    assert total == expect.total == sum(p.numel() for p in layer.parameters())
    assert active == pytest.approx(expect.active)
    assert ffn_flops_per_token(layer) == pytest.approx(2 * expect.active)


def test_param_counts_walks_a_model_with_moe_inside():
    d = 16
    model = nn.Sequential(nn.Embedding(50, d), build_ffn("moe", d_model=d, d_ff=32, n_experts=4, k=1), SwiGLU(d, 20))
    c = param_counts(model)
    moe_total, moe_active = model[1].param_counts()
    assert c.total == sum(p.numel() for p in model.parameters())
    assert c.active == pytest.approx(50 * d + moe_active + swiglu_params(d, 20))


def test_cartesian_small_scale_budget_matches():
    """Notes §6: N=8, D=384 — SMoE-Share, SMoE-Top3 (8 x 432), Fine-grained (16 x 192 + shared 2 x 192) share
    total FFN width 3456; active width 1152 (Top3: 1296)."""
    d, D, N = 128, 384, 8
    variants = {
        "smoe_share": build_ffn("moe", d_model=d, d_ff=D, n_experts=N, k=2, d_shared=D),
        "smoe_top3": build_ffn("moe", d_model=d, d_ff=expert_width_for_total(d, swiglu_params(d, (N + 1) * D), N),
                               n_experts=N, k=3),
        "fine_grained": build_ffn("moe", d_model=d, d_ff=D // 2, n_experts=2 * N, k=4, d_shared=D),
    }
    assert variants["smoe_top3"].experts.d_expert == 432
    counts = {n: param_counts(v) for n, v in variants.items()}
    check_budgets(counts, "total", rtol=0.005)
    check_budgets({n: counts[n] for n in ("smoe_share", "fine_grained")}, "active", rtol=0.005)
    with pytest.raises(ValueError, match="smoe_top3"):
        check_budgets(counts, "active", rtol=0.005)  # Top3 is more active, as in the paper (258M vs 247M)
    dense_w = dense_width_for_active(d, counts["smoe_share"].active)
    assert abs(dense_w - 3 * D) <= 12  # the dense FFN with equal active params is ~3D wide (+ router/gate)


def test_sigmoid_moe_active_counts_follow_measured_activity():
    layer = build_ffn("sigmoid_moe", d_model=16, d_ff=64, n_experts=8, gate="threshold")
    total, active_all = layer.param_counts()
    assert active_all == total  # before any forward: every block counts
    layer(torch.randn(4, 16))
    k = float(layer.last_stats["active_per_token"])
    expert = 3 * 16 * 64
    assert layer.param_counts()[1] == pytest.approx(total - expert + expert * k / 8)
    assert isinstance(param_counts(layer), ParamCount)
