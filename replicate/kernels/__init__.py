"""Routing kernels shared by the MoE papers. Each op is a triplet in ``kernels/<op>/``: ``reference.py`` (plain
PyTorch: the spec and the CPU path), ``triton.py`` (the GPU kernel, forward and backward), and
``tests/kernels/test_<op>.py`` (every output and gradient against the reference on edge shapes).

Legend: T tokens, K slots per token, N = T*K sorted slots, E experts, D model width, F expert width.

| op | call | returns |
|---|---|---|
| router  | ``route(logits_TE, k, mode=, renormalize=, mask_TE=, threshold=)`` | ``RouterOutput(topk_idx_TK, topk_w_TK, probs_TE, counts_E)`` |
| permute | ``dispatch_tokens(x_TD, topk_idx_TK, E)`` | ``Dispatch(x_perm_ND, order_N, inv_TK, offsets_E1, counts_E)`` |
| grouped_swiglu | ``grouped_swiglu(x_perm_ND, offsets_E1, w_gate_EDF, w_up_EDF, w_down_EFD)`` | ``y_perm_ND`` |
| combine | ``combine_experts(y_perm_ND, inv_TK, topk_w_TK)`` | ``out_TD`` |

``moe_experts`` chains the last three (dropless: every filled slot is computed). Which implementation runs is
decided by ``REPLICATE_KERNELS`` (see ``dispatch.py``); every op also takes ``impl=``.
"""

from __future__ import annotations

import torch

from replicate.kernels.combine import combine_experts
from replicate.kernels.dispatch import KernelConfigError, resolve_impl, use_impl
from replicate.kernels.grouped_swiglu import grouped_swiglu
from replicate.kernels.permute import Dispatch, dispatch_tokens
from replicate.kernels.router import RouterOutput, route


def moe_experts(
    x_TD: torch.Tensor,
    topk_idx_TK: torch.Tensor,
    topk_w_TK: torch.Tensor,
    w_gate_EDF: torch.Tensor,
    w_up_EDF: torch.Tensor,
    w_down_EFD: torch.Tensor,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """``out[t] = sum_k w[t, k] * SwiGLU_{idx[t, k]}(x[t])``, dropless, deterministic."""
    impl = resolve_impl(x_TD.device, impl)  # decided once for the three ops
    d = dispatch_tokens(x_TD, topk_idx_TK, w_gate_EDF.shape[0], impl=impl)
    y_perm_ND = grouped_swiglu(d.x_perm_ND, d.offsets_E1, w_gate_EDF, w_up_EDF, w_down_EFD, impl=impl)
    return combine_experts(y_perm_ND, d.inv_TK, topk_w_TK, impl=impl)


__all__ = [
    "Dispatch",
    "KernelConfigError",
    "RouterOutput",
    "combine_experts",
    "dispatch_tokens",
    "grouped_swiglu",
    "moe_experts",
    "resolve_impl",
    "route",
    "use_impl",
]
