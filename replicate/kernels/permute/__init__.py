"""Token dispatch: stable sort of (token, slot) pairs by expert, offsets, permuted tokens. See ``reference.py``."""

from __future__ import annotations

import torch

from replicate.kernels.dispatch import resolve_impl
from replicate.kernels.permute.reference import Dispatch, dispatch_reference, sort_slots_reference


def dispatch_tokens(x_TD: torch.Tensor, topk_idx_TK: torch.Tensor, n_experts: int, *, impl: str | None = None) -> Dispatch:
    if resolve_impl(x_TD.device, impl) == "triton":
        from replicate.kernels.permute.triton import dispatch_triton as fn
    else:
        fn = dispatch_reference
    return fn(x_TD, topk_idx_TK, n_experts)


__all__ = ["Dispatch", "dispatch_tokens", "dispatch_reference", "sort_slots_reference"]
