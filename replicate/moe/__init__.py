"""The MoE layer family shared by MaskMoE, CartesianMoE, Finedeep and DSMoE.

Legend (shape suffixes): B batch, S sequence, T tokens (B*S), K slots per token, E experts, D model width,
F expert width, V vocabulary.

Building blocks (each written once):
- ``ExpertBank`` (``experts.py``): E stacked SwiGLU experts; routed forward through ``replicate.kernels``;
  ``all_outputs``; ``from_dense`` / ``to_dense`` (partition of a trained SwiGLU, sum of experts == dense).
- routers (``routers.py``): ``TopKRouter``, ``MaskedRouter`` (MaskMoE builds its mask), ``TopPRouter``,
  ``HashRouter`` (+ ``hash_table``), ``SigmoidGate`` (threshold + STE), ``OutputSigmoidGate``.
- layers (``layer.py``): ``MoE`` (routed + shared expert, "add" or "gate" mix) and ``SigmoidGatedMoE``.
- losses (``losses.py``): ``load_balancing_loss``, ``router_z_loss``, ``load_stats``.
- counting (``counting.py``): ``param_counts``, ``moe_params``, ``dense_width_for_active``, ``check_budgets``.

Through the decoder's FFN registry (``replicate.models.ffn.build_ffn``):

    build_ffn("moe", d_model=128, d_ff=512, n_experts=8, k=1)                    # Switch-style top-1
    build_ffn("moe", d_model=128, d_ff=384, n_experts=8, k=2, d_shared=384)     # SMoE-Share (gated shared)
    build_ffn("moe", ..., router="topp", top_p=0.4)                             # TopP, dynamic k
    build_ffn("moe", ..., router="hash", vocab_size=V, k=2)                     # Hash Layer
    build_ffn("moe", ..., router="masked", routing_mask=mask_VE, k=1)           # MaskMoE
    build_ffn("sigmoid_moe", d_model=256, d_ff=1024, n_experts=8, gate="threshold")   # DSMoE
    build_ffn("sigmoid_moe", d_model=256, d_ff=512, n_experts=4, gate="output")       # one Finedeep sub-layer

For "moe", ``d_ff`` is the width of one routed expert; for "sigmoid_moe" it is the dense width that is cut into
``n_experts`` blocks. Layers return ``(y, aux)``; ``aux`` losses are already weighted (sum them into the loss);
``layer.last_stats`` holds the detached per-expert load of the last forward.
"""

from __future__ import annotations

import torch

from replicate.models.ffn import register_ffn
from replicate.moe.counting import (
    ParamCount,
    check_budgets,
    dense_width_for_active,
    expert_width_for_total,
    ffn_flops_per_token,
    moe_params,
    param_counts,
    relative_gap,
    swiglu_params,
)
from replicate.moe.experts import ExpertBank
from replicate.moe.layer import MoE, SigmoidGatedMoE
from replicate.moe.losses import load_balancing_loss, load_stats, router_z_loss
from replicate.moe.routers import (
    HashRouter,
    MaskedRouter,
    OutputSigmoidGate,
    Routing,
    SigmoidGate,
    TopKRouter,
    TopPRouter,
    hash_table,
)

ROUTERS = ("topk", "topp", "hash", "masked")


def build_router(router: str, *, d_model: int, n_experts: int, k: int = 2, renormalize: bool | None = None,
                 top_p: float = 0.4, k_max: int | None = None, vocab_size: int | None = None,
                 routing_mask: torch.Tensor | None = None, hash_seed: int = 0,
                 hash_counts: torch.Tensor | None = None, init_std: float | None = None,
                 mask_gate: str = "masked"):
    if router == "topk":
        return TopKRouter(d_model, n_experts, k, renormalize, init_std)
    if router == "topp":
        return TopPRouter(d_model, n_experts, top_p, k_max, init_std)
    if router == "hash":
        if vocab_size is None:
            raise ValueError("moe: router='hash' needs vocab_size")
        return HashRouter(vocab_size, n_experts, k, hash_seed, hash_counts)
    if router == "masked":
        return MaskedRouter(d_model, n_experts, k, routing_mask, renormalize, init_std, mask_gate)
    raise ValueError(f"moe: unknown router {router!r}; allowed: {', '.join(ROUTERS)}")


@register_ffn("moe")
def build_moe(*, d_model: int, d_ff: int, n_experts: int = 8, k: int = 2, router: str = "topk",
              renormalize: bool | None = None, top_p: float = 0.4, k_max: int | None = None,
              vocab_size: int | None = None, routing_mask: torch.Tensor | None = None, hash_seed: int = 0,
              hash_counts: torch.Tensor | None = None, d_shared: int = 0, shared_mix: str = "gate",
              balance_coef: float = 0.01, z_coef: float = 0.0, balance_first_choice: bool = False,
              init_std: float | None = None, mask_gate: str = "masked", shared_scale: float = 1.0,
              score_scale: float = 1.0) -> MoE:
    """A routed MoE whose experts each have width ``d_ff`` (``mask_gate``: the masked router's gate,
    see ``MaskedRouter``; ``shared_scale``: a constant factor on the shared expert's output; ``score_scale``: one
    on the routed weights (LLaMA-MoE's score scale factor); see ``MoE``)."""
    r = build_router(router, d_model=d_model, n_experts=n_experts, k=k, renormalize=renormalize, top_p=top_p,
                     k_max=k_max, vocab_size=vocab_size, routing_mask=routing_mask, hash_seed=hash_seed,
                     hash_counts=hash_counts, init_std=init_std, mask_gate=mask_gate)
    return MoE(d_model, d_ff, n_experts, r, d_shared=d_shared, shared_mix=shared_mix, balance_coef=balance_coef,
               z_coef=z_coef, balance_first_choice=balance_first_choice, init_std=init_std,
               shared_scale=shared_scale, score_scale=score_scale)


@register_ffn("sigmoid_moe")
def build_sigmoid_moe(*, d_model: int, d_ff: int, n_experts: int = 8, **kwargs) -> SigmoidGatedMoE:
    """A SwiGLU of width ``d_ff`` cut into ``n_experts`` sigmoid-gated blocks (DSMoE / Finedeep)."""
    return SigmoidGatedMoE(d_model, d_ff, n_experts, **kwargs)


__all__ = [
    "ExpertBank", "HashRouter", "MaskedRouter", "MoE", "OutputSigmoidGate", "ParamCount", "Routing", "SigmoidGate",
    "SigmoidGatedMoE", "TopKRouter", "TopPRouter", "build_moe", "build_router", "build_sigmoid_moe", "check_budgets",
    "dense_width_for_active", "expert_width_for_total", "ffn_flops_per_token", "hash_table",
    "load_balancing_loss", "load_stats", "moe_params", "param_counts", "relative_gap", "router_z_loss",
    "swiglu_params",
]
