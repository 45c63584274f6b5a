"""CartesianMoE's contribution: the Cartesian product layer, and the budget table that makes its baselines fair.

Legend: T tokens, d model width, D dense FFN width, N experts of width D per MoE layer (the paper: 16; ours: 8).

The routed sub-block of every variant (spec §3.2; the shared ``replicate.moe.MoE``):

    z = u W_r^T (fp32),  p = softmax(z),  (I, w̃) = topk(p, k),  w = w̃ / Σ w̃   (k > 1)
    r(u) = Σ_j w_j E_{I_j}(u),     o(u) = a_1 r(u) + a_2 S(u),   a = softmax(u W_a^T + b_a)    (shared_mix="gate")
                                   o(u) = r(u) + S(u)                                         (shared_mix="add")

The Cartesian product layer (spec §3.3) replaces the FFN half of an MoE block by two such sub-blocks in sequence:

    u_A = RMSNorm_post(x);   x_A = x + o_A(u_A)       sub-layer A: N sub-experts of width D/2, top-2, shared D/2
    u_B = RMSNorm_mid(x_A);  y   = x_A + o_B(u_B)     sub-layer B: the same, independent parameters

It is the shared residual-owning ``"stack"`` FFN part with ``n = 2`` and ``sub = "moe"`` (``replicate.models.ffn``):
sub-layer j's norm is RMSNorm_post (j = 1) / RMSNorm_mid (j = 2). Since Σ_i w^A_i = Σ_j w^B_j = 1, the layer is
exactly a weighted sum over the composite experts (i, j) of the N × N Cartesian product (``product_reference``):

    y = Σ_{i ∈ I_A} Σ_{j ∈ I_B} w^A_i w^B_j [ x + a^A_1 E^A_i(u_A) + a^A_2 S^A(u_A) + a^B_1 E^B_j(u_B) + a^B_2 S^B(u_B) ]

k_A k_B = 4 composite paths per token out of N² = 64 (the paper: 256), from the parameters of 2N sub-experts; the
composites (i, ·) share E^A_i (group sharing), S^A and S^B are shared by all (global sharing). Routing is sequential:
router B sees u_B, which already holds A's output.

Budgets (spec §3.4): every MoE layer holds total FFN width (N + 1) D and runs 3 D per token (``ffn_widths``);
SMoE-Top3 runs 3 D (N+1)/N, mirroring the paper's 258M-vs-247M mismatch; TopP's active width is dynamic.

Routing robustness (spec §3.6, Table 4): at inference each router's top-1 expert is removed (its logit to -inf) and
the normal rule picks among the rest (top-k renormalised; TopP accumulates the renormalised probabilities): the
shared routers' ``disable_top1`` flag, set per sub-layer by :func:`disable_top1`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from replicate.models.context import tensor_ref
from replicate.models.decoder import LayerSpec
from replicate.models.ffn import SubLayerStack
from replicate.moe import MoE

SUBLAYERS = {"A": (0,), "B": (1,), "both": (0, 1)}


# ================================================================================================ budget table


def variant_layer(variant: str, D: int, N: int, *, shared_mix: str = "gate", balance_coef: float = 0.01,
                  top_p: float = 0.4, vocab_size: int | None = None, hash_seed: int = 0,
                  hash_counts: torch.Tensor | None = None) -> LayerSpec | None:
    """The FFN of one MoE layer of ``variant`` (spec §3.4 / §6, with D the dense width); None for Dense (its FFN
    stays the SwiGLU of width D)."""
    mix = (("shared_mix", shared_mix), ("balance_coef", balance_coef))
    moe = lambda width, **kw: LayerSpec(ffn="moe", d_ff=width, ffn_kwargs=tuple(kw.items()) + mix)
    if variant == "dense":
        return None
    if variant == "smoe_share":  # N x D, top-2, shared D
        return moe(D, n_experts=N, k=2, d_shared=D)
    if variant == "smoe_top3":  # N x D(N+1)/N, top-3, no shared expert
        return moe(D * (N + 1) // N, n_experts=N, k=3)
    if variant == "hash":  # N x D, two fixed experts per token id (w = 1/2 each), shared D
        extra = {"hash_counts": tensor_ref(hash_counts)} if hash_counts is not None else {}
        return moe(D, n_experts=N, k=2, d_shared=D, router="hash", vocab_size=vocab_size, hash_seed=hash_seed, **extra)
    if variant == "fine_grained":  # 2N x D/2, top-4, shared D = ½(S1 + S2) of two D/2 SwiGLUs
        return moe(D // 2, n_experts=2 * N, k=4, d_shared=D, shared_scale=0.5)
    if variant == "topp":  # N x D, dynamic k (p = top_p), raw probabilities, shared D
        return moe(D, n_experts=N, router="topp", top_p=top_p, d_shared=D)
    if variant == "cartesian":  # 2 sub-layers x (N x D/2, top-2, shared D/2)
        sub = (("n_experts", N), ("k", 2), ("d_shared", D // 2)) + mix
        return LayerSpec(ffn="stack", d_ff=D // 2, ffn_kwargs=(("n", 2), ("sub", "moe"), ("sub_kwargs", sub)))
    if variant == "cartesian_noshared":  # Table 3 (ours): 2 x ((N+1) x D/2, top-3), no shared sub-expert
        sub = (("n_experts", N + 1), ("k", 3)) + mix
        return LayerSpec(ffn="stack", d_ff=D // 2, ffn_kwargs=(("n", 2), ("sub", "moe"), ("sub_kwargs", sub)))
    raise ValueError(f"variant: unknown {variant!r}")


def ffn_widths(layer: nn.Module) -> tuple[int, float]:
    """(total, active) SwiGLU width of one FFN part, counted from its weights: every routed and shared expert's
    parameters / 3d (routers, gates, norms excluded); active = shared + k_active/E of the routed ones."""
    moes = [m for m in layer.modules() if isinstance(m, MoE)]
    if not moes:  # a dense SwiGLU
        w = layer.gate_proj.weight
        return w.shape[0], float(w.shape[0])
    total, active = 0, 0.0
    for m in moes:
        routed = m.experts.n_experts * m.experts.d_expert
        shared = m.shared.gate_proj.weight.shape[0] if m.shared is not None else 0
        total += routed + shared
        active += shared + routed * getattr(m.router, "k_active", 1.0) / m.n_experts
    return total, active


# ===================================================================================== the robustness protocol


def routers(model: nn.Module, where: str = "both") -> list[nn.Module]:
    """The softmax routers of ``model`` that Table 4 disables: every MoE layer's router; in a Cartesian layer only
    those of the sub-layers ``where`` names (A = the first, B = the second, both). Hash routers have no top-1 to
    remove (fixed routing) and are never returned."""
    if where not in SUBLAYERS:
        raise ValueError(f"disable_top1_in: {where!r}; allowed: {', '.join(SUBLAYERS)}")
    stacks = [m for m in model.modules() if isinstance(m, SubLayerStack)]
    in_stack = {id(s.ffn) for st in stacks for s in st.sub}
    out = [st.sub[j].ffn.router for st in stacks for j in SUBLAYERS[where]
           if j < len(st.sub) and isinstance(st.sub[j].ffn, MoE)]
    out += [m.router for m in model.modules() if isinstance(m, MoE) and id(m) not in in_stack]
    return [r for r in out if hasattr(r, "disable_top1")]


@contextlib.contextmanager
def disable_top1(model: nn.Module, where: str = "both"):
    """Inside the block, each token's top-1 expert is removed at the routers ``routers(model, where)`` (spec §3.6);
    no weight changes, and the flags are restored afterwards."""
    rs = routers(model, where)
    before = [r.disable_top1 for r in rs]
    try:
        for r in rs:
            r.disable_top1 = True
        yield rs
    finally:
        for r, b in zip(rs, before):
            r.disable_top1 = b


# ======================================================================================= the product oracle


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _route(m: MoE, u: torch.Tensor, disabled: bool) -> torch.Tensor:
    """Weights [T, E] of one sub-layer, written out: z = u W^T in fp32 (the spec's router precision), top-1 removed
    if ``disabled`` (logit -inf), p = softmax(z), top-k, renormalised (k > 1). Zero off the selection."""
    z = F.linear(u.float(), m.router.weight.float()).double()
    if disabled:
        z = z.scatter(1, z.argmax(-1, keepdim=True), float("-inf"))
    p = torch.softmax(z, -1)
    k = m.router.k
    idx = torch.sort(z, dim=-1, descending=True, stable=True).indices[:, :k]
    w = p.gather(1, idx)
    if k > 1:
        w = w / w.sum(-1, keepdim=True)
    return torch.zeros_like(p).scatter(1, idx, w)


def _expert(m: MoE, e: int, u: torch.Tensor) -> torch.Tensor:
    E = m.experts
    return (F.silu(u @ E.w_gate_EDF[e]) * (u @ E.w_up_EDF[e])) @ E.w_down_EFD[e]


def _shared_terms(m: MoE, u: torch.Tensor):
    """(a_1 [T, 1], a_2 S(u) [T, d]): the gate's weight on the routed part and the gated shared part."""
    if m.shared is None:
        return torch.ones(u.shape[0], 1, dtype=u.dtype), torch.zeros_like(u)
    s = m.shared_scale * m.shared(u)
    if m.shared_gate is None:
        return torch.ones(u.shape[0], 1, dtype=u.dtype), s
    a = torch.softmax(u @ m.shared_gate.weight.T + m.shared_gate.bias, -1)
    return a[:, :1], a[:, 1:] * s


@torch.no_grad()
def product_reference(layer: SubLayerStack, x_TD: torch.Tensor, disable: str | None = None):
    """The Cartesian layer computed as the explicit sum over the N_A x N_B composite experts it implies (module
    docstring): every sub-expert on every token, W[t, i, j] = w^A_i w^B_j (zero off the k_A k_B selected pairs),
    y = Σ_{i,j} W_ij P_ij. ``disable``: remove the top-1 of sub-layer A, B or both (Table 4). Returns (y [T, d],
    W [T, N_A, N_B]). Only for renormalised top-k sub-layers (Σ w = 1), as CartesianMoE's."""
    mA, mB = layer.sub[0].ffn, layer.sub[1].ffn
    dis = SUBLAYERS[disable] if disable else ()
    uA = _rms(x_TD, layer.sub[0].norm.weight, layer.sub[0].norm.eps)
    wA = _route(mA, uA, 0 in dis)
    a1A, sA = _shared_terms(mA, uA)
    oA = torch.stack([_expert(mA, i, uA) for i in range(mA.n_experts)], 1)  # [T, N_A, d]: E^A_i(u_A)
    xA = x_TD + a1A * torch.einsum("ti,tid->td", wA, oA) + sA  # x_A = x + o_A(u_A)
    uB = _rms(xA, layer.sub[1].norm.weight, layer.sub[1].norm.eps)
    wB = _route(mB, uB, 1 in dis)
    a1B, sB = _shared_terms(mB, uB)
    oB = torch.stack([_expert(mB, j, uB) for j in range(mB.n_experts)], 1)  # [T, N_B, d]: E^B_j(u_B)
    W = wA[:, :, None] * wB[:, None, :]  # [T, N_A, N_B]: the composite experts' weights
    # P_ij = x + a^A_1 E^A_i(u_A) + a^A_2 S^A(u_A) + a^B_1 E^B_j(u_B) + a^B_2 S^B(u_B), for every (i, j)
    P = (x_TD + sA + sB)[:, None, None, :] + (a1A[..., None] * oA)[:, :, None, :] + (a1B[..., None] * oB)[:, None, :, :]
    return torch.einsum("tij,tijd->td", W, P), W


# ============================================================================================= measurement


@torch.no_grad()
def evaluate(model: nn.Module, windows: torch.Tensor, chunk: int = 16) -> dict:
    """Held-out metrics of a decoder on (W, T+1) windows: per-position ``loss`` and ``correct`` (W, T), and the mean
    number of filled expert slots per token of each MoE sub-block (``active``, from the layers' ``last_stats``)."""
    from replicate.models.lm import per_token_nll

    was = model.training
    model.eval()
    loss, correct, active = [], [], []
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    for s in range(0, len(windows), chunk):
        w = windows[s : s + chunk]
        logits = model(w[:, :-1]).logits
        loss.append(per_token_nll(logits, w[:, 1:]))
        correct.append(logits.argmax(-1) == w[:, 1:])
        active.append([float(m.last_stats["active_per_token"]) for m in moes])
    model.train(was)
    return {"loss": torch.cat(loss), "correct": torch.cat(correct),
            "active": torch.tensor(active).mean(0) if moes else torch.zeros(0)}
