"""Grouped SwiGLU experts, Triton. Semantics: ``reference.py``.

Work is cut into row tiles that never straddle two experts. A tile table (built in PyTorch from the offsets,
without a host sync: its length is the upper bound ``cdiv(N, BLOCK_M) + E``, unused tiles have an empty row
range and return at once) gives each program its expert and rows.

Forward, two launches:
  ``_gate_up_kernel``   g = x Wg_e, u = x Wu_e, h = silu(g) * u         [rows, F-tile]; stores h, g, u
  ``_grouped_mm_kernel`` y = h Wd_e                                     [rows, D-tile]
Backward (memory: g, u and h are kept from the forward instead of recomputed; they are N x F each):
  ``_grouped_mm_kernel`` dh = dy Wd_e^T with the SwiGLU-backward epilogue
                         dg = dh * u * silu'(g),  du = dh * silu(g),   silu'(g) = s (1 + g (1 - s)), s = sigmoid(g)
  ``_grouped_mm_kernel`` dx = dg Wg_e^T + du Wu_e^T                     (two products, one accumulator)
  ``_grouped_wgrad_kernel`` dWd_e = h_e^T dy_e, dWg_e = x_e^T dg_e, dWu_e = x_e^T du_e: one program per
                         (expert, tile of the weight) loops over the expert's rows, so no atomics; an empty
                         expert writes zeros.
Accumulation is fp32. fp32 inputs use IEEE ``tl.dot`` unless ``ALLOW_TF32`` is set (tests keep it off);
bf16 inputs run only on a GPU (the interpreter has no bf16 ``tl.dot``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from replicate.kernels.dispatch import check_triton_usable

check_triton_usable()

ALLOW_TF32 = False  # module switch (scattermoe): fp32 tolerance 1e-4 needs IEEE products

BLOCK_M = 32


def _precision(dtype: torch.dtype) -> str:
    return "tf32" if (dtype != torch.float32 or ALLOW_TF32) else "ieee"


def _blocks(n: int, cap: int = 64) -> int:
    return max(16, min(cap, triton.next_power_of_2(n)))


def tile_table(offsets_E1: torch.Tensor, n_rows: int, block_m: int = BLOCK_M):
    """``(tile_expert, tile_start, tile_end)``, int32, one entry per row tile; unused tiles are (0, 0, 0)."""
    E = offsets_E1.numel() - 1
    counts = offsets_E1[1:] - offsets_E1[:-1]
    tiles_E = (counts + block_m - 1) // block_m
    cum = torch.cumsum(tiles_E, 0)
    first = cum - tiles_E
    n_tiles = triton.cdiv(max(n_rows, 1), block_m) + E
    t = torch.arange(n_tiles, device=offsets_E1.device)
    e = torch.searchsorted(cum, t, right=True)
    used = e < E
    e_c = e.clamp(max=E - 1)
    start = offsets_E1[e_c] + (t - first[e_c]) * block_m
    end = offsets_E1[e_c + 1]
    zero = torch.zeros_like(start)
    return (
        torch.where(used, e_c, 0).to(torch.int32),
        torch.where(used, start, zero).to(torch.int32),
        torch.where(used, end, zero).to(torch.int32),
    )


@triton.jit
def _gate_up_kernel(
    x_ptr, wg_ptr, wu_ptr, h_ptr, g_ptr, u_ptr, tile_e_ptr, tile_s_ptr, tile_t_ptr,
    D, F,
    s_xn, s_we, s_wd, s_wf, s_hn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    r0 = tl.load(tile_s_ptr + tile)
    r1 = tl.load(tile_t_ptr + tile)
    if r0 >= r1:
        return
    e = tl.load(tile_e_ptr + tile).to(tl.int64)
    rows = r0 + tl.arange(0, BLOCK_M)
    rm = rows < r1
    rows64 = rows.to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cm = cols < F
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        km = ks < D
        a = tl.load(x_ptr + rows64[:, None] * s_xn + ks[None, :], mask=rm[:, None] & km[None, :], other=0.0)
        w_off = e * s_we + ks[:, None] * s_wd + cols[None, :] * s_wf
        bm = km[:, None] & cm[None, :]
        acc_g += tl.dot(a, tl.load(wg_ptr + w_off, mask=bm, other=0.0), input_precision=PRECISION)
        acc_u += tl.dot(a, tl.load(wu_ptr + w_off, mask=bm, other=0.0), input_precision=PRECISION)
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    o = rows64[:, None] * s_hn + cols[None, :]
    om = rm[:, None] & cm[None, :]
    tl.store(h_ptr + o, h.to(h_ptr.dtype.element_ty), mask=om)
    tl.store(g_ptr + o, acc_g.to(g_ptr.dtype.element_ty), mask=om)
    tl.store(u_ptr + o, acc_u.to(u_ptr.dtype.element_ty), mask=om)


@triton.jit
def _grouped_mm_kernel(
    a_ptr, b_ptr, a2_ptr, b2_ptr, c_ptr, g_ptr, u_ptr, dg_ptr, du_ptr,
    tile_e_ptr, tile_s_ptr, tile_t_ptr,
    KD, M,
    s_an, s_be, s_bk, s_bm, s_cn,
    HAS_SECOND: tl.constexpr, SWIGLU_BWD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """C[rows_e] = A[rows_e] @ B_e (+ A2[rows_e] @ B2_e); B_e given by strides (so B_e^T costs nothing).
    With SWIGLU_BWD the product is dh and the kernel stores dg, du instead of C (C's strides are g/u's)."""
    tile = tl.program_id(0)
    r0 = tl.load(tile_s_ptr + tile)
    r1 = tl.load(tile_t_ptr + tile)
    if r0 >= r1:
        return
    e = tl.load(tile_e_ptr + tile).to(tl.int64)
    rows = r0 + tl.arange(0, BLOCK_M)
    rm = rows < r1
    rows64 = rows.to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cm = cols < M
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, KD, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        km = ks < KD
        am = rm[:, None] & km[None, :]
        bm = km[:, None] & cm[None, :]
        a_off = rows64[:, None] * s_an + ks[None, :]
        b_off = e * s_be + ks[:, None] * s_bk + cols[None, :] * s_bm
        acc += tl.dot(tl.load(a_ptr + a_off, mask=am, other=0.0), tl.load(b_ptr + b_off, mask=bm, other=0.0),
                      input_precision=PRECISION)
        if HAS_SECOND:
            acc += tl.dot(tl.load(a2_ptr + a_off, mask=am, other=0.0), tl.load(b2_ptr + b_off, mask=bm, other=0.0),
                          input_precision=PRECISION)
    o = rows64[:, None] * s_cn + cols[None, :]
    om = rm[:, None] & cm[None, :]
    if SWIGLU_BWD:
        g = tl.load(g_ptr + o, mask=om, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + o, mask=om, other=0.0).to(tl.float32)
        s = tl.sigmoid(g)
        tl.store(dg_ptr + o, (acc * u * s * (1.0 + g * (1.0 - s))).to(dg_ptr.dtype.element_ty), mask=om)
        tl.store(du_ptr + o, (acc * g * s).to(du_ptr.dtype.element_ty), mask=om)
    else:
        tl.store(c_ptr + o, acc.to(c_ptr.dtype.element_ty), mask=om)


@triton.jit
def _grouped_wgrad_kernel(
    a_ptr, b_ptr, c_ptr, offsets_ptr,
    KA, MB,
    s_an, s_bn, s_ce, s_ck,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    """C[e] = A[rows_e]^T @ B[rows_e]   ([KA, MB] per expert), summing the expert's rows in a fixed order."""
    e = tl.program_id(0)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    ms = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    km = ks < KA
    mm = ms < MB
    r0 = tl.load(offsets_ptr + e)
    r1 = tl.load(offsets_ptr + e + 1)
    acc = tl.zeros((BLOCK_K, BLOCK_N), tl.float32)
    for r in range(r0, r1, BLOCK_R):
        rows = r + tl.arange(0, BLOCK_R)
        rm = rows < r1
        rows64 = rows.to(tl.int64)
        a = tl.load(a_ptr + rows64[:, None] * s_an + ks[None, :], mask=rm[:, None] & km[None, :], other=0.0)
        b = tl.load(b_ptr + rows64[:, None] * s_bn + ms[None, :], mask=rm[:, None] & mm[None, :], other=0.0)
        acc += tl.dot(tl.trans(a), b, input_precision=PRECISION)
    o = e.to(tl.int64) * s_ce + ks[:, None] * s_ck + ms[None, :]
    tl.store(c_ptr + o, acc.to(c_ptr.dtype.element_ty), mask=km[:, None] & mm[None, :])


def _grouped_mm(a, b, tiles, out_cols, *, a2=None, b2=None, swiglu=None):
    """a: [N, KD]; b: [E, KD, M] (any strides). Returns C [N, M] (zeros outside the tiles) or (dg, du)."""
    N, KD = a.shape
    tile_e, tile_s, tile_t = tiles
    BN, BK = _blocks(out_cols), _blocks(KD)
    grid = (tile_e.numel(), triton.cdiv(out_cols, BN))
    if swiglu is not None:
        g, u = swiglu
        dg, du = torch.zeros_like(g), torch.zeros_like(u)
        c, s_cn = g, g.stride(0)
    else:
        c = torch.zeros((N, out_cols), dtype=a.dtype, device=a.device)
        dg = du = g = u = c
        s_cn = c.stride(0)
    _grouped_mm_kernel[grid](
        a, b, a2 if a2 is not None else a, b2 if b2 is not None else b, c, g, u, dg, du,
        tile_e, tile_s, tile_t, KD, out_cols,
        a.stride(0), b.stride(0), b.stride(1), b.stride(2), s_cn,
        HAS_SECOND=a2 is not None, SWIGLU_BWD=swiglu is not None,
        BLOCK_M=BLOCK_M, BLOCK_N=BN, BLOCK_K=BK, PRECISION=_precision(a.dtype),
    )
    return (dg, du) if swiglu is not None else c


def _grouped_wgrad(a, b, offsets_E1, E, dtype):
    """[E, KA, MB] with C[e] = a[rows_e]^T b[rows_e]."""
    KA, MB = a.shape[1], b.shape[1]
    c = torch.empty((E, KA, MB), dtype=dtype, device=a.device)
    BK, BN = _blocks(KA), _blocks(MB)
    _grouped_wgrad_kernel[(E, triton.cdiv(KA, BK), triton.cdiv(MB, BN))](
        a, b, c, offsets_E1, KA, MB, a.stride(0), b.stride(0), c.stride(0), c.stride(1),
        BLOCK_R=32, BLOCK_K=BK, BLOCK_N=BN, PRECISION=_precision(a.dtype),
    )
    return c


class _GroupedSwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, offsets_E1, wg, wu, wd):
        x = x.contiguous()
        N, D = x.shape
        E, _, F = wg.shape
        if wu.stride() != wg.stride():  # the kernels read both with one set of strides
            wg, wu = wg.contiguous(), wu.contiguous()
        offsets = offsets_E1.to(torch.int32).contiguous()
        tiles = tile_table(offsets_E1, N)
        h = torch.zeros((N, F), dtype=x.dtype, device=x.device)
        g, u = torch.zeros_like(h), torch.zeros_like(h)
        BN, BK = _blocks(F), _blocks(D)
        _gate_up_kernel[(tiles[0].numel(), triton.cdiv(F, BN))](
            x, wg, wu, h, g, u, *tiles, D, F,
            x.stride(0), wg.stride(0), wg.stride(1), wg.stride(2), h.stride(0),
            BLOCK_M=BLOCK_M, BLOCK_N=BN, BLOCK_K=BK, PRECISION=_precision(x.dtype),
        )
        y = _grouped_mm(h, wd, tiles, D)
        ctx.save_for_backward(x, offsets, wg, wu, wd, h, g, u, *tiles)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, offsets, wg, wu, wd, h, g, u, *tiles = ctx.saved_tensors
        dy = dy.contiguous()
        E, D, F = wg.shape
        # dh = dy Wd_e^T: B_e = Wd_e^T, i.e. Wd with its last two strides swapped; epilogue gives dg, du
        dg, du = _grouped_mm(dy, wd.transpose(1, 2), tiles, F, swiglu=(g, u))
        dx = _grouped_mm(dg, wg.transpose(1, 2), tiles, D, a2=du, b2=wu.transpose(1, 2))
        d_wd = _grouped_wgrad(h, dy, offsets, E, wd.dtype)
        d_wg = _grouped_wgrad(x, dg, offsets, E, wg.dtype)
        d_wu = _grouped_wgrad(x, du, offsets, E, wu.dtype)
        return dx, None, d_wg, d_wu, d_wd


def grouped_swiglu_triton(x_perm_ND, offsets_E1, w_gate_EDF, w_up_EDF, w_down_EFD):
    return _GroupedSwiGLUFunction.apply(x_perm_ND, offsets_E1, w_gate_EDF, w_up_EDF, w_down_EFD)
