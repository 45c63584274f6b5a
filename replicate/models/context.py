"""What one forward pass carries through the blocks besides the hidden states, and tensor-valued config kwargs.

``ForwardContext`` is built once per ``Decoder.forward`` and handed to every attention, position and
residual-owning FFN part. The standard path reads two of its fields (``pos_offset``, ``padding_mask_BS``: both
empty), so it costs what a function argument costs.

Legend: B batch, T rows of this call (prefix + tokens), S keys (cached + new), P prefix rows, M memory rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(eq=False)
class ForwardContext:
    token_ids_BT: torch.Tensor | None = None  # ids of the rows (None when a prefix of embeddings precedes them)
    pos_offset: int = 0  # absolute position of the first row: cached tokens + a caller's offset
    position_ids: torch.Tensor | None = None  # (T,) or (B, T) positions of the rows, overriding the offset
    padding_mask_BS: torch.Tensor | None = None  # bool, True = a real key (covers cached + new keys)
    cache: Any = None  # replicate.models.generate.KVCache during incremental decoding
    memory_BMD: torch.Tensor | None = None  # what "cross" attention layers attend to
    memory_mask_BM: torch.Tensor | None = None  # bool, True = a real memory row
    prefix_len: int = 0  # P: rows of input embeddings before the token embeddings
    shared: dict = field(default_factory=dict)  # cross-layer hand-over: ("kv", i) -> (k, v), ("probs", i) -> P

    def mask(self, T: int, S: int, causal: bool, dtype: torch.dtype, device) -> tuple[torch.Tensor | None, bool]:
        """``(additive mask or None, is_causal)`` for T queries, the last T of S keys.

        The common cases need no tensor: causal self-attention over a whole sequence (``is_causal``), one decoding
        step (its query sees every key), non-causal without padding. Otherwise an additive (1 or B, 1, T, S) mask
        with ``finfo.min`` where a key is hidden (finite, as transformers' Llama: a row that hides every key stays
        finite) is built once per forward and reused by every layer."""
        pad = self.padding_mask_BS
        if pad is None:
            if not causal or T == 1:
                return None, False
            if T == S:
                return None, True
        key = ("mask", T, S, causal, dtype)
        if key not in self.shared:
            allowed = torch.ones(1, 1, T, S, dtype=torch.bool, device=device)
            if causal:  # query i sits at position S - T + i
                allowed = allowed.tril(S - T)
            if pad is not None:
                allowed = allowed & pad[:, None, None, :].to(device=device, dtype=torch.bool)
            zero = torch.zeros((), dtype=dtype, device=device)
            self.shared[key] = zero.masked_fill(~allowed, torch.finfo(dtype).min)
        return self.shared[key], False


# -------------------------------------------------------------------------------- tensor-valued part kwargs

_TENSORS: dict[str, torch.Tensor] = {}


@dataclass(frozen=True)
class TensorRef:
    """A tensor kwarg of a part (a routing mask, a hash table) inside a frozen, hashable config: named by the
    sha256 of its bytes, shape and dtype, so the run key changes exactly when the tensor does. The tensor waits in
    a table of this process (``tensor_ref(t)`` puts it there); ``build_ffn`` resolves refs back into tensors."""

    sha256: str
    shape: tuple
    dtype: str

    def resolve(self) -> torch.Tensor:
        if self.sha256 not in _TENSORS:
            raise KeyError(f"TensorRef {self.sha256[:12]} ({self.dtype}{list(self.shape)}): not registered in this "
                           "process; call replicate.models.context.tensor_ref(t) with the tensor first")
        return _TENSORS[self.sha256]


def tensor_ref(t: torch.Tensor) -> TensorRef:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    ref = TensorRef(h.hexdigest(), tuple(t.shape), str(t.dtype).removeprefix("torch."))
    _TENSORS.setdefault(ref.sha256, t.clone())
    return ref


def resolve_refs(kwargs: dict) -> dict:
    return {k: v.resolve() if isinstance(v, TensorRef) else v for k, v in kwargs.items()}
