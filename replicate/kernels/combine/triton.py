"""Deterministic combine, Triton. Semantics: ``reference.py``.

Forward ``_combine_fwd_kernel``: one program per (BLOCK_T tokens, BLOCK_D columns); for k = 0..K-1 in order it
gathers row ``inv[t, k]`` of y and accumulates ``w[t, k] * y`` in fp32. No atomics, fixed summation order.
Backward ``_combine_bwd_kernel``: one program per BLOCK_T tokens, looping over D: writes
``dy[inv[t, k]] = w[t, k] * dout[t]`` (a permutation: each row once) and reduces ``dw[t, k] = <dout[t], y[inv[t, k]]>``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from replicate.kernels.dispatch import check_triton_usable

check_triton_usable()


@triton.jit
def _combine_fwd_kernel(
    y_ptr, inv_ptr, w_ptr, out_ptr, T, D, s_yn, s_ot,
    K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    rm = rows < T
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    acc = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
    for j in tl.static_range(K):
        pos = tl.load(inv_ptr + rows * K + j, mask=rm, other=0)
        w = tl.load(w_ptr + rows * K + j, mask=rm, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + pos[:, None] * s_yn + d[None, :], mask=rm[:, None] & dm[None, :], other=0.0)
        acc += w[:, None] * y.to(tl.float32)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * s_ot + d[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=rm[:, None] & dm[None, :])


@triton.jit
def _combine_bwd_kernel(
    g_ptr, y_ptr, inv_ptr, w_ptr, gy_ptr, gw_ptr, T, D, s_gt, s_yn,
    K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    rm = rows < T
    rows64 = rows.to(tl.int64)
    for j in tl.static_range(K):
        pos = tl.load(inv_ptr + rows * K + j, mask=rm, other=0)
        w = tl.load(w_ptr + rows * K + j, mask=rm, other=0.0).to(tl.float32)
        gw = tl.zeros((BLOCK_T,), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            m = rm[:, None] & (d < D)[None, :]
            g = tl.load(g_ptr + rows64[:, None] * s_gt + d[None, :], mask=m, other=0.0).to(tl.float32)
            y = tl.load(y_ptr + pos[:, None] * s_yn + d[None, :], mask=m, other=0.0).to(tl.float32)
            gw += tl.sum(g * y, axis=1)
            tl.store(gy_ptr + pos[:, None] * s_yn + d[None, :], (w[:, None] * g).to(gy_ptr.dtype.element_ty), mask=m)
        tl.store(gw_ptr + rows * K + j, gw, mask=rm)


def _blocks(D: int):
    return 16, min(128, triton.next_power_of_2(D))


class _CombineFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_perm_ND, inv_TK, topk_w_TK):
        y = y_perm_ND.contiguous()
        inv = inv_TK.contiguous()
        w = topk_w_TK.contiguous()
        T, K = inv.shape
        D = y.shape[1]
        out = torch.empty((T, D), dtype=y.dtype, device=y.device)
        BT, BD = _blocks(D)
        _combine_fwd_kernel[(triton.cdiv(T, BT), triton.cdiv(D, BD))](
            y, inv, w, out, T, D, y.stride(0), out.stride(0), K=K, BLOCK_T=BT, BLOCK_D=BD
        )
        ctx.save_for_backward(y, inv, w)
        return out

    @staticmethod
    def backward(ctx, g):
        y, inv, w = ctx.saved_tensors
        g = g.contiguous()
        T, K = inv.shape
        D = y.shape[1]
        gy = torch.empty_like(y)
        gw = torch.empty((T, K), dtype=torch.float32, device=y.device)
        BT, BD = _blocks(D)
        _combine_bwd_kernel[(triton.cdiv(T, BT),)](
            g, y, inv, w, gy, gw, T, D, g.stride(0), y.stride(0), K=K, BLOCK_T=BT, BLOCK_D=BD
        )
        return gy, None, gw.to(w.dtype)


def combine_triton(y_perm_ND: torch.Tensor, inv_TK: torch.Tensor, topk_w_TK: torch.Tensor) -> torch.Tensor:
    return _CombineFunction.apply(y_perm_ND, inv_TK, topk_w_TK)
