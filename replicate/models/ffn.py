"""Feed-forward blocks of the decoder, and the registry through which papers plug in their own.

A feed-forward part is built by ``build_ffn(name, d_model=..., d_ff=..., **kwargs)`` (per layer: its own name, width
and kwargs, ``DecoderConfig.layers``). Two calling conventions:

- standard parts: ``x = x + ffn(norm(x), token_ids_BT=...)``, the block owns the norm and the residual add;
- residual-owning parts (class attribute ``owns_residual = True``): ``x = part(x, ctx)``, the part gets the residual
  stream itself and does its own norms and adds (Finedeep's M sub-layers, CartesianMoE's A, norm, B; ``"stack"``).

Either returns the output tensor, or ``(output, aux)`` where ``aux`` is a dict of scalar auxiliary losses (load
balancing, z-loss); the decoder sums ``aux`` over layers and hands it back separately, so the training objective
decides how to weight them (DESIGN.md §4.5). Kwargs that hold a ``TensorRef`` (a routing mask named by its content
hash in the config) are resolved into the tensor here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from replicate.models.context import resolve_refs
from replicate.models.norm import RMSNorm
from replicate.models.probes import Probed
from replicate.registry import Registry

FFN_REGISTRY = Registry("ffn")  # name -> factory(d_model=..., d_ff=..., **kwargs) -> nn.Module
register_ffn = FFN_REGISTRY.register


def build_ffn(name: str, *, d_model: int, d_ff: int, **kwargs) -> nn.Module:
    if name not in FFN_REGISTRY:
        import replicate.moe  # noqa: F401  (registers the MoE family: "moe", "sigmoid_moe")
    if name not in FFN_REGISTRY:
        raise ValueError(f"ffn: unknown feed-forward part {name!r}; allowed: {', '.join(sorted(FFN_REGISTRY))}")
    return FFN_REGISTRY[name](d_model=d_model, d_ff=d_ff, **resolve_refs(kwargs))


@register_ffn("swiglu")
class SwiGLU(nn.Module, Probed):
    """LLaMA's gated FFN: ``down( silu(gate(x)) * up(x) )`` (Shazeer 2020). Names match ``transformers``' LlamaMLP."""

    probe_names = ("ffn_hidden",)

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x_BTD: torch.Tensor, token_ids_BT: torch.Tensor | None = None) -> torch.Tensor:
        h_BTF = F.silu(self.gate_proj(x_BTD)) * self.up_proj(x_BTD)
        if self._probe is not None:
            self._probe("ffn_hidden", h_BTF)
        return self.down_proj(h_BTF)


class SubLayer(nn.Module):
    def __init__(self, d_model: int, ffn: nn.Module, norm_eps: float):
        super().__init__()
        self.norm = RMSNorm(d_model, norm_eps)
        self.ffn = ffn


@register_ffn("stack")
class SubLayerStack(nn.Module):
    """An FFN slot made of ``n`` sub-layers in sequence, each with its own pre-norm and residual add:

        x_j = x_{j-1} + F_j(RMSNorm_j(x_{j-1})),   j = 1..n,   output x_n         (owns the residual)

    F_j is the registered part ``sub`` of width ``d_ff`` with ``sub_kwargs``. Finedeep (Sec. 3.3): ``sub="sigmoid_moe"``
    with ``gate="output"``, n = M, d_ff = D / M. CartesianMoE (Sec. 3.3): ``sub="moe"``, n = 2 (sub-layer A, a new norm,
    sub-layer B, each with its router, shared sub-expert and gate). n = 1 with ``sub="swiglu"`` is the standard block.
    Sub-layers' aux losses are summed (keys shared)."""

    owns_residual = True

    def __init__(self, d_model: int, d_ff: int, n: int = 2, sub: str = "swiglu", sub_kwargs: tuple = (),
                 norm_eps: float = 1e-5):
        super().__init__()
        if n < 1:
            raise ValueError(f"stack: n={n} must be >= 1")
        self.sub = nn.ModuleList(
            SubLayer(d_model, build_ffn(sub, d_model=d_model, d_ff=d_ff, **dict(sub_kwargs)), norm_eps) for _ in range(n)
        )

    def forward(self, x_BTD: torch.Tensor, ctx) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        aux_total: dict[str, torch.Tensor] = {}
        for layer in self.sub:
            out = layer.ffn(layer.norm(x_BTD), token_ids_BT=ctx.token_ids_BT)
            out, aux = out if isinstance(out, tuple) else (out, {})
            x_BTD = x_BTD + out
            for k, v in aux.items():
                aux_total[k] = aux_total[k] + v if k in aux_total else v
        return x_BTD, aux_total
