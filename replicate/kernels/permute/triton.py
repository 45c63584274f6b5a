"""Token dispatch (permute), Triton. Semantics: ``reference.py``.

A counting sort, stable by construction, in two launches and one tiny PyTorch prefix sum:
  1. ``_permute_hist_kernel``: each program takes BLOCK slots and writes its histogram over E+1 buckets
     (bucket E = empty slots) to its own row of ``hist[n_blocks, E+1]``;
  2. PyTorch: ``base[b, e] = offsets[e] + sum_{b' < b} hist[b', e]`` (an exclusive scan over [n_blocks, E+1]);
  3. ``_permute_scatter_kernel``: slot s of block b, expert e, lands at ``base[b, e] + (rank of s among the
     block's slots of expert e)``; the rank is an inclusive ``cumsum`` of the block's one-hot matrix. The program
     writes ``order[pos] = s``, ``inv[s] = pos`` and copies the token's row (zeros for an empty slot).
No atomics: positions are a pure function of the input, so the output is the same every run.

Backward ``_unpermute_grad_kernel``: ``dx[t] = sum_k valid[t, k] * d_perm[inv[t, k]]``, a gather (fixed order).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from replicate.kernels.dispatch import check_triton_usable
from replicate.kernels.permute.reference import Dispatch

check_triton_usable()


@triton.jit
def _permute_hist_kernel(idx_ptr, hist_ptr, N, E, BLOCK: tl.constexpr, BLOCK_E: tl.constexpr):
    pid = tl.program_id(0)
    slots = pid * BLOCK + tl.arange(0, BLOCK)
    m = slots < N
    key = tl.load(idx_ptr + slots, mask=m, other=0)
    key = tl.where(key < 0, E, key)
    cols = tl.arange(0, BLOCK_E)
    onehot = (key[:, None] == cols[None, :]) & m[:, None]
    h = tl.sum(onehot.to(tl.int32), axis=0)
    tl.store(hist_ptr + pid * (E + 1) + cols, h, mask=cols < E + 1)


@triton.jit
def _permute_scatter_kernel(
    x_ptr, idx_ptr, base_ptr, xperm_ptr, order_ptr, inv_ptr,
    N, E, D, K, stride_xt, stride_pn,
    BLOCK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    slots = pid * BLOCK + tl.arange(0, BLOCK)
    m = slots < N
    raw = tl.load(idx_ptr + slots, mask=m, other=0)
    valid = raw >= 0
    key = tl.where(valid, raw, E)
    cols = tl.arange(0, BLOCK_E)
    onehot = ((key[:, None] == cols[None, :]) & m[:, None]).to(tl.int32)
    rank = tl.sum(tl.cumsum(onehot, axis=0) * onehot, axis=1) - 1  # stable rank inside the block's bucket
    base = tl.load(base_ptr + pid * (E + 1) + key, mask=m, other=0)
    pos = (base + rank).to(tl.int64)
    tl.store(order_ptr + pos, slots.to(tl.int64), mask=m)
    tl.store(inv_ptr + slots, pos, mask=m)
    tok = (slots // K).to(tl.int64)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d < D
        v = tl.load(x_ptr + tok[:, None] * stride_xt + d[None, :], mask=(m & valid)[:, None] & dm[None, :], other=0.0)
        tl.store(xperm_ptr + pos[:, None] * stride_pn + d[None, :], v, mask=m[:, None] & dm[None, :])


@triton.jit
def _unpermute_grad_kernel(
    gperm_ptr, inv_ptr, idx_ptr, gx_ptr, T, D, stride_pn, stride_xt,
    K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    rm = rows < T
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    acc = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
    for j in tl.static_range(K):
        pos = tl.load(inv_ptr + rows * K + j, mask=rm, other=0)
        ok = rm & (tl.load(idx_ptr + rows * K + j, mask=rm, other=-1) >= 0)
        acc += tl.load(gperm_ptr + pos[:, None] * stride_pn + d[None, :], mask=ok[:, None] & dm[None, :], other=0.0)
    tl.store(gx_ptr + rows[:, None].to(tl.int64) * stride_xt + d[None, :], acc, mask=rm[:, None] & dm[None, :])


_BLOCK = 64


def _sort_slots(topk_idx_TK: torch.Tensor, n_experts: int):
    idx_N = topk_idx_TK.contiguous().view(-1).to(torch.int32)
    N = idx_N.numel()
    n_blocks = triton.cdiv(N, _BLOCK)
    BLOCK_E = triton.next_power_of_2(n_experts + 1)
    hist = torch.empty((n_blocks, n_experts + 1), dtype=torch.int32, device=idx_N.device)
    _permute_hist_kernel[(n_blocks,)](idx_N, hist, N, n_experts, BLOCK=_BLOCK, BLOCK_E=BLOCK_E)
    counts_all = hist.sum(0, dtype=torch.int64)  # [E+1]
    offsets_all = torch.cumsum(counts_all, 0) - counts_all  # exclusive: start of each bucket
    base = (offsets_all[None, :] + torch.cumsum(hist, 0, dtype=torch.int64) - hist).to(torch.int32)
    offsets_E1 = torch.cat([offsets_all[:n_experts], counts_all[:n_experts].sum().view(1)])
    return idx_N, base, offsets_E1, counts_all[:n_experts]


class _DispatchFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, topk_idx_TK, n_experts):
        T, D = x_TD.shape
        K = topk_idx_TK.shape[1]
        x = x_TD.contiguous()
        idx_N, base, offsets_E1, counts_E = _sort_slots(topk_idx_TK, n_experts)
        N = idx_N.numel()
        x_perm = torch.empty((N, D), dtype=x.dtype, device=x.device)
        order = torch.empty(N, dtype=torch.int64, device=x.device)
        inv = torch.empty(N, dtype=torch.int64, device=x.device)
        _permute_scatter_kernel[(triton.cdiv(N, _BLOCK),)](
            x, idx_N, base, x_perm, order, inv, N, n_experts, D, K, x.stride(0), x_perm.stride(0),
            BLOCK=_BLOCK, BLOCK_E=triton.next_power_of_2(n_experts + 1), BLOCK_D=min(128, triton.next_power_of_2(D)),
        )
        inv_TK = inv.view(T, K)
        ctx.save_for_backward(inv_TK, idx_N)
        ctx.mark_non_differentiable(order, inv_TK, offsets_E1, counts_E)
        return x_perm, order, inv_TK, offsets_E1, counts_E

    @staticmethod
    def backward(ctx, g_perm, *_):
        inv_TK, idx_N = ctx.saved_tensors
        T, K = inv_TK.shape
        g = g_perm.contiguous()
        D = g.shape[1]
        gx = torch.empty((T, D), dtype=g.dtype, device=g.device)
        BLOCK_T, BLOCK_D = 32, min(128, triton.next_power_of_2(D))
        _unpermute_grad_kernel[(triton.cdiv(T, BLOCK_T), triton.cdiv(D, BLOCK_D))](
            g, inv_TK, idx_N, gx, T, D, g.stride(0), gx.stride(0), K=K, BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D,
        )
        return gx, None, None


def dispatch_triton(x_TD: torch.Tensor, topk_idx_TK: torch.Tensor, n_experts: int) -> Dispatch:
    return Dispatch(*_DispatchFunction.apply(x_TD, topk_idx_TK, n_experts))
