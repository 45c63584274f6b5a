"""UniAttn's contribution: SuperBlocks whose member layers reuse the leader's softmax, a linear compensation W_c with
a closed-form least-squares initialisation, and the two-stage post-training (spec §3.2-3.5).

Legend: x_l the residual stream entering block l, u_l = RMSNorm_1(x_l), h_l = x_l + A_l the stream after the
attention sub-block, P (B, H, T, S) post-softmax probabilities, d model width.

    leader(l)  = l  if l < begin or l >= end or (l - begin) % G == 0                  (§3.2: one rule everywhere)
               = the most recent leader otherwise (the first layer of l's SuperBlock)
    member l:  V_l = u_l W_v^l
               A_l = concat_h(P_leader^h V_l^h) W_o^l + u_l W_c^l                     (§3.3; W_c: d x d, no bias)
               no W_q, W_k, RoPE, QK^T, softmax or K-cache; P_leader is not detached (the leader's W_q, W_k learn
               from every member of its SuperBlock)
    init:      for k = 1..U (members in depth order), with W_c of m_1..m_{k-1} solved and of m_k..m_U zero:
               Δ = h^base_{m_k} − h^uni_{m_k},  X = u^uni_{m_k}
               paper_mean:   W = pinv(mean_rows X) · mean_rows Δ   (position-wise means, (T, d): the code's recipe)
               lstsq_tokens: W = (XᵀX + λI)⁻¹ XᵀΔ over every real calibration token                    (§3.4)
    training:  stage 1 trains only W_c, stage 2 everything, each with a fresh schedule                   (§3.5)

The member part is the shared ``ReuseProbsAttention`` (``replicate.models.attention``: own W_v and W_o, the
leader's P, a V-only cache) with W_c added, registered as the decoder's ``"uniattn"`` attention kind. Softmax
sharing without compensation is the shared part itself (``"reuse_probs"``); CLA is the shared attention with
``kv_from``; LLMDrop is the ``"none"`` attention kind; ``convert.attention_state`` maps the one pre-trained base onto
each of them.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from replicate.models.attention import ReuseProbsAttention, register_attention
from replicate.models.decoder import Decoder, DecoderConfig, LayerSpec
from replicate.models.probes import capture


# ---------------------------------------------------------------------------------------------- SuperBlocks


def superblocks(n_layers: int, group_size: int, begin: int, end: int) -> dict[int, int]:
    """member layer -> its leader (§3.2). G = 1 has no members."""
    if not (0 <= begin <= end <= n_layers) or group_size < 1:
        raise ValueError(f"superblocks: need 0 <= begin ({begin}) <= end ({end}) <= n_layers ({n_layers}), G >= 1")
    out = {}
    for layer in range(begin, end):
        if (layer - begin) % group_size:
            out[layer] = layer - (layer - begin) % group_size
    return out


def cla_groups(n_layers: int, begin: int, end: int, group_size: int) -> dict[int, int]:
    """Cross-layer KV sharing (CLA, Brandon et al. 2024) on the same layers: consumer -> producer of K and V."""
    return superblocks(n_layers, group_size, begin, end)


# --------------------------------------------------------------------------------------------- the member


@register_attention("uniattn")
class UniAttnMember(ReuseProbsAttention):
    """A member layer: A = concat_h(P_leader^h V^h) W_o + u W_c (§3.3). W_c starts at zero, so before the closed-form
    init (or training) the layer computes exactly softmax sharing without compensation."""

    def __init__(self, cfg: DecoderConfig, layer_idx: int = 0, *, probs_from: int):
        super().__init__(cfg, layer_idx, probs_from=probs_from)
        self.comp_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)  # W_c (weight = W^T)

    def init_weights(self, std: float) -> None:  # the decoder's init reaches this after the Linear children
        nn.init.zeros_(self.comp_proj.weight)

    def forward(self, x_BTD, pos: nn.Module, ctx):
        return super().forward(x_BTD, pos, ctx) + self.comp_proj(x_BTD)  # ... W_o + u W_c


def member_layers(model: nn.Module) -> list[int]:
    return [i for i, b in enumerate(model.layers) if isinstance(b.attn, ReuseProbsAttention)]


# ------------------------------------------------------------------------------------ decoder configurations


def unified_config(base: DecoderConfig, members: dict[int, int], compensation: bool = True) -> DecoderConfig:
    """``base`` with ``members`` (member -> leader) reusing the leader's P: with W_c (``"uniattn"``) or without
    (``"reuse_probs"``: softmax sharing only). Leaders run the eager path (they must hand P over)."""
    specs = list(base.layers or (LayerSpec(),) * base.n_layers)
    kind = "uniattn" if compensation else "reuse_probs"
    for m, lead in members.items():
        specs[m] = replace(specs[m], attention=kind, attention_kwargs=(("probs_from", lead),))
    return replace(base, layers=tuple(specs))


def cla_config(base: DecoderConfig, consumers: dict[int, int]) -> DecoderConfig:
    specs = list(base.layers or (LayerSpec(),) * base.n_layers)
    for c, prod in consumers.items():
        specs[c] = replace(specs[c], attention_kwargs=(("kv_from", prod),))
    return replace(base, layers=tuple(specs))


def drop_config(base: DecoderConfig, dropped: tuple[int, ...]) -> DecoderConfig:
    specs = list(base.layers or (LayerSpec(),) * base.n_layers)
    for i in dropped:
        specs[i] = replace(specs[i], attention="none")
    return replace(base, layers=tuple(specs))


# ---------------------------------------------------------------------------------- closed-form init of W_c


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``model`` in eval mode for the block, then every submodule back in the mode it had: a measurement (the fit
    of W_c, a probe) leaves a module that is about to train in train mode (Lightning keeps the mode it is handed)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was in modes:
            m.training = was


@torch.no_grad()
def _stream(model: Decoder, ids_BT, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, h) at ``layer``: the normed block input and the stream after the attention sub-block, (B, T, d) each."""
    with eval_mode(model), capture(model, ["attn_in", "resid_mid"]) as rec:
        model(ids_BT)
    return rec[f"layer{layer}/attn_in"][0].double(), rec[f"layer{layer}/resid_mid"][0].double()


def solve_compensation(X_BTD, delta_BTD, mask_BT, mode: str, *, ridge: float = 1e-4,
                       rcond: float = 1e-10) -> torch.Tensor:
    """W (d, d) with X W ≈ Δ (§3.4), fp64. ``paper_mean``: position-wise means over the rows (real tokens only; a
    position with none is left out), then W = pinv(X̄) Δ̄ (singular values below ``rcond`` × the largest are zero).
    ``lstsq_tokens``: W = (XᵀX + λ s I)⁻¹ XᵀΔ over every real token, s = mean diagonal of XᵀX. ``zero``: W = 0."""
    d = X_BTD.shape[-1]
    m = mask_BT.to(X_BTD.dtype)[..., None]
    if mode == "zero":
        return torch.zeros(d, d, dtype=X_BTD.dtype)
    if mode == "paper_mean":
        n = m.sum(0)  # (T, 1) real rows per position
        keep = n[:, 0] > 0
        Xm, Dm = (X_BTD * m).sum(0)[keep] / n[keep], (delta_BTD * m).sum(0)[keep] / n[keep]
        return torch.linalg.pinv(Xm, rtol=rcond) @ Dm
    if mode == "lstsq_tokens":
        sel = mask_BT.bool()
        X, D = X_BTD[sel], delta_BTD[sel]
        A = X.T @ X
        A = A + ridge * A.diagonal().mean() * torch.eye(d, dtype=A.dtype)
        return torch.linalg.solve(A, X.T @ D)
    raise ValueError(f"init: {mode!r}; allowed: paper_mean, lstsq_tokens, zero")


def residual(X_BTD, delta_BTD, mask_BT, W) -> float:
    """‖Δ − X W‖_F² over the real tokens (the error the compensation leaves at one member)."""
    r = (delta_BTD - X_BTD @ W) * mask_BT.to(X_BTD.dtype)[..., None]
    return float(r.square().sum())


def mean_residual(X_BTD, delta_BTD, mask_BT, W) -> float:
    """‖Δ̄ − X̄ W‖_F² on the position-wise means over the rows (paper_mean's own objective)."""
    m = mask_BT.to(X_BTD.dtype)[..., None]
    n = m.sum(0)
    keep = n[:, 0] > 0
    Xm, Dm = (X_BTD * m).sum(0)[keep] / n[keep], (delta_BTD * m).sum(0)[keep] / n[keep]
    return float((Dm - Xm @ W).square().sum())


@torch.no_grad()
def fit_compensation(base: Decoder, uni: Decoder, ids_BT, mask_BT, mode: str, *, ridge: float = 1e-4,
                     rcond: float = 1e-10) -> list[dict]:
    """Set W_c of every member of ``uni`` in depth order (§3.4): each solved with the earlier members' W_c active
    and its own and later ones at zero. ``base``: the unmodified model; ``ids_BT`` / ``mask_BT``: calibration rows
    and their real tokens. Returns per member the residual ‖Δ − X W‖² over the tokens and on the position-wise means,
    at zero and at the solution (the earlier members already compensated), and ‖W‖. Least squares guarantees only
    its own objective: ``lstsq_tokens`` the per-token residual, ``paper_mean`` the residual of the means (its
    per-token residual can exceed zero's, most where there are fewer positions than columns)."""
    members = [i for i in member_layers(uni) if isinstance(uni.layers[i].attn, UniAttnMember)]
    for i in members:
        uni.layers[i].attn.comp_proj.weight.zero_()
    out = []
    for i in members:
        _, h_base = _stream(base, ids_BT, i)
        X, h_uni = _stream(uni, ids_BT, i)  # W_c of layer i is 0 here: h_uni is the uncompensated stream
        delta = h_base - h_uni
        W = solve_compensation(X, delta, mask_BT, mode, ridge=ridge, rcond=rcond)
        uni.layers[i].attn.comp_proj.weight.copy_(W.T.to(uni.layers[i].attn.comp_proj.weight.dtype))
        out.append({"layer": i, "residual_zero": residual(X, delta, mask_BT, torch.zeros_like(W)),
                    "residual_init": residual(X, delta, mask_BT, W), "mean_residual_zero":
                    mean_residual(X, delta, mask_BT, torch.zeros_like(W)), "mean_residual_init":
                    mean_residual(X, delta, mask_BT, W), "w_norm": float(W.norm())})
    return out


@torch.no_grad()
def streams(model: Decoder, ids_BT, layers) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """(u, h) at every layer of ``layers`` from one forward pass (as ``_stream``, fp64)."""
    with eval_mode(model), capture(model, ["attn_in", "resid_mid"]) as rec:
        model(ids_BT)
    return {i: (rec[f"layer{i}/attn_in"][0].double(), rec[f"layer{i}/resid_mid"][0].double()) for i in layers}


@torch.no_grad()
def heldout_residuals(base_h: dict, uni: Decoder, ids_BT, mask_BT) -> list[dict]:
    """The residuals ``fit_compensation`` reports, measured with ``uni``'s W_c as set (no fit) on other rows: per
    member in depth order, with the earlier members compensated, ‖Δ‖² (W_c = 0) and ‖Δ − X W_c‖² over the real
    tokens (Δ: the base model's post-attention stream minus the member's uncompensated one). ``base_h``: layer -> the
    base model's post-attention stream on these rows (``streams(base, ...)[layer][1]``)."""
    members = [i for i in member_layers(uni) if isinstance(uni.layers[i].attn, UniAttnMember)]
    got = streams(uni, ids_BT, members)  # one pass: every member sees the earlier members' W_c, as in the fit
    out = []
    for i in members:
        X, h_uni = got[i]  # with this member's W_c: h_uni = uncompensated + X W
        W = uni.layers[i].attn.comp_proj.weight.double().T
        delta = base_h[i] - (h_uni - X @ W)
        out.append({"layer": i, "residual_zero": residual(X, delta, mask_BT, torch.zeros_like(W)),
                    "residual_init": residual(X, delta, mask_BT, W)})
    return out


# ------------------------------------------------------------------------------------------ two-stage recipe

STAGE1_TRAINABLE = ("layers.*.attn.comp_proj.weight",)  # stage 1: W_c only (§3.5); stage 2: () = everything


# ------------------------------------------------------------------------------ what the experiments measure


@torch.no_grad()
def attention_importance(model: Decoder, ids_BT, mask_BT) -> list[float]:
    """LLMDrop's score per layer (He et al. 2024): 1 − cos(x, x + Attn(LN(x))) per real token, averaged; a low
    score means the attention sub-layer changes the stream little."""
    with eval_mode(model), capture(model, ["resid_in", "resid_mid"]) as rec:
        model(ids_BT)
    m = mask_BT.bool()
    return [float(1 - F.cosine_similarity(rec[f"layer{i}/resid_in"][0][m], rec[f"layer{i}/resid_mid"][0][m],
                                          dim=-1).mean()) for i in range(len(model.layers))]


@torch.no_grad()
def probs_similarity(model: Decoder, ids_BT, mask_BT) -> torch.Tensor:
    """Per row, the similarity of every two layers' softmax maps (R, L, L): the cosine similarity of P rows, averaged
    over heads and over the real query positions of the row (the motivation figure)."""
    with eval_mode(model), capture(model, ["attn_probs"]) as rec:
        model(ids_BT)
    P = [rec.by_layer("attn_probs")[i][0].float() for i in range(len(model.layers))]  # (R, H, T, S) each
    P = torch.stack([F.normalize(p, dim=-1) for p in P])  # (L, R, H, T, S), unit rows
    m = mask_BT.float()  # (R, T)
    sim = torch.einsum("arhts,brhts->rabht", P, P).mean(3)  # (R, L, L, T): mean over heads
    return (sim * m[:, None, None]).sum(-1) / m.sum(-1).clamp(min=1)[:, None, None]


def decode_ops(model: Decoder, context: int) -> dict:
    """Counted work of one decode step at ``context`` keys: QK^T multiply-adds and softmax exponentials (only layers
    that compute their own scores), P·V multiply-adds (every attention layer) and the K/V cache elements read."""
    cfg = model.cfg
    H, Hkv, dh = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    qk = sm = pv = k_read = v_read = 0
    for b in model.layers:
        a = b.attn
        if a is None:
            continue
        pv += H * dh * context
        if isinstance(a, ReuseProbsAttention):
            v_read += Hkv * dh * context
            continue
        qk += H * dh * context
        sm += H * context
        k_read += Hkv * dh * context
        v_read += Hkv * dh * context
    return {"qk_macs": qk, "softmax_exps": sm, "pv_macs": pv, "cache_elems_read": k_read + v_read}
