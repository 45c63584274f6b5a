"""Grouped SwiGLU: the CPU path (hand-written backward) vs the literal autograd loop, and Triton vs the CPU path;
output and the gradients of x, W_gate, W_up, W_down. Groups of size 0, 1 and all rows; empty-slot rows."""

import pytest
import torch

from kernel_cases import DEVICE
from replicate.kernels.grouped_swiglu.reference import grouped_swiglu_loop, grouped_swiglu_reference
from replicate.kernels.grouped_swiglu.triton import grouped_swiglu_triton
from replicate.kernels.testing import assert_close

CASES = [
    # (counts per expert, empty-slot rows at the end, D, F)
    pytest.param([1], 0, 16, 16, id="N1-E1-single_row"),
    pytest.param([3, 0, 4, 1, 0], 0, 24, 40, id="N8-E5-empty_and_size1_groups"),
    pytest.param([0, 0, 45], 0, 17, 33, id="N45-E3-all_rows_one_expert-odd_dims"),
    pytest.param([7, 30, 2, 9, 1, 5, 0], 6, 32, 24, id="N60-E7-prime_E-empty_slots"),
    pytest.param([5, 5], 3, 8, 20, id="N13-E2-D_below_16"),
]


def _inputs(counts, n_pad, D, F, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    E = len(counts)
    N = sum(counts) + n_pad
    offsets = torch.zeros(E + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(counts), 0)
    x = torch.randn(N, D, generator=g, dtype=dtype)
    x[sum(counts):] = 0
    ws = [torch.randn(E, D, F, generator=g, dtype=dtype) / D**0.5, torch.randn(E, D, F, generator=g, dtype=dtype) / D**0.5,
          torch.randn(E, F, D, generator=g, dtype=dtype) / F**0.5]
    return x.to(DEVICE), offsets.to(DEVICE), [w.to(DEVICE) for w in ws]


def _run(fn, x, offsets, ws, g_out):
    leaves = [x.clone().requires_grad_()] + [w.clone().requires_grad_() for w in ws]
    y = fn(leaves[0], offsets, *leaves[1:])
    grads = torch.autograd.grad((y * g_out).sum(), leaves)
    return y, grads


@pytest.mark.parametrize("counts, n_pad, D, F", CASES)
def test_grouped_swiglu_cpu_path_matches_autograd_loop(counts, n_pad, D, F):
    x, offsets, ws = _inputs(counts, n_pad, D, F, torch.float64)
    g_out = torch.randn(x.shape[0], D, dtype=torch.float64, device=DEVICE)
    y_loop, gr_loop = _run(grouped_swiglu_loop, x, offsets, ws, g_out)
    y_ref, gr_ref = _run(grouped_swiglu_reference, x, offsets, ws, g_out)
    assert_close("y", y_loop, y_ref)
    for name, a, b in zip(("dx", "dW_gate", "dW_up", "dW_down"), gr_loop, gr_ref):
        assert_close(name, a, b, "bwd")
    assert torch.equal(y_ref[sum(counts):], torch.zeros_like(y_ref[sum(counts):]))


@pytest.mark.parametrize("counts, n_pad, D, F", CASES)
def test_grouped_swiglu_triton_matches_reference(counts, n_pad, D, F):
    x, offsets, ws = _inputs(counts, n_pad, D, F)
    g_out = torch.randn(x.shape[0], D, device=DEVICE)
    y_ref, gr_ref = _run(grouped_swiglu_reference, x, offsets, ws, g_out)
    y_tri, gr_tri = _run(grouped_swiglu_triton, x, offsets, ws, g_out)
    assert_close("y", y_ref, y_tri)
    for name, a, b in zip(("dx", "dW_gate", "dW_up", "dW_down"), gr_ref, gr_tri):
        assert_close(name, a, b, "bwd")
    E = len(counts)
    for e in range(E):
        if counts[e] == 0:  # an expert with no tokens gets exactly zero gradient
            for gw in gr_tri[1:]:
                assert torch.equal(gw[e], torch.zeros_like(gw[e]))


def test_grouped_swiglu_triton_accepts_strided_weights():
    """Weights that are views (e.g. a transposed parameter) are read through their strides."""
    x, offsets, (wg, wu, wd) = _inputs([4, 3], 0, 16, 24)
    wd_strided = wd.transpose(1, 2).contiguous().transpose(1, 2)  # same values, strides (F*D, 1, F)
    assert not wd_strided.is_contiguous()
    assert_close("y", grouped_swiglu_reference(x, offsets, wg, wu, wd),
                 grouped_swiglu_triton(x, offsets, wg, wu, wd_strided))
