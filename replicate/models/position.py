"""Position encodings of the decoder: rotary (with per-head bases, position interpolation, YaRN), or none.

A position part is built as ``POSITION[name](cfg, **cfg.position_kwargs)`` and called as ``pos(q_BHTd, k_BHTd, ctx)``
(``k`` may be None: a layer that reuses another layer's keys rotates only its queries). Positions are
``ctx.pos_offset + 0..T-1`` (the offset counts cached tokens during decoding, plus any offset a caller asks for), or
``ctx.position_ids``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from replicate.registry import Registry

if TYPE_CHECKING:
    from replicate.models.context import ForwardContext
    from replicate.models.decoder import DecoderConfig

POSITION = Registry("position")  # name -> factory(cfg, **position_kwargs) -> module
register_position = POSITION.register


def rope_inv_freq(base: float, head_dim: int) -> torch.Tensor:
    """theta_j = base^(-2j / d_head), j = 0..d_head/2 - 1 (fp32, as transformers' default RoPE)."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def yarn_inv_freq(base: float, head_dim: int, factor: float, original_max_seq_len: int, beta_fast: float = 32.0,
                  beta_slow: float = 1.0, truncate: bool = True) -> torch.Tensor:
    """YaRN's frequencies (Peng et al. 2023; transformers' ``_compute_yarn_parameters``, same arithmetic).

    Pair j rotates r_j = L_orig theta_j / 2 pi times over the original context. Pairs that rotate often (r > beta_fast)
    keep theta_j (extrapolation), pairs that rotate rarely (r < beta_slow) are interpolated, theta_j / s, and a linear
    ramp over the pair index mixes the two in between:
        theta'_j = theta_j / s * ramp_j + theta_j * (1 - ramp_j)"""
    def correction_dim(rotations):  # the pair index j at which r_j = rotations
        return head_dim * math.log(original_max_seq_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # no singularity
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    extrapolation = 1 - ramp
    return (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation


def yarn_attention_factor(factor: float) -> float:
    """YaRN's logit temperature, applied to cos and sin (so q.k scales by its square): 0.1 ln s + 1."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


@register_position("rope")
class RoPE(nn.Module):
    """Rotary position embedding (Su et al. 2021), half-split layout as in LLaMA / ``transformers``:

    q'_m = q_m * cos(m θ) + rotate_half(q_m) * sin(m θ),   θ_j = base^(-2j / d_head),
    i.e. with q = [q1, q2] (the two halves):  q' = [q1 cos - q2 sin,  q2 cos + q1 sin]   (computed in this form:
    no negated copy, ~40 % faster fwd+bwd on CPU than materialising rotate_half)

    Variants (``position_kwargs``), all changing only the angle table:
    - ``bases``: one base per KV head (HARPE); the query heads of a group use their KV head's base, so q.k of each
      pair stays a function of m - n. All bases equal computes exactly the standard table.
    - ``scaling="linear"``, ``factor`` s: position interpolation (Chen et al. 2023), θ_j / s (as transformers).
    - ``scaling="yarn"``, ``factor``, ``original_max_seq_len``, ``beta_fast``, ``beta_slow``: YaRN (see
      ``yarn_inv_freq``), cos and sin scaled by ``attention_factor`` (default 0.1 ln s + 1).
    - the base itself is ``DecoderConfig.rope_theta`` (ABF: change it and continue training).
    """

    def __init__(self, cfg: DecoderConfig, bases: tuple | None = None, scaling: str | None = None,
                 factor: float = 1.0, original_max_seq_len: int | None = None, beta_fast: float = 32.0,
                 beta_slow: float = 1.0, attention_factor: float | None = None):
        super().__init__()
        head_dim, max_seq_len = cfg.head_dim, cfg.max_seq_len
        if bases is not None and len(bases) != cfg.kv_heads:
            raise ValueError(f"position_kwargs: bases needs one base per KV head ({cfg.kv_heads}), got {len(bases)}")
        if scaling not in (None, "linear", "yarn"):
            raise ValueError(f"position_kwargs: scaling={scaling!r}; allowed: linear, yarn")
        if scaling == "yarn" and original_max_seq_len is None:
            raise ValueError("position_kwargs: scaling='yarn' needs original_max_seq_len")
        self.per_head = bases is not None
        self.group = cfg.n_heads // cfg.kv_heads
        scale = 1.0
        inv_freqs = []
        for base in (bases if bases is not None else (cfg.rope_theta,)):
            if scaling == "yarn":
                inv_freqs.append(yarn_inv_freq(base, head_dim, factor, original_max_seq_len, beta_fast, beta_slow))
                scale = yarn_attention_factor(factor) if attention_factor is None else attention_factor
            elif scaling == "linear":
                inv_freqs.append(rope_inv_freq(base, head_dim) / factor)
            else:
                inv_freqs.append(rope_inv_freq(base, head_dim))
        t = torch.arange(max_seq_len, dtype=torch.float32)
        freqs = torch.stack([torch.outer(t, f) for f in inv_freqs])  # (n_bases, T, d_head / 2)
        self.register_buffer("inv_freq", torch.stack(inv_freqs), persistent=False)  # (n_bases, d_head / 2)
        if not self.per_head:
            freqs, self.inv_freq = freqs[0], self.inv_freq[0]  # (T, d_head / 2): the standard table
        cos, sin = freqs.cos(), freqs.sin()
        if scale != 1.0:
            cos, sin = cos * scale, sin * scale
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.attention_scaling = scale

    @staticmethod
    def rotate(x, cos, sin):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def tables(self, T: int, ctx: ForwardContext | None, dtype):
        """cos, sin for the rows of this call: (T, d/2), (B, 1, T, d/2) with position ids; per-head (H_kv, ...)."""
        if ctx is not None and ctx.position_ids is not None:
            ids = ctx.position_ids  # (T,) or (B, T)
            if self.per_head:  # (H_kv, T_max, d/2)[:, ids] -> (H_kv, [B,] T, d/2) -> ([B,] H_kv, T, d/2)
                cos, sin = self.cos[:, ids], self.sin[:, ids]
                if ids.dim() == 2:
                    cos, sin = cos.transpose(0, 1), sin.transpose(0, 1)
            else:
                cos, sin = self.cos[ids], self.sin[ids]
                if ids.dim() == 2:
                    cos, sin = cos[:, None], sin[:, None]
        else:
            off = 0 if ctx is None else ctx.pos_offset
            if self.per_head:
                cos, sin = self.cos[:, off : off + T], self.sin[:, off : off + T]
            else:
                cos, sin = self.cos[off : off + T], self.sin[off : off + T]
        return cos.to(dtype), sin.to(dtype)

    def forward(self, q_BHTd, k_BHTd=None, ctx: ForwardContext | None = None):
        cos, sin = self.tables(q_BHTd.shape[-2], ctx, q_BHTd.dtype)
        if not self.per_head:
            k = None if k_BHTd is None else self.rotate(k_BHTd, cos, sin)
            return self.rotate(q_BHTd, cos, sin), k
        # per-KV-head tables: keys use them as they are, queries repeat each for the heads of its group
        k = None if k_BHTd is None else self.rotate(k_BHTd, cos, sin)
        if self.group > 1:
            cos, sin = cos.repeat_interleave(self.group, dim=-3), sin.repeat_interleave(self.group, dim=-3)
        return self.rotate(q_BHTd, cos, sin), k


@register_position("none")
class NoPosition(nn.Module):
    """No position encoding (causal attention alone carries order)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()

    def forward(self, q, k=None, ctx=None):
        return q, k
