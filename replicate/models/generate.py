"""Incremental decoding: a KV cache that knows what each layer stores, and greedy generation.

    cache = KVCache(decoder, batch_size=B, max_len=L)
    out = decoder(prompt_BT, cache=cache)          # prefill: every layer appends its K/V, cache.length = T
    out = decoder(next_B1, cache=cache)            # one step: the new token attends to all T + 1 keys

What a layer keeps follows its attention part's ``cache_kind``: ``"kv"`` (standard), ``"v"`` (a layer reusing an
earlier layer's probabilities needs only its own values), ``"none"`` (a layer reusing another layer's K/V, cross
attention, or no attention). Buffers are allocated once, (B, H_kv, max_len, d_head) each, in the model's dtype;
``nbytes`` is what they hold, ``bytes_per_token`` the same per sequence position and batch row.
"""

from __future__ import annotations

import torch
from torch import nn


class KVCache:
    def __init__(self, decoder: nn.Module, batch_size: int, max_len: int | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        cfg = decoder.cfg
        ref = next(decoder.parameters())
        dtype, device = dtype or ref.dtype, device or ref.device
        self.max_len = max_len or cfg.max_seq_len
        self.batch_size = batch_size
        self.length = 0
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        shape = (batch_size, cfg.kv_heads, self.max_len, cfg.head_dim)
        for i, block in enumerate(decoder.layers):
            kind = getattr(block.attn, "cache_kind", "none") if block.attn is not None else "none"
            if kind not in ("kv", "v", "none"):
                raise ValueError(f"KVCache: layer {i} has cache_kind={kind!r}; allowed: kv, v, none")
            if kind == "kv":
                self.k[i] = torch.zeros(shape, dtype=dtype, device=device)
            if kind in ("kv", "v"):
                self.v[i] = torch.zeros(shape, dtype=dtype, device=device)

    def update(self, layer: int, k_BHTd: torch.Tensor | None, v_BHTd: torch.Tensor):
        """Write the new rows at ``length`` and return every key and value so far, (B, H_kv, length + T, d)."""
        L, T = self.length, v_BHTd.shape[2]  # L rows held; this forward adds T (length moves in advance())
        if L + T > self.max_len:
            raise ValueError(f"KVCache: {L + T} positions exceed max_len={self.max_len}")
        self.v[layer][:, :, L : L + T] = v_BHTd
        k = None
        if k_BHTd is not None:
            self.k[layer][:, :, L : L + T] = k_BHTd
            k = self.k[layer][:, :, : L + T]
        return k, self.v[layer][:, :, : L + T]

    def advance(self, T: int) -> None:
        """Called by the decoder after all layers have written the T rows of one forward."""
        self.length += T

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.k.values(), *self.v.values()))

    @property
    def bytes_per_token(self) -> float:
        return self.nbytes / (self.batch_size * self.max_len)


@torch.no_grad()
def generate(decoder: nn.Module, input_ids_BT: torch.Tensor, max_new_tokens: int, eos_id: int | None = None, *,
             prefix_embeds_BPD: torch.Tensor | None = None, use_cache: bool = True) -> torch.Tensor:
    """Greedy decoding: ``input_ids`` followed by up to ``max_new_tokens`` argmax tokens, (B, T + n).

    With ``eos_id``, a row that has produced it continues with ``eos_id`` (transformers' padding with
    ``pad_token_id = eos``), and decoding stops once every row has. ``use_cache=False`` recomputes the whole sequence
    every step (the reference the cached path is tested against). The model is put in eval mode meanwhile."""
    was_training = decoder.training
    decoder.eval()
    try:
        B, T = input_ids_BT.shape
        P = 0 if prefix_embeds_BPD is None else prefix_embeds_BPD.shape[1]
        cache = KVCache(decoder, B, max_len=P + T + max_new_tokens) if use_cache else None
        logits = decoder(input_ids_BT, prefix_embeds_BPD, cache=cache).logits  # prefill: prefix + prompt
        tokens = [input_ids_BT]
        done_B = torch.zeros(B, dtype=torch.bool, device=input_ids_BT.device)
        for step in range(max_new_tokens):
            next_B = logits[:, -1].argmax(-1)  # greedy: the most likely next token (first index on ties)
            if eos_id is not None:
                next_B = torch.where(done_B, eos_id, next_B)
                done_B |= next_B == eos_id
            tokens.append(next_B[:, None])
            if step == max_new_tokens - 1 or bool(done_B.all()):
                break
            if use_cache:  # one new row attends to every cached key
                logits = decoder(next_B[:, None], cache=cache).logits
            else:
                logits = decoder(torch.cat(tokens, dim=1), prefix_embeds_BPD).logits
        return torch.cat(tokens, dim=1)
    finally:
        decoder.train(was_training)
