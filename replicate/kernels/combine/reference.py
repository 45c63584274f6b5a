"""Deterministic combine, PyTorch reference: the spec of ``triton.py`` and the CPU path.

Shapes: T tokens, K slots, N = T*K sorted rows, D width. Each token owns exactly K rows of the expert
output ``y_perm_ND`` (found through the inverse permutation ``inv_TK`` of ``permute``), so the combine is a
gather and a weighted sum, never a scatter-add (CUDA's ``index_add_`` is not bitwise deterministic):

    out[t] = sum_k w[t, k] * y_perm[inv[t, k]]          (accumulated in fp32 or wider, cast to y's dtype)

Backward: d y_perm[inv[t, k]] = w[t, k] * d out[t]  (each row written exactly once: inv is a permutation),
          d w[t, k] = < d out[t], y_perm[inv[t, k]] >.
Empty slots have w = 0 and a zero row in y_perm, so they contribute nothing and get zero gradients.
"""

from __future__ import annotations

import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _CombineFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_perm_ND, inv_TK, topk_w_TK):
        T, K = inv_TK.shape
        acc = _acc_dtype(y_perm_ND.dtype)
        y_TKD = y_perm_ND.index_select(0, inv_TK.flatten()).view(T, K, -1)  # gather: [T, K, D]
        out_TD = torch.bmm(topk_w_TK.to(acc).unsqueeze(1), y_TKD.to(acc)).squeeze(1)  # sum_k w y, fixed order
        ctx.save_for_backward(y_TKD, inv_TK, topk_w_TK)
        return out_TD.to(y_perm_ND.dtype)

    @staticmethod
    def backward(ctx, g_TD):
        y_TKD, inv_TK, w_TK = ctx.saved_tensors
        acc = _acc_dtype(y_TKD.dtype)
        g = g_TD.to(acc)
        g_w_TK = torch.bmm(y_TKD.to(acc), g.unsqueeze(2)).squeeze(2).to(w_TK.dtype)  # <dout, y>
        g_y_TKD = (w_TK.to(acc).unsqueeze(2) * g.unsqueeze(1)).to(y_TKD.dtype)  # w * dout
        g_y_ND = torch.empty((inv_TK.numel(), y_TKD.shape[2]), dtype=y_TKD.dtype, device=y_TKD.device)
        g_y_ND[inv_TK.flatten()] = g_y_TKD.flatten(0, 1)  # a permutation: every row written once
        return g_y_ND, None, g_w_TK


def combine_reference(y_perm_ND: torch.Tensor, inv_TK: torch.Tensor, topk_w_TK: torch.Tensor) -> torch.Tensor:
    return _CombineFunction.apply(y_perm_ND, inv_TK, topk_w_TK)
