"""Grouped SwiGLU over tokens sorted by expert (stacked expert weights). See ``reference.py``."""

from __future__ import annotations

import torch

from replicate.kernels.dispatch import resolve_impl
from replicate.kernels.grouped_swiglu.reference import grouped_swiglu_reference


def grouped_swiglu(x_perm_ND, offsets_E1, w_gate_EDF, w_up_EDF, w_down_EFD, *, impl: str | None = None) -> torch.Tensor:
    if resolve_impl(x_perm_ND.device, impl) == "triton":
        from replicate.kernels.grouped_swiglu.triton import grouped_swiglu_triton as fn
    else:
        fn = grouped_swiglu_reference
    return fn(x_perm_ND, offsets_E1, w_gate_EDF, w_up_EDF, w_down_EFD)


__all__ = ["grouped_swiglu", "grouped_swiglu_reference"]
