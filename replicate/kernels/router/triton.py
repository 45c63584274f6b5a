"""Fused router, Triton. Semantics: ``reference.py`` (the spec); this file only says how.

Forward (``_router_fwd_kernel``, one program per BLOCK_T rows, all E experts of a row in registers):
  1. load the logits tile, add the mask fill (-1e9) to invisible experts, fill padded lanes (e >= E) with
     -3e38 (finite, so no NaN anywhere);
  2. p = softmax(z) (or sigmoid(z)); store p;
  3. K rounds of ``argmax`` over z (ties → lowest index, as the reference's stable sort), each round knocks out the
     chosen lane; weight = p at the chosen lane, slot empty if the lane is invisible (or p <= threshold);
  4. renormalize in registers, store idx/w once; write the block's per-expert histogram of filled slots to its
     own row of ``hist`` (summed in PyTorch afterwards: no atomics, deterministic).

Backward (``_router_bwd_kernel``) recomputes nothing expensive: it reads p and the stored weights.
With gw = dL/dw, gp = dL/dp (either may be absent), S = sum of the chosen p:
    renormalized:  dL/dp_j += (gw_j - sum_k gw_k w_k) / S   for chosen j   (w = p_sel / S)
    plain:         dL/dp_j += gw_j
    softmax:       dL/dz = p * (gp - sum_e gp_e p_e)
    sigmoid:       dL/dz = gp * p * (1 - p)
Masked lanes have p == 0 exactly, so they get no gradient (MaskMoE's requirement).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from replicate.kernels.dispatch import check_triton_usable
from replicate.kernels.router.reference import MASK_FILL, RENORM_EPS

check_triton_usable()

NEG = -3.0e38  # knocked-out and padded lanes: below any real (even masked) logit, still finite


def _block_t(E: int) -> int:
    # keep BLOCK_T * BLOCK_E around 2k elements per program
    return max(1, min(64, 2048 // triton.next_power_of_2(E)))


@triton.jit
def _router_fwd_kernel(
    logits_ptr, mask_ptr, probs_ptr, idx_ptr, w_ptr, hist_ptr,
    T, E, threshold, eps, fill,
    K: tl.constexpr, SIGMOID: tl.constexpr, HAS_MASK: tl.constexpr, RENORM: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    kcols = tl.arange(0, BLOCK_K)
    rmask = rows < T
    cmask = cols < E
    m2 = rmask[:, None] & cmask[None, :]
    offs = rows[:, None].to(tl.int64) * E + cols[None, :]

    z = tl.load(logits_ptr + offs, mask=m2, other=0.0).to(tl.float32)
    if HAS_MASK:
        vis = tl.load(mask_ptr + offs, mask=m2, other=0) != 0
        z = tl.where(vis, z, z + fill)
    else:
        vis = m2
    z = tl.where(cmask[None, :], z, NEG)
    if SIGMOID:
        p = tl.sigmoid(tl.maximum(z, -80.0))  # clamp: no exp overflow on masked/padded lanes (p < 2e-35 there)
    else:
        zmax = tl.max(z, axis=1)
        ez = tl.where(cmask[None, :], tl.exp(z - zmax[:, None]), 0.0)
        p = ez / tl.sum(ez, axis=1)[:, None]
    p = tl.where(cmask[None, :], p, 0.0)
    tl.store(probs_ptr + offs, p, mask=m2)

    zz = z
    idx_acc = tl.full((BLOCK_T, BLOCK_K), -1, tl.int32)
    w_acc = tl.zeros((BLOCK_T, BLOCK_K), tl.float32)
    hist = tl.zeros((BLOCK_E,), tl.int32)
    for j in tl.static_range(K):
        sel = tl.argmax(zz, axis=1)  # [BLOCK_T], ties -> lowest index
        onehot = cols[None, :] == sel[:, None]
        p_sel = tl.sum(tl.where(onehot, p, 0.0), axis=1)
        valid = rmask & (tl.sum(tl.where(onehot & vis, 1, 0), axis=1) > 0)
        if SIGMOID:
            valid = valid & (p_sel > threshold)
        idx_acc = tl.where(kcols[None, :] == j, tl.where(valid, sel, -1)[:, None], idx_acc)
        w_acc = tl.where(kcols[None, :] == j, tl.where(valid, p_sel, 0.0)[:, None], w_acc)
        hist += tl.sum(tl.where(onehot & valid[:, None], 1, 0), axis=0)
        zz = tl.where(onehot, NEG, zz)
    if RENORM:
        s = tl.sum(w_acc, axis=1)
        w_acc = w_acc / tl.maximum(s, eps)[:, None]
    koffs = rows[:, None].to(tl.int64) * K + kcols[None, :]
    km = rmask[:, None] & (kcols[None, :] < K)
    tl.store(idx_ptr + koffs, idx_acc, mask=km)
    tl.store(w_ptr + koffs, w_acc, mask=km)
    tl.store(hist_ptr + pid * E + cols, hist, mask=cmask)


@triton.jit
def _router_bwd_kernel(
    probs_ptr, idx_ptr, w_ptr, gw_ptr, gp_ptr, dz_ptr,
    T, E, eps,
    K: tl.constexpr, SIGMOID: tl.constexpr, RENORM: tl.constexpr, HAS_GW: tl.constexpr, HAS_GP: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    kcols = tl.arange(0, BLOCK_K)
    rmask = rows < T
    cmask = cols < E
    m2 = rmask[:, None] & cmask[None, :]
    offs = rows[:, None].to(tl.int64) * E + cols[None, :]
    p = tl.load(probs_ptr + offs, mask=m2, other=0.0)
    if HAS_GP:
        gp = tl.load(gp_ptr + offs, mask=m2, other=0.0).to(tl.float32)
    else:
        gp = tl.zeros((BLOCK_T, BLOCK_E), tl.float32)
    if HAS_GW:
        koffs = rows[:, None].to(tl.int64) * K + kcols[None, :]
        km = rmask[:, None] & (kcols[None, :] < K)
        idx = tl.load(idx_ptr + koffs, mask=km, other=-1)
        w = tl.load(w_ptr + koffs, mask=km, other=0.0)
        gw = tl.load(gw_ptr + koffs, mask=km, other=0.0).to(tl.float32)
        gw = tl.where(idx >= 0, gw, 0.0)
        if RENORM:
            # S = sum of the chosen probabilities, recovered from p (the stored w is already divided by S)
            s = tl.zeros((BLOCK_T,), tl.float32)
            for j in tl.static_range(K):
                idx_j = tl.sum(tl.where(kcols[None, :] == j, idx, 0), axis=1)
                ok = tl.sum(tl.where(kcols[None, :] == j, idx >= 0, 0), axis=1) > 0
                s += tl.sum(tl.where((cols[None, :] == idx_j[:, None]) & ok[:, None], p, 0.0), axis=1)
            dot = tl.sum(gw * w, axis=1)
            big = s > eps
            dp = tl.where(big[:, None], (gw - dot[:, None]) / tl.where(big, s, 1.0)[:, None], gw / eps)
        else:
            dp = gw
        for j in tl.static_range(K):
            idx_j = tl.sum(tl.where(kcols[None, :] == j, idx, 0), axis=1)
            ok = tl.sum(tl.where(kcols[None, :] == j, idx >= 0, 0), axis=1) > 0
            dp_j = tl.sum(tl.where(kcols[None, :] == j, dp, 0.0), axis=1)
            gp += tl.where((cols[None, :] == idx_j[:, None]) & ok[:, None], dp_j[:, None], 0.0)
    if SIGMOID:
        dz = gp * p * (1.0 - p)
    else:
        dz = p * (gp - tl.sum(gp * p, axis=1)[:, None])
    tl.store(dz_ptr + offs, dz, mask=m2)


class _RouteFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_TE, mask_TE, k, sigmoid, renormalize, threshold):
        T, E = logits_TE.shape
        z = logits_TE.float().contiguous()
        dev = z.device
        probs = torch.empty((T, E), device=dev, dtype=torch.float32)
        idx = torch.empty((T, k), device=dev, dtype=torch.int32)
        w = torch.empty((T, k), device=dev, dtype=torch.float32)
        BLOCK_T = _block_t(E)
        n_prog = triton.cdiv(T, BLOCK_T)
        hist = torch.empty((n_prog, E), device=dev, dtype=torch.int32)
        mask_arg = mask_TE.contiguous().to(torch.int8) if mask_TE is not None else z
        _router_fwd_kernel[(n_prog,)](
            z, mask_arg, probs, idx, w, hist,
            T, E, float(threshold), RENORM_EPS, MASK_FILL,
            K=k, SIGMOID=sigmoid, HAS_MASK=mask_TE is not None, RENORM=renormalize,
            BLOCK_T=BLOCK_T, BLOCK_E=triton.next_power_of_2(E), BLOCK_K=triton.next_power_of_2(k),
        )
        ctx.save_for_backward(probs, idx, w)
        ctx.cfg = (k, sigmoid, renormalize, logits_TE.dtype)
        ctx.mark_non_differentiable(idx)
        counts = hist.sum(0, dtype=torch.int64)
        ctx.mark_non_differentiable(counts)
        return idx.long(), w, probs, counts

    @staticmethod
    def backward(ctx, _g_idx, g_w, g_probs, _g_counts):
        probs, idx, w = ctx.saved_tensors
        k, sigmoid, renormalize, in_dtype = ctx.cfg
        T, E = probs.shape
        dz = torch.empty_like(probs)
        BLOCK_T = _block_t(E)
        _router_bwd_kernel[(triton.cdiv(T, BLOCK_T),)](
            probs, idx, w,
            g_w.contiguous() if g_w is not None else w,
            g_probs.contiguous() if g_probs is not None else probs,
            dz, T, E, RENORM_EPS,
            K=k, SIGMOID=sigmoid, RENORM=renormalize, HAS_GW=g_w is not None, HAS_GP=g_probs is not None,
            BLOCK_T=BLOCK_T, BLOCK_E=triton.next_power_of_2(E), BLOCK_K=triton.next_power_of_2(k),
        )
        return dz.to(in_dtype), None, None, None, None, None


def route_triton(logits_TE, k, *, mode="softmax", renormalize=False, mask_TE=None, threshold=0.5):
    T, E = logits_TE.shape
    if not 1 <= k <= E:
        raise ValueError(f"route: k={k} must be in [1, E={E}]")
    if mode not in ("softmax", "sigmoid"):
        raise ValueError(f"route: mode={mode!r}; allowed: softmax, sigmoid")
    return _RouteFunction.apply(logits_TE, mask_TE, k, mode == "sigmoid", renormalize, threshold)
