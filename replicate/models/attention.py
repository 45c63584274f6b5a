"""Attention parts of the decoder, looked up by name in ``ATTENTION``.

A part is built as ``ATTENTION[name](cfg, layer_idx=i, **attention_kwargs)`` and called as ``attn(u_BTD, pos, ctx)``
on the normed block input; it returns (B, T, D). A factory may return None: that layer has no attention
sub-block (``"none"``: LLMDrop's dropped layers).

    P = softmax(q k^T / sqrt(d_head) + mask)      (B, H, T, S)     query head h reads KV head h // (H / H_kv)
    y = concat_h(P_h v_h) W_o

| name | what | cache |
|---|---|---|
| ``"sdpa"`` | MHA / GQA / MQA, one fused QKV projection, ``F.scaled_dot_product_attention`` | K, V |
| ``"eager"`` | the same weights, P materialised (returns it; the same outputs within float tolerance) | K, V |
| ``"sdpa"``/``"eager"`` with ``kv_from=j`` | cross-layer KV sharing (CLA): own W_q, layer j's (rotated) K and V | none |
| ``"reuse_probs"`` with ``probs_from=j`` | own W_v and W_o, layer j's probabilities: y = P_j v (UniAttn's Softmax unification) | V |
| ``"cross"`` | queries from the stream, keys/values from ``ctx.memory_BMD`` with its padding mask | none |
| ``"none"`` | no attention sub-block (and no norm before it) | none |

Attention kwargs of both self-attention kinds: ``causal`` (default True; False for encoders), ``kv_from``.
Cross-layer hand-over goes through ``ctx.shared``: the decoder sets ``export_kv`` / ``export_probs`` on the
layers that a later layer names in ``kv_from`` / ``probs_from``; an exporting layer that must hand over P runs the
eager path. Masks come from ``ctx.mask`` (causal, padding, decoding offsets).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from replicate.models.probes import Probed
from replicate.registry import Registry

if TYPE_CHECKING:
    from replicate.models.context import ForwardContext
    from replicate.models.decoder import DecoderConfig

ATTENTION = Registry("attention")  # name -> factory(cfg, layer_idx=i, **attention_kwargs) -> module or None
register_attention = ATTENTION.register


def _grouped(q_BHTd, n_kv: int):
    """(B, H, T, d) -> (B, H_kv, G, T, d): the query heads of each KV head side by side (no copy)."""
    B, H, T, d = q_BHTd.shape
    return q_BHTd.view(B, n_kv, H // n_kv, T, d)


def attention_probs(q_BHTd, k_BHSd, mask, is_causal: bool) -> torch.Tensor:
    """P = softmax(q k^T / sqrt(d) + mask), (B, H, T, S), softmax in fp32; K/V heads are shared by groups of
    query heads (GQA) through broadcasting, without repeating K."""
    B, H, T, d = q_BHTd.shape
    n_kv, S = k_BHSd.shape[1], k_BHSd.shape[2]
    s = _grouped(q_BHTd, n_kv) @ k_BHSd[:, :, None].transpose(-1, -2) * d**-0.5  # (B, H_kv, G, T, S)
    s = s.view(B, H, T, S).float()
    if is_causal:
        s = s.masked_fill(~torch.ones(T, S, dtype=torch.bool, device=s.device).tril(S - T), float("-inf"))
    elif mask is not None:
        s = s + mask
    return torch.softmax(s, dim=-1).to(q_BHTd.dtype)


def probs_times_values(p_BHTS, v_BHSd) -> torch.Tensor:
    """y_h = P_h v_{h // G}: (B, H, T, d)."""
    B, H, T, S = p_BHTS.shape
    n_kv = v_BHSd.shape[1]
    return (_grouped(p_BHTS, n_kv) @ v_BHSd[:, :, None]).view(B, H, T, v_BHSd.shape[-1])


def attend(q_BHTd, k_BHSd, v_BHSd, mask, is_causal: bool, eager: bool = False):
    """(y (B, H, T, d), P or None): SDPA, or the eager computation that also returns P."""
    if eager:
        p = attention_probs(q_BHTd, k_BHSd, mask, is_causal)
        return probs_times_values(p, v_BHSd), p
    y = F.scaled_dot_product_attention(q_BHTd, k_BHSd, v_BHSd, attn_mask=mask, is_causal=is_causal,
                                       enable_gqa=k_BHSd.shape[1] != q_BHTd.shape[1])
    return y, None


class Attention(nn.Module, Probed):
    """Self-attention: multi-head with optional grouped-query heads, one fused QKV matmul, SDPA or eager.

    ``kv_from=j``: this layer computes only its queries and attends over layer j's keys and values (cross-layer
    KV sharing); it stores nothing in a KV cache."""

    probe_names = ("attn_probs",)

    def __init__(self, cfg: DecoderConfig, layer_idx: int = 0, *, impl: str = "sdpa", causal: bool = True,
                 kv_from: int | None = None):
        super().__init__()
        if impl not in ("sdpa", "eager"):
            raise ValueError(f"attention: impl={impl!r}; allowed: sdpa, eager")
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.layer_idx, self.eager, self.causal, self.kv_from = layer_idx, impl == "eager", causal, kv_from
        if kv_from is None:
            self.qkv_proj = nn.Linear(cfg.d_model, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=False)
        else:
            self.q_proj = nn.Linear(cfg.d_model, self.n_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=False)
        self.cache_kind = "kv" if kv_from is None else "none"
        self.export_kv = self.export_probs = False  # set by the Decoder when a later layer reads them

    def forward(self, x_BTD, pos: nn.Module, ctx: ForwardContext):
        B, T, _ = x_BTD.shape
        hd = self.head_dim
        if self.kv_from is None:  # [q, k, v] = u W_qkv^T, one matmul
            q, k, v = self.qkv_proj(x_BTD).split([self.n_heads * hd, self.n_kv * hd, self.n_kv * hd], dim=-1)
            q = q.view(B, T, self.n_heads, hd).transpose(1, 2)
            k = k.view(B, T, self.n_kv, hd).transpose(1, 2)
            v = v.view(B, T, self.n_kv, hd).transpose(1, 2)
            q, k = pos(q, k, ctx)  # rotated at positions pos_offset + 0..T-1
            if ctx.cache is not None:
                k, v = ctx.cache.update(self.layer_idx, k, v)  # every key so far: (B, H_kv, S, d)
            if self.export_kv:
                ctx.shared[("kv", self.layer_idx)] = (k, v)
        else:  # CLA: own queries against layer kv_from's (already rotated, cached) keys and values
            q = self.q_proj(x_BTD).view(B, T, self.n_heads, hd).transpose(1, 2)
            q, _ = pos(q, None, ctx)
            k, v = ctx.shared[("kv", self.kv_from)]
        mask, is_causal = ctx.mask(T, k.shape[2], self.causal, q.dtype, q.device)  # standard: (None, True)
        y, p = attend(q, k, v, mask, is_causal, eager=self.eager or self.export_probs)  # y = P v, (B, H, T, d)
        if self.export_probs:
            ctx.shared[("probs", self.layer_idx)] = p
        if self._probe is not None:  # an SDPA layer computes P beside its output, which stays SDPA's
            self._probe("attn_probs", p if p is not None else attention_probs(q, k, mask, is_causal))
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * hd))  # concat_h(y_h) W_o


@register_attention("sdpa")
def _sdpa(cfg, layer_idx: int = 0, **kwargs) -> Attention:
    return Attention(cfg, layer_idx, impl="sdpa", **kwargs)


@register_attention("eager")
def _eager(cfg, layer_idx: int = 0, **kwargs) -> Attention:
    return Attention(cfg, layer_idx, impl="eager", **kwargs)


@register_attention("none")
def _no_attention(cfg, layer_idx: int = 0):
    return None


@register_attention("reuse_probs")
class ReuseProbsAttention(nn.Module):
    """y = concat_h(P_j^h v^h) W_o: the probabilities of layer ``probs_from`` (an earlier layer, any kind that can
    export them) applied to this layer's own values (UniAttn Sec. 3, "Softmax unification"). No W_q, no W_k, no
    position encoding; the KV cache stores only V. P is not detached: layer j's W_q, W_k learn from this layer too."""

    def __init__(self, cfg: DecoderConfig, layer_idx: int = 0, *, probs_from: int):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.layer_idx, self.probs_from = layer_idx, probs_from
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=False)
        self.cache_kind = "v"

    def forward(self, x_BTD, pos: nn.Module, ctx: ForwardContext):
        B, T, _ = x_BTD.shape
        v = self.v_proj(x_BTD).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # own values: v = u W_v^T
        if ctx.cache is not None:
            _, v = ctx.cache.update(self.layer_idx, None, v)  # every value so far (no keys are kept)
        y = probs_times_values(ctx.shared[("probs", self.probs_from)], v)  # P_leader v: (B, H, T, d)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class CrossAttention(nn.Module, Probed):
    """Queries from ``x`` (B, T, D), keys and values from ``memory`` (B, M, D_mem), no causal mask, a padding mask
    over the memory rows (True = real). Usable on its own (HEIE's two-way mapper: text -> image and image -> text)
    and as the decoder's ``"cross"`` part (memory from ``ctx.memory_BMD``)."""

    probe_names = ("attn_probs",)

    def __init__(self, d_model: int, n_heads: int, d_memory: int | None = None, n_kv_heads: int | None = None,
                 bias: bool = False):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"CrossAttention: d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.n_kv, self.head_dim = n_heads, n_kv_heads or n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.kv_proj = nn.Linear(d_memory or d_model, 2 * self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)

    def attend_memory(self, x_BTD, memory_BMD, memory_mask_BM=None):
        B, T, _ = x_BTD.shape
        M = memory_BMD.shape[1]
        q = self.q_proj(x_BTD).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv_proj(memory_BMD).view(B, M, 2 * self.n_kv, self.head_dim).transpose(1, 2).chunk(2, dim=1)
        mask = None
        if memory_mask_BM is not None:  # padded memory rows get finfo.min: exp(...) = 0
            mask = torch.zeros((), dtype=q.dtype, device=q.device).masked_fill(
                ~memory_mask_BM[:, None, None, :].bool(), torch.finfo(q.dtype).min)
        y, p = attend(q, k, v, mask, False)
        if self._probe is not None:
            self._probe("attn_probs", attention_probs(q, k, mask, False))
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def forward(self, x_BTD, memory_BMD, memory_mask_BM=None):
        return self.attend_memory(x_BTD, memory_BMD, memory_mask_BM)


class _DecoderCrossAttention(CrossAttention):
    cache_kind = "none"

    def forward(self, x_BTD, pos: nn.Module, ctx: ForwardContext):
        if ctx.memory_BMD is None:
            raise ValueError("attention 'cross' needs memory: call the model with memory_BMD=...")
        return self.attend_memory(x_BTD, ctx.memory_BMD, ctx.memory_mask_BM)


@register_attention("cross")
def _cross(cfg, layer_idx: int = 0, *, d_memory: int | None = None, bias: bool = False) -> CrossAttention:
    return _DecoderCrossAttention(cfg.d_model, cfg.n_heads, d_memory, cfg.n_kv_heads, bias)
