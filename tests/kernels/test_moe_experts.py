"""The chained routed computation (dispatch → grouped SwiGLU → combine) against the brute-force definition
``out[t] = sum_k w[t,k] SwiGLU_{idx[t,k]}(x[t])`` (scattermoe's ``dumb_forward``), both implementations, all
gradients; float64 on the CPU path."""

import pytest
import torch
import torch.nn.functional as F

from kernel_cases import DEVICE, ROUTING_CASES, make_routing
from replicate.kernels import moe_experts
from replicate.kernels.testing import assert_close

D, FW = 20, 24


def dumb_forward(x, idx, w, wg, wu, wd):
    rows = []
    for t in range(x.shape[0]):
        acc = torch.zeros_like(x[t])
        for k in range(idx.shape[1]):
            e = int(idx[t, k])
            if e >= 0:
                acc = acc + w[t, k] * ((F.silu(x[t] @ wg[e]) * (x[t] @ wu[e])) @ wd[e])
        rows.append(acc)
    return torch.stack(rows)


def _leaves(T, E, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(T, D, generator=g, dtype=dtype), torch.randn(E, D, FW, generator=g, dtype=dtype) / D**0.5,
               torch.randn(E, D, FW, generator=g, dtype=dtype) / D**0.5, torch.randn(E, FW, D, generator=g, dtype=dtype) / FW**0.5]
    return [t.to(DEVICE) for t in tensors]


@pytest.mark.parametrize("impl, dtype", [pytest.param("torch", torch.float64, id="torch-fp64"),
                                         pytest.param("triton", torch.float32, id="triton-fp32")])
@pytest.mark.parametrize("T, E, K, kind", ROUTING_CASES)
def test_moe_experts_matches_brute_force(T, E, K, kind, impl, dtype):
    idx, w = make_routing(T, E, K, kind)
    w = w.to(dtype)
    x, wg, wu, wd = _leaves(T, E, dtype)
    ref_leaves = [t.clone().requires_grad_() for t in (x, w, wg, wu, wd)]
    act_leaves = [t.clone().requires_grad_() for t in (x, w, wg, wu, wd)]
    expect = dumb_forward(ref_leaves[0], idx, *ref_leaves[1:])
    got = moe_experts(act_leaves[0], idx, act_leaves[1], *act_leaves[2:], impl=impl)
    assert_close("out", expect, got)
    g = torch.randn_like(expect)
    gr_ref = torch.autograd.grad((expect * g).sum(), ref_leaves, allow_unused=True)
    gr_act = torch.autograd.grad((got * g).sum(), act_leaves)
    for name, a, b in zip(("dx", "dw", "dW_gate", "dW_up", "dW_down"), gr_ref, gr_act):
        assert_close(name, torch.zeros_like(b) if a is None else a, b, "bwd")


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_moe_experts_repeated_calls_are_bitwise_identical(impl):
    T, E, K = 29, 5, 2
    idx, w = make_routing(T, E, K, seed=1)
    x, wg, wu, wd = _leaves(T, E, torch.float32)
    leaves = [t.requires_grad_() for t in (x, wg, wu, wd)]
    runs = []
    for _ in range(3):
        out = moe_experts(leaves[0], idx, w, *leaves[1:], impl=impl)
        grads = torch.autograd.grad(out.square().sum(), leaves)
        runs.append((out, *grads))
    for later in runs[1:]:
        for a, b in zip(runs[0], later):
            assert torch.equal(a, b)
