"""Fused router, PyTorch reference: the spec of ``triton.py`` and the CPU path.

Shapes: T tokens, E experts, K slots per token.

Input ``logits_TE`` (fp32; the router GEMM stays outside, in ``torch.matmul``), optionally a visibility mask
``mask_TE`` (bool, True = the expert may be chosen; MaskMoE). Per token:

    z      = logits + where(mask, 0, -1e9)                 masked logits (finite fill, never -inf: no NaN)
    p      = softmax(z)                  mode "softmax"     router probabilities, kept for the balance loss
           = sigmoid(z)                  mode "sigmoid"     independent gates (DSMoE)
    I      = the K largest z, in descending order; ties go to the lower expert id (a stable sort)
    valid  = mask[I]  (and p[I] > threshold in mode "sigmoid")
    w      = where(valid, p[I], 0)
    w      = w / max(sum(w), eps)        if renormalize
    idx    = where(valid, I, -1)         an empty slot is idx -1, weight 0 (padded k)
    counts = number of valid slots per expert

Selection uses the logits, not the probabilities, so the chosen indices do not depend on how a softmax
rounds: the reference and the kernel agree exactly on indices whenever the logits have no ties.
Gradients reach the logits through ``w`` and ``p`` (autograd here; written out in ``triton.py``).
"""

from __future__ import annotations

import torch

MASK_FILL = -1e9  # added to invisible experts' logits; exp(-1e9 - max) == 0 exactly in fp32
RENORM_EPS = torch.finfo(torch.float32).eps


def route_reference(
    logits_TE: torch.Tensor,
    k: int,
    *,
    mode: str = "softmax",
    renormalize: bool = False,
    mask_TE: torch.Tensor | None = None,
    threshold: float = 0.5,
):
    """Returns ``(topk_idx_TK int64, topk_w_TK fp32, probs_TE fp32, counts_E int64)``."""
    T, E = logits_TE.shape
    if not 1 <= k <= E:
        raise ValueError(f"route: k={k} must be in [1, E={E}]")
    if mode not in ("softmax", "sigmoid"):
        raise ValueError(f"route: mode={mode!r}; allowed: softmax, sigmoid")
    z_TE = logits_TE.float()
    if mask_TE is not None:
        z_TE = z_TE + torch.where(mask_TE, 0.0, MASK_FILL)
    probs_TE = torch.softmax(z_TE, dim=-1) if mode == "softmax" else torch.sigmoid(z_TE)

    # top-k by logit; a stable descending sort puts the lower expert id first among ties
    order_TE = torch.sort(z_TE.detach(), dim=-1, descending=True, stable=True).indices
    sel_TK = order_TE[:, :k]
    p_sel_TK = probs_TE.gather(1, sel_TK)
    valid_TK = torch.ones_like(sel_TK, dtype=torch.bool)
    if mask_TE is not None:
        valid_TK &= mask_TE.gather(1, sel_TK)
    if mode == "sigmoid":
        valid_TK &= p_sel_TK.detach() > threshold
    w_TK = torch.where(valid_TK, p_sel_TK, 0.0)
    if renormalize:
        w_TK = w_TK / w_TK.sum(-1, keepdim=True).clamp(min=RENORM_EPS)
    idx_TK = torch.where(valid_TK, sel_TK, -1)
    counts_E = torch.bincount(sel_TK[valid_TK], minlength=E)
    return idx_TK, w_TK, probs_TE, counts_E
