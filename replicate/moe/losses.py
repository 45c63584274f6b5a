"""Auxiliary router losses and router statistics. All inputs fp32; losses are scalars.

Load balancing (Switch / GShard, Fedus et al. 2021 Eq. 4), from the router *probabilities* (never a second
softmax of them: transformers issue #45120):

    L_balance = E * sum_e f_e * P_e
    f_e = (filled slots routed to e) / (filled slots)        [first choice only: DeepSpeed's top-2 gate]
    P_e = mean over tokens of p[t, e]

It is 1 when routing is uniform, E when every token goes to one expert. f carries no gradient; P does.

Router z-loss (ST-MoE, Zoph et al. 2022 Eq. 5): ``L_z = mean_t (logsumexp_e z[t, e])^2``.
"""

from __future__ import annotations

import torch


def load_balancing_loss(probs_TE: torch.Tensor, topk_idx_TK: torch.Tensor, first_choice_only: bool = False) -> torch.Tensor:
    E = probs_TE.shape[-1]
    idx = topk_idx_TK[:, :1] if first_choice_only else topk_idx_TK
    filled = idx[idx >= 0]
    f_E = torch.bincount(filled, minlength=E).to(probs_TE.dtype) / max(filled.numel(), 1)
    P_E = probs_TE.mean(0)
    return E * (f_E * P_E).sum()


def router_z_loss(logits_TE: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits_TE.float(), dim=-1).square().mean()


@torch.no_grad()
def load_stats(counts_E: torch.Tensor, n_slots: int, probs_TE: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-expert load for logging (detached): fraction of filled slots per expert, its min/max and
    coefficient of variation (0 = perfectly even), the fraction of empty slots, and, from the router
    probabilities, their entropy and the mean top-1 probability (how confident routing is)."""
    counts = counts_E.float()
    filled = counts.sum()
    load_E = counts / filled.clamp(min=1)
    stats = {
        "load_E": load_E,
        "load_min": load_E.min(),
        "load_max": load_E.max(),
        "load_cv": counts.std(unbiased=False) / counts.mean().clamp(min=1e-9),
        "empty_slot_frac": 1.0 - filled / max(n_slots, 1),
    }
    if probs_TE is not None:
        p = probs_TE.float()
        stats["router_entropy"] = -(p * p.clamp(min=1e-20).log()).sum(-1).mean()
        stats["router_max_prob"] = p.max(-1).values.mean()
    return stats
