"""Parameter and FLOP counters, and helpers to match budgets across variants.

``param_counts(model)`` walks a model: a module with a ``param_counts()`` method (the MoE layers) reports its own
(total, active); every other parameter is active. Forward FLOPs per token are 2 x the active parameters of
the matrix products (embedding lookups excluded, attention's score/value products not included); a training
step is about 3x that. Budget rules (CartesianMoE Sec. 3.4): variants are compared at equal total and equal
active FFN parameters, and totals must agree within 0.5%.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn


class ParamCount(NamedTuple):
    total: int
    active: float


def swiglu_params(d_model: int, d_ff: int) -> int:
    """Gate, up and down projections, no biases."""
    return 3 * d_model * d_ff


def moe_params(d_model: int, d_expert: int, n_experts: int, k: float, *, d_shared: int = 0,
               shared_gate: bool = False, router: bool = True) -> ParamCount:
    """Analytic (total, active) of one ``MoE`` layer (router d*E, gate 2d+2)."""
    extra = (d_model * n_experts if router else 0) + swiglu_params(d_model, d_shared) + (2 * d_model + 2 if shared_gate else 0)
    experts = n_experts * swiglu_params(d_model, d_expert)
    return ParamCount(experts + extra, experts * k / n_experts + extra)


def param_counts(model: nn.Module) -> ParamCount:
    total, active = 0, 0.0

    def walk(m: nn.Module):
        nonlocal total, active
        if hasattr(m, "param_counts"):
            t, a = m.param_counts()
            total += t
            active += a
            return
        own = sum(p.numel() for p in m.parameters(recurse=False))
        total += own
        active += own
        for child in m.children():
            walk(child)

    walk(model)
    return ParamCount(total, active)


def ffn_flops_per_token(layer: nn.Module) -> float:
    """Forward FLOPs per token of an FFN/MoE layer: 2 x its active parameters (all of them are matmul weights,
    up to the 2-way gate's bias)."""
    return 2.0 * param_counts(layer).active


def dense_width_for_active(d_model: int, active_ffn_params: float, multiple: int = 1) -> int:
    """The SwiGLU width whose parameters equal ``active_ffn_params`` (rounded to ``multiple``)."""
    width = active_ffn_params / (3 * d_model)
    return max(multiple, int(round(width / multiple)) * multiple)


def expert_width_for_total(d_model: int, total_ffn_params: float, n_experts: int, d_shared: int = 0,
                           multiple: int = 1) -> int:
    """Routed-expert width so that E experts plus a shared expert of width ``d_shared`` hold
    ``total_ffn_params`` (router excluded; e.g. CartesianMoE's SMoE-Top3 width 3264 = 17*3072/16)."""
    width = (total_ffn_params / (3 * d_model) - d_shared) / n_experts
    return max(multiple, int(round(width / multiple)) * multiple)


def relative_gap(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def check_budgets(counts: dict[str, ParamCount], field: str = "total", rtol: float = 0.005) -> None:
    """Raise ``ValueError`` naming the variants whose ``field`` differs by more than ``rtol`` from the first."""
    names = list(counts)
    ref = getattr(counts[names[0]], field)
    bad = [f"{n}={getattr(c, field):,.0f}" for n, c in counts.items() if relative_gap(getattr(c, field), ref) > rtol]
    if bad:
        raise ValueError(f"{field} parameters differ by more than {rtol:.1%} from {names[0]}={ref:,.0f}: {', '.join(bad)}")
