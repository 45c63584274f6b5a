"""Self-Extend (Jin et al. 2024), the training-free baseline (spec §4.5), as the decoder's ``"self_extend"`` attention
part: the same weights as ``"sdpa"`` (a trained model's state dict loads unchanged), two score matrices merged by
relative distance before one softmax. Evaluation only.

    r = i - j (query i, key j)
    s_ij = q_i^(i) · k_j^(j) / √d                                  r < w   (neighbour window: plain positions)
    s_ij = q_i^(⌊i/G⌋ + w - ⌊w/G⌋) · k_j^(⌊j/G⌋) / √d              r >= w  (grouped positions)
    P = softmax(s + causal mask)

so a grouped pair sees the relative distance ⌊i/G⌋ - ⌊j/G⌋ + w - ⌊w/G⌋, continuous with the window at r = w.
The PI, YaRN and ABF baselines change only the angle table (``replicate.models.position``).
"""

from __future__ import annotations

import torch

from replicate.models.attention import Attention, probs_times_values, register_attention
from replicate.models.context import ForwardContext


class SelfExtendAttention(Attention):
    """Keeps the *unrotated* keys in the KV cache (``cache_kind = "kv"``): each step rotates every cached key at its
    plain and its grouped position (O(S d), cheap next to the scores), so decoding needs no full recompute."""

    def __init__(self, cfg, layer_idx: int = 0, *, window: int = 32, group: int = 8):
        super().__init__(cfg, layer_idx, impl="eager")
        if window < 1 or group < 1:
            raise ValueError(f"self_extend: window and group must be >= 1, got {window}, {group}")
        self.window, self.group = window, group

    def forward(self, x_BTD, pos, ctx: ForwardContext):
        if ctx.position_ids is not None or ctx.padding_mask_BS is not None:
            raise ValueError("self_extend: contiguous positions without padding only")
        B, T, _ = x_BTD.shape
        hd, w, G = self.head_dim, self.window, self.group
        q, k, v = self.qkv_proj(x_BTD).split([self.n_heads * hd, self.n_kv * hd, self.n_kv * hd], dim=-1)
        q = q.view(B, T, self.n_heads, hd).transpose(1, 2)
        k = k.view(B, T, self.n_kv, hd).transpose(1, 2)
        v = v.view(B, T, self.n_kv, hd).transpose(1, 2)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer_idx, k, v)  # every (unrotated) key so far
        dev = x_BTD.device
        i = ctx.pos_offset + torch.arange(T, device=dev)  # query positions
        j = torch.arange(k.shape[2], device=dev)  # key positions
        at = lambda x, p: pos(x, None, ForwardContext(position_ids=p))[0]  # noqa: E731  (x rotated at positions p)
        qn, kn = at(q, i), at(k, j)  # plain positions
        # grouped positions; where r >= w the query's never exceeds i (so the table covers it), elsewhere unused
        qg, kg = at(q, torch.minimum(i // G + (w - w // G), i)), at(k, j // G)
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            kn, kg = kn.repeat_interleave(rep, 1), kg.repeat_interleave(rep, 1)
        r = i[:, None] - j[None, :]
        s = torch.where(r < w, (qn @ kn.transpose(-1, -2)).float(), (qg @ kg.transpose(-1, -2)).float()) * hd**-0.5
        p = torch.softmax(s.masked_fill(r < 0, float("-inf")), dim=-1).to(q.dtype)
        y = probs_times_values(p, v)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * hd))


@register_attention("self_extend")
def _self_extend(cfg, layer_idx: int = 0, **kwargs) -> SelfExtendAttention:
    return SelfExtendAttention(cfg, layer_idx, **kwargs)
