"""Grouped SwiGLU experts, PyTorch: the spec of ``triton.py`` and the CPU path.

Shapes: N sorted slots (tokens grouped by expert, ``permute``), D model width, F expert width, E experts.
Weights are stacked: ``w_gate_EDF``, ``w_up_EDF`` ([E, D, F]) and ``w_down_EFD`` ([E, F, D]). Expert e owns the
rows ``offsets[e] : offsets[e+1]`` of ``x_perm_ND``:

    g = x Wg_e,  u = x Wu_e,  h = silu(g) * u,  y = h Wd_e        on rows_e      (SwiGLU, Shazeer 2020)
    y[rows >= offsets[E]] = 0                                                    (empty slots)

``grouped_swiglu_loop`` is that, literally, with autograd (the obviously-correct form, used by the tests).
``grouped_swiglu_reference`` computes the same numbers with a hand-written backward, because autograd through
E row slices is slow on the CPU: the backward of ``x[lo:hi]`` (and of ``w[e]``) materialises a zero tensor of
the *full* size per expert and adds them up, O(E * N * D) memory traffic, and ``torch.cat`` copies the output
once more. Here each expert costs only its matrix products, written straight into preallocated buffers
(``out=`` on row slices), and the elementwise SwiGLU parts run once over all N rows:

    forward:   g[rows_e] = x Wg_e;  u[rows_e] = x Wu_e           (loop: 2 mm per expert)
               h = silu(g) * u                                    (all rows at once)
               y[rows_e] = h Wd_e                                 (loop: 1 mm per expert)
    backward:  dh[rows_e] = dy Wd_e^T;  dWd_e = h^T dy            (loop)
               s = sigmoid(g);  du = dh * g s;  dg = dh * u * s (1 + g (1 - s))     (all rows at once)
               dx[rows_e] = dg Wg_e^T + du Wu_e^T;  dWg_e = x^T dg;  dWu_e = x^T du   (loop)
Empty experts get zero weight gradients; empty-slot rows get zero output and zero input gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grouped_swiglu_loop(x_perm_ND, offsets_E1, w_gate_EDF, w_up_EDF, w_down_EFD) -> torch.Tensor:
    """The literal loop over experts, autograd for the backward (slow on the CPU; the tests' spec)."""
    bounds = offsets_E1.tolist()
    y = x_perm_ND.new_zeros(x_perm_ND.shape)
    for e in range(w_gate_EDF.shape[0]):
        lo, hi = bounds[e], bounds[e + 1]
        if hi > lo:
            x_e = x_perm_ND[lo:hi]
            y = y.index_put((torch.arange(lo, hi),), (F.silu(x_e @ w_gate_EDF[e]) * (x_e @ w_up_EDF[e])) @ w_down_EFD[e])
    return y


class _GroupedSwiGLUTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, offsets_E1, wg, wu, wd):
        bounds = offsets_E1.tolist()  # host copy: the loop needs Python ints
        E = wg.shape[0]
        N, D = x.shape
        Fw = wg.shape[2]
        n_rows = bounds[E]
        g = x.new_empty((n_rows, Fw))
        u = x.new_empty((n_rows, Fw))
        for e in range(E):
            lo, hi = bounds[e], bounds[e + 1]
            if hi > lo:
                torch.mm(x[lo:hi], wg[e], out=g[lo:hi])
                torch.mm(x[lo:hi], wu[e], out=u[lo:hi])
        h = F.silu(g).mul_(u)  # [n_rows, F]
        y = x.new_empty((N, D))
        y[n_rows:].zero_()  # empty slots
        for e in range(E):
            lo, hi = bounds[e], bounds[e + 1]
            if hi > lo:
                torch.mm(h[lo:hi], wd[e], out=y[lo:hi])
        ctx.bounds = bounds
        ctx.save_for_backward(x, wg, wu, wd, g, u)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, wg, wu, wd, g, u = ctx.saved_tensors
        bounds = ctx.bounds
        E = wg.shape[0]
        n_rows = bounds[E]
        dy = dy.contiguous()
        s = torch.sigmoid(g)
        a = g * s  # silu(g)
        h = a * u
        dh = g.new_empty(g.shape)
        empty = [e for e in range(E) if bounds[e + 1] == bounds[e]]
        d_wd = torch.empty_like(wd)  # every expert's block is written below (zeros for empty experts)
        d_wd[empty] = 0
        for e in range(E):
            lo, hi = bounds[e], bounds[e + 1]
            if hi > lo:
                torch.mm(dy[lo:hi], wd[e].T, out=dh[lo:hi])
                torch.mm(h[lo:hi].T, dy[lo:hi], out=d_wd[e])
        du = dh * a
        dg = dh.mul_(u).mul_(s.mul_((1.0 - s).mul_(g).add_(1.0)))  # dh * u * s * (1 + g (1 - s)), in place
        dx = x.new_empty(x.shape)
        dx[n_rows:].zero_()
        d_wg, d_wu = torch.empty_like(wg), torch.empty_like(wu)
        d_wg[empty] = 0
        d_wu[empty] = 0
        for e in range(E):
            lo, hi = bounds[e], bounds[e + 1]
            if hi > lo:
                torch.mm(dg[lo:hi], wg[e].T, out=dx[lo:hi])
                dx[lo:hi].addmm_(du[lo:hi], wu[e].T)
                torch.mm(x[lo:hi].T, dg[lo:hi], out=d_wg[e])
                torch.mm(x[lo:hi].T, du[lo:hi], out=d_wu[e])
        return dx, None, d_wg, d_wu, d_wd


def grouped_swiglu_reference(
    x_perm_ND: torch.Tensor,
    offsets_E1: torch.Tensor,
    w_gate_EDF: torch.Tensor,
    w_up_EDF: torch.Tensor,
    w_down_EFD: torch.Tensor,
) -> torch.Tensor:
    return _GroupedSwiGLUTorch.apply(x_perm_ND, offsets_E1, w_gate_EDF, w_up_EDF, w_down_EFD)
