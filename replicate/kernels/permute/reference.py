"""Token dispatch (permute), PyTorch reference: the spec of ``triton.py`` and the CPU path.

Shapes: T tokens, K slots per token, N = T*K slots, E experts, D model width. A slot is (token t, choice k),
numbered s = t*K + k. Empty slots (expert id -1, from padded top-p / masked routing) go to a last bucket.

    key_N     = where(idx < 0, E, idx).flatten()
    order_N   = argsort(key_N, stable=True)        slot ids sorted by expert, token order kept inside an expert
    inv_TK    = inverse of order: inv[s] = position of slot s in the sorted order
    counts_E  = bincount(key_N)[:E]
    offsets   = [0, cumsum(counts_E)]              expert e owns rows offsets[e] : offsets[e+1]
    x_perm_ND = x[order // K], zero in the rows of empty slots (rows >= offsets[E])

Backward, deterministic (no scatter-add): dL/dx[t] = sum over the token's filled slots of dL/dx_perm[inv[t, k]],
a gather summed in a fixed order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Dispatch(NamedTuple):
    x_perm_ND: torch.Tensor  # tokens sorted by expert; rows >= offsets_E1[-1] are zero (empty slots)
    order_N: torch.Tensor  # int64, slot id at each sorted position
    inv_TK: torch.Tensor  # int64, sorted position of each slot
    offsets_E1: torch.Tensor  # int64 [E+1]
    counts_E: torch.Tensor  # int64 [E]


def sort_slots_reference(topk_idx_TK: torch.Tensor, n_experts: int):
    """Routing metadata only: ``(order_N, inv_TK, offsets_E1, counts_E)``."""
    T, K = topk_idx_TK.shape
    key_N = torch.where(topk_idx_TK < 0, n_experts, topk_idx_TK).flatten()
    order_N = torch.sort(key_N, stable=True).indices
    inv_N = torch.empty_like(order_N)
    inv_N[order_N] = torch.arange(order_N.numel(), device=order_N.device)
    counts_E = torch.bincount(key_N, minlength=n_experts + 1)[:n_experts]
    offsets_E1 = torch.zeros(n_experts + 1, dtype=torch.int64, device=key_N.device)
    torch.cumsum(counts_E, 0, out=offsets_E1[1:])
    return order_N, inv_N.view(T, K), offsets_E1, counts_E


class _PermuteFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, order_N, inv_TK, valid_TK):
        K = inv_TK.shape[1]
        x_perm = x_TD.index_select(0, order_N // K)
        ctx.all_valid = bool(valid_TK.all())
        if not ctx.all_valid:  # zero the rows of empty slots
            x_perm.masked_fill_(~valid_TK.flatten()[order_N].unsqueeze(1), 0)
        ctx.save_for_backward(inv_TK, valid_TK)
        return x_perm

    @staticmethod
    def backward(ctx, g_perm_ND):
        inv_TK, valid_TK = ctx.saved_tensors
        T, K = inv_TK.shape
        g_TKD = g_perm_ND.index_select(0, inv_TK.flatten()).view(T, K, -1)
        if not ctx.all_valid:
            g_TKD = g_TKD.masked_fill(~valid_TK.unsqueeze(-1), 0)
        return g_TKD.sum(1), None, None, None


def dispatch_reference(x_TD: torch.Tensor, topk_idx_TK: torch.Tensor, n_experts: int) -> Dispatch:
    order_N, inv_TK, offsets_E1, counts_E = sort_slots_reference(topk_idx_TK, n_experts)
    x_perm_ND = _PermuteFunction.apply(x_TD, order_N, inv_TK, topk_idx_TK >= 0)
    return Dispatch(x_perm_ND, order_N, inv_TK, offsets_E1, counts_E)
