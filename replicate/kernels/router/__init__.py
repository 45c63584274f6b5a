"""Fused router: (masked) softmax or sigmoid-threshold → top-k indices and weights, probabilities, counts.

See ``reference.py`` for the semantics; ``route`` picks the implementation (``replicate.kernels.dispatch``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from replicate.kernels.dispatch import resolve_impl
from replicate.kernels.router.reference import route_reference


class RouterOutput(NamedTuple):
    topk_idx_TK: torch.Tensor  # int64, -1 in empty slots, slots in descending logit order
    topk_w_TK: torch.Tensor  # fp32, 0 in empty slots
    probs_TE: torch.Tensor  # fp32 softmax (or sigmoid) probabilities
    counts_E: torch.Tensor  # int64, filled slots per expert


def route(
    logits_TE: torch.Tensor,
    k: int,
    *,
    mode: str = "softmax",
    renormalize: bool = False,
    mask_TE: torch.Tensor | None = None,
    threshold: float = 0.5,
    impl: str | None = None,
) -> RouterOutput:
    if resolve_impl(logits_TE.device, impl) == "triton":
        from replicate.kernels.router.triton import route_triton as fn
    else:
        fn = route_reference
    return RouterOutput(*fn(logits_TE, k, mode=mode, renormalize=renormalize, mask_TE=mask_TE, threshold=threshold))


__all__ = ["RouterOutput", "route", "route_reference"]
