"""Routing fixtures shared by the kernel tests: (T, E, K) edge shapes and routings with known structure."""

from __future__ import annotations

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_routing(T: int, E: int, K: int, kind: str = "random", seed: int = 0):
    """``(topk_idx_TK int64, topk_w_TK fp32)``, distinct experts per token.

    kind: "random"; "one_expert" (every token's first slot is expert E-1: one expert gets all T tokens);
    "empty" (only experts 0 and E-1 are ever chosen, K <= 2); "padded" (about a third of the slots empty, -1).
    """
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(T, E, generator=g).argsort(-1)[:, :K]
    if kind == "one_expert":
        first = torch.full((T, 1), E - 1)
        rest = torch.rand(T, E, generator=g).argsort(-1)
        rest = torch.stack([r[r != E - 1][: K - 1] for r in rest]) if K > 1 else rest[:, :0]
        idx = torch.cat([first, rest], 1)
    elif kind == "empty":
        assert K <= 2 and E >= 2
        both = torch.tensor([0, E - 1])
        flip = torch.rand(T, generator=g) < 0.5
        idx = torch.where(flip[:, None], both.flip(0), both)[:, :K]
    elif kind == "padded":
        drop = torch.rand(T, K, generator=g) < 0.35
        idx = torch.where(drop, -1, idx)
    w = torch.rand(T, K, generator=g) + 0.1
    w = torch.where(idx >= 0, w, 0.0)
    return idx.to(DEVICE), w.to(DEVICE)


# (T, E, K, kind): why each case is here
ROUTING_CASES = [
    pytest.param(1, 4, 2, "random", id="T1-E4-K2-single_token"),
    pytest.param(7, 5, 2, "random", id="T7-E5-K2-T_below_tile-prime_E"),
    pytest.param(9, 1, 1, "random", id="T9-E1-K1-one_expert_total"),
    pytest.param(11, 3, 3, "random", id="T11-E3-K3-K_equals_E"),
    pytest.param(40, 7, 1, "random", id="T40-E7-K1-top1"),
    pytest.param(33, 13, 2, "one_expert", id="T33-E13-K2-all_tokens_to_one_expert"),
    pytest.param(21, 6, 2, "empty", id="T21-E6-K2-empty_experts"),
    pytest.param(25, 5, 3, "padded", id="T25-E5-K3-empty_slots"),
    pytest.param(70, 4, 2, "random", id="T70-E4-K2-several_tiles"),
]
