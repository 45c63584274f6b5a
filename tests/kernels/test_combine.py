"""Deterministic combine: Triton vs reference vs a per-token loop; forward, d(expert outputs), d(weights);
bitwise repeatability."""

import pytest
import torch

from kernel_cases import DEVICE, ROUTING_CASES, make_routing
from replicate.kernels.combine.reference import combine_reference
from replicate.kernels.combine.triton import combine_triton
from replicate.kernels.permute.reference import sort_slots_reference
from replicate.kernels.testing import assert_close

D = 21


@pytest.mark.parametrize("T, E, K, kind", ROUTING_CASES)
def test_combine_triton_matches_reference(T, E, K, kind):
    idx, w = make_routing(T, E, K, kind)
    _, inv, offsets, _ = sort_slots_reference(idx, E)
    y = torch.randn(T * K, D, device=DEVICE)
    y[int(offsets[-1]):] = 0  # rows of empty slots are zero, as grouped_swiglu leaves them
    ins_ref = [y.clone().requires_grad_(), w.clone().requires_grad_()]
    ins_tri = [y.clone().requires_grad_(), w.clone().requires_grad_()]
    out_ref = combine_reference(ins_ref[0], inv, ins_ref[1])
    out_tri = combine_triton(ins_tri[0], inv, ins_tri[1])
    expect = torch.stack([sum((w[t, k] * y[inv[t, k]] for k in range(K)), torch.zeros(D, device=DEVICE))
                          for t in range(T)])
    assert_close("out (reference vs loop)", expect, out_ref)
    assert_close("out", out_ref, out_tri)
    g = torch.randn_like(out_ref)
    grads_ref = torch.autograd.grad((out_ref * g).sum(), ins_ref)
    grads_tri = torch.autograd.grad((out_tri * g).sum(), ins_tri)
    for name, a, b in zip(("d_y", "d_w"), grads_ref, grads_tri):
        assert_close(name, a, b, "bwd")
    # d_w[t, k] = <g[t], y[inv[t, k]]>
    assert_close("d_w (reference vs definition)", (g[:, None, :] * y[inv]).sum(-1), grads_ref[1], "bwd")


@pytest.mark.parametrize("fn", [combine_reference, combine_triton], ids=["reference", "triton"])
def test_combine_is_bitwise_repeatable(fn):
    T, E, K = 37, 5, 2
    idx, w = make_routing(T, E, K)
    _, inv, _, _ = sort_slots_reference(idx, E)
    y = torch.randn(T * K, 16, device=DEVICE)
    assert torch.equal(fn(y, inv, w), fn(y, inv, w))
