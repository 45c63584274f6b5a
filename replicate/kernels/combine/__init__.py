"""Deterministic combine: gather expert outputs by inverse permutation, weighted sum (no atomics). See reference.py."""

from __future__ import annotations

import torch

from replicate.kernels.combine.reference import combine_reference
from replicate.kernels.dispatch import resolve_impl


def combine_experts(y_perm_ND, inv_TK, topk_w_TK, *, impl: str | None = None) -> torch.Tensor:
    if resolve_impl(y_perm_ND.device, impl) == "triton":
        from replicate.kernels.combine.triton import combine_triton as fn
    else:
        fn = combine_reference
    return fn(y_perm_ND, inv_TK, topk_w_TK)


__all__ = ["combine_experts", "combine_reference"]
