"""Token dispatch (permute): Triton vs reference, exact equality of every output and of the input gradient.

Routing-metadata invariants (Liger's fused-MoE tests): ``order`` is a permutation and ``inv`` its inverse,
keys are sorted and the sort is stable, offsets are the cumulative counts and end at the number of filled
slots, empty slots land after every expert, rows of empty slots are zero.
"""

import pytest
import torch

from kernel_cases import DEVICE, ROUTING_CASES, make_routing
from replicate.kernels.permute.reference import dispatch_reference
from replicate.kernels.permute.triton import dispatch_triton

D = 19  # odd width


def _check_invariants(d, idx, x, E):
    T, K = idx.shape
    N = T * K
    key = torch.where(idx < 0, E, idx).flatten()
    assert torch.equal(torch.sort(d.order_N).values, torch.arange(N, device=idx.device))
    assert torch.equal(d.inv_TK.flatten()[d.order_N], torch.arange(N, device=idx.device))
    sorted_key = key[d.order_N]
    assert (sorted_key[1:] >= sorted_key[:-1]).all()
    same = sorted_key[1:] == sorted_key[:-1]
    assert (d.order_N[1:][same] > d.order_N[:-1][same]).all(), "not stable"
    assert torch.equal(d.counts_E, torch.bincount(idx[idx >= 0], minlength=E))
    assert d.offsets_E1[0] == 0 and torch.equal(d.offsets_E1[1:], torch.cumsum(d.counts_E, 0))
    assert int(d.offsets_E1[-1]) == int((idx >= 0).sum())
    n_filled = int(d.offsets_E1[-1])
    assert torch.equal(d.x_perm_ND[:n_filled], x[d.order_N[:n_filled] // K])
    assert torch.equal(d.x_perm_ND[n_filled:], torch.zeros_like(d.x_perm_ND[n_filled:]))


@pytest.mark.parametrize("T, E, K, kind", ROUTING_CASES)
def test_permute_triton_matches_reference(T, E, K, kind):
    idx, _ = make_routing(T, E, K, kind)
    x = torch.randn(T, D, device=DEVICE)
    x_ref, x_tri = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = dispatch_reference(x_ref, idx, E)
    tri = dispatch_triton(x_tri, idx, E)
    _check_invariants(ref, idx, x, E)
    _check_invariants(tri, idx, x, E)
    for name in ("x_perm_ND", "order_N", "inv_TK", "offsets_E1", "counts_E"):
        a, b = getattr(ref, name), getattr(tri, name)
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), name
    g = torch.randn_like(ref.x_perm_ND)
    (gx_ref,) = torch.autograd.grad((ref.x_perm_ND * g).sum(), x_ref)
    (gx_tri,) = torch.autograd.grad((tri.x_perm_ND * g).sum(), x_tri)
    # the gradient of x[t] is the sum of its filled slots' rows
    expect = torch.zeros_like(x)
    for t in range(T):
        for k in range(K):
            if idx[t, k] >= 0:
                expect[t] += g[ref.inv_TK[t, k]]
    torch.testing.assert_close(gx_ref, expect, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gx_tri, gx_ref, atol=1e-6, rtol=1e-6)


def test_permute_larger_than_one_block_is_stable():
    """Slots spread over several 64-slot blocks: the cross-block prefix sum must keep token order."""
    T, E, K = 150, 3, 2
    idx, _ = make_routing(T, E, K, "random", seed=3)
    x = torch.randn(T, 8, device=DEVICE)
    ref, tri = dispatch_reference(x, idx, E), dispatch_triton(x, idx, E)
    _check_invariants(tri, idx, x, E)
    assert torch.equal(ref.order_N, tri.order_N) and torch.equal(ref.x_perm_ND, tri.x_perm_ND)
