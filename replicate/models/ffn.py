"""Feed-forward blocks of the decoder, and the registry through which papers plug in their own.

A feed-forward part is built by ``build_ffn(name, d_model=..., d_ff=..., **kwargs)`` and called as
``ffn(x_BTD, token_ids_BT=...)``. It returns either the output tensor, or ``(output, aux)`` where ``aux`` is a dict
of scalar auxiliary losses (load balancing, z-loss); the decoder sums ``aux`` over layers and hands it back
separately, so the training objective decides how to weight them (DESIGN.md §4.5).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

FFN_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_ffn(name: str):
    """Register a factory ``f(d_model=..., d_ff=..., **kwargs) -> nn.Module`` under ``name``."""

    def deco(factory):
        if name in FFN_REGISTRY and FFN_REGISTRY[name] is not factory:
            raise ValueError(f"ffn {name!r} is already registered")
        FFN_REGISTRY[name] = factory
        return factory

    return deco


def build_ffn(name: str, *, d_model: int, d_ff: int, **kwargs) -> nn.Module:
    if name not in FFN_REGISTRY:
        import replicate.moe  # noqa: F401  (registers the MoE family: "moe", "sigmoid_moe")
    if name not in FFN_REGISTRY:
        raise ValueError(f"ffn: unknown feed-forward part {name!r}; allowed: {', '.join(sorted(FFN_REGISTRY))}")
    return FFN_REGISTRY[name](d_model=d_model, d_ff=d_ff, **kwargs)


@register_ffn("swiglu")
class SwiGLU(nn.Module):
    """LLaMA's gated FFN: ``down( silu(gate(x)) * up(x) )`` (Shazeer 2020). Names match ``transformers``' LlamaMLP."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x_BTD: torch.Tensor, token_ids_BT: torch.Tensor | None = None) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x_BTD)) * self.up_proj(x_BTD))
