"""Routers: who sends each token where, and with what weight. All router math is fp32.

Legend: T tokens, K slots per token, E experts, D model width, V vocabulary size.

Sparse routers return a ``Routing`` (padded top-k form: empty slots have idx -1 and weight 0):

| class | rule | paper |
|---|---|---|
| ``TopKRouter(d, E, k, renormalize)`` | p = softmax(x W_r^T); top-k of p; w = p_I (/ sum if renormalize) | SMoE, Fine-grained, CartesianMoE |
| ``MaskedRouter(d, E, k, mask_VE)`` | p = softmax(z + where(mask[token], 0, -1e9)); top-k among visible | MaskMoE Sec. 3.2 |
| ``TopPRouter(d, E, top_p, k_max)`` | sort p; keep experts until the cumulative p first exceeds top_p (inclusive); w = p, not renormalized | Huang et al. 2024 (CartesianMoE baseline) |
| ``HashRouter(V, E, k)`` | a fixed table token id → k distinct experts, w = 1/k | Hash Layer (Roller et al. 2021) |

Every softmax router honours ``disable_top1`` (eval only): its top-1 expert is masked out before selection
(CartesianMoE Table 4, the routing-robustness protocol).

Dense gates (every expert computed, weights over all E; DSMoE and Finedeep):

| class | rule |
|---|---|
| ``SigmoidGate(d, E, threshold, ste, rescale)`` | q = sigmoid(x Y); G(q) = q 1[q > tau]; forward G, backward through q (STE); w *= E / max(#active, 1); L1 loss mean G (DSMoE Sec. 3.3–3.5). ``threshold=None``: soft gate w = q |
| ``OutputSigmoidGate(d, E)`` | r_e = sigmoid(o_e · R_e) from each expert's own output (Finedeep Sec. 3.3) |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from replicate.kernels import route


@dataclass
class Routing:
    topk_idx_TK: torch.Tensor  # int64, -1 = empty slot
    topk_w_TK: torch.Tensor  # fp32, 0 in empty slots
    counts_E: torch.Tensor  # int64, filled slots per expert
    probs_TE: torch.Tensor | None = None  # fp32 router probabilities (balance loss, entropy); None for hash routing
    logits_TE: torch.Tensor | None = None  # fp32 (z-loss)


class _LogitRouter(nn.Module):
    """A bias-free linear router computed in fp32, ``logits_TE = x_TD W_r^T``."""

    def __init__(self, d_model: int, n_experts: int, k: int, init_std: float | None = None):
        super().__init__()
        if not 1 <= k <= n_experts:
            raise ValueError(f"router: k={k} must be in [1, n_experts={n_experts}]")
        self.n_experts, self.k = n_experts, k
        self.weight = nn.Parameter(torch.empty(n_experts, d_model))
        self.own_init_std = init_std
        if init_std is None:
            nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default (built alone)
        else:
            nn.init.normal_(self.weight, 0.0, init_std)
        self.disable_top1 = False  # eval hook: mask each token's top-1 expert out (CartesianMoE Table 4)

    @torch.no_grad()
    def init_weights(self, std: float) -> None:
        """Inside a Decoder: N(0, DecoderConfig.init_std), unless built with its own ``init_std``."""
        self.weight.normal_(0.0, self.own_init_std if self.own_init_std is not None else std)

    def logits(self, x_TD: torch.Tensor) -> torch.Tensor:
        return F.linear(x_TD.float(), self.weight.float())  # [T, E] fp32

    def _mask(self, logits_TE: torch.Tensor, mask_TE: torch.Tensor | None) -> torch.Tensor | None:
        if not self.disable_top1:
            return mask_TE
        z = logits_TE.detach() if mask_TE is None else logits_TE.detach().masked_fill(~mask_TE, float("-inf"))
        keep_TE = torch.ones_like(logits_TE, dtype=torch.bool).scatter_(1, z.argmax(-1, keepdim=True), False)
        return keep_TE if mask_TE is None else keep_TE & mask_TE

    @property
    def k_active(self) -> float:
        """Filled slots per token used for active-parameter counts."""
        return float(self.k)


class TopKRouter(_LogitRouter):
    """Softmax top-k. ``renormalize=None`` means "renormalize iff k > 1" (the CartesianMoE code's rule)."""

    def __init__(self, d_model: int, n_experts: int, k: int = 2, renormalize: bool | None = None, init_std=None):
        super().__init__(d_model, n_experts, k, init_std)
        self.renormalize = (k > 1) if renormalize is None else renormalize

    def forward(self, x_TD: torch.Tensor, token_ids_T: torch.Tensor | None = None) -> Routing:
        logits_TE = self.logits(x_TD)
        r = route(logits_TE, self.k, renormalize=self.renormalize, mask_TE=self._mask(logits_TE, None))
        return Routing(r.topk_idx_TK, r.topk_w_TK, r.counts_E, r.probs_TE, logits_TE)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, k={self.k}, renormalize={self.renormalize}"


class MaskedRouter(TopKRouter):
    """Top-k among the experts a token may see (MaskMoE). ``mask_VE[v, e]`` (bool buffer, saved with the model):
    token id v may use expert e. A token with fewer than k visible experts gets empty slots; a token with one
    visible expert gets weight exactly 1 (p = 1 there) and sends no gradient to the router.

    ``gate="full"``: the experts are chosen among the visible ones as above, but each slot's weight is the chosen
    expert's probability under the softmax over *all* experts (and the balance statistics use those
    probabilities), so a token with one visible expert keeps a learned gate below 1: routing frozen by the mask,
    gates still trained (a StableMoE-like stage 2). ``gate="sigmoid"``: the same choice, each slot's weight the
    sigmoid of the chosen expert's logit (StableMoE's stage-2 gate: independent of the other experts' logits, 0.5 at a
    zero logit; the balance statistics use the softmax probabilities)."""

    GATES = ("masked", "full", "sigmoid")

    def __init__(self, d_model: int, n_experts: int, k: int = 1, mask_VE: torch.Tensor | None = None,
                 renormalize: bool | None = None, init_std=None, gate: str = "masked"):
        super().__init__(d_model, n_experts, k, renormalize, init_std)
        if mask_VE is None or mask_VE.dtype != torch.bool or mask_VE.shape[1] != n_experts:
            raise ValueError(f"MaskedRouter: mask_VE must be a bool tensor [vocab, {n_experts}]")
        if gate not in self.GATES:
            raise ValueError(f"MaskedRouter: gate must be one of {', '.join(self.GATES)}, got {gate!r}")
        self.gate = gate
        self.register_buffer("mask_VE", mask_VE.clone())

    def forward(self, x_TD: torch.Tensor, token_ids_T: torch.Tensor | None = None) -> Routing:
        if token_ids_T is None:
            raise ValueError("MaskedRouter needs the token ids: call the layer as ffn(x, token_ids_BT=ids)")
        logits_TE = self.logits(x_TD)
        mask_TE = self._mask(logits_TE, self.mask_VE[token_ids_T])
        r = route(logits_TE, self.k, renormalize=self.renormalize, mask_TE=mask_TE)
        if self.gate == "masked":
            return Routing(r.topk_idx_TK, r.topk_w_TK, r.counts_E, r.probs_TE, logits_TE)
        probs_TE = torch.softmax(logits_TE, -1)
        filled_TK = r.topk_idx_TK >= 0
        score_TE = torch.sigmoid(logits_TE) if self.gate == "sigmoid" else probs_TE
        w_TK = score_TE.gather(1, r.topk_idx_TK.clamp(min=0)) * filled_TK
        return Routing(r.topk_idx_TK, w_TK, r.counts_E, probs_TE, logits_TE)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gate={self.gate}"


class TopPRouter(_LogitRouter):
    """Dynamic k: the fewest experts whose probability mass exceeds ``top_p`` (the one crossing it included),
    at most ``k_max``; weights are the raw probabilities (not renormalized, as in the CartesianMoE code)."""

    def __init__(self, d_model: int, n_experts: int, top_p: float = 0.4, k_max: int | None = None, init_std=None):
        super().__init__(d_model, n_experts, k_max or n_experts, init_std)
        self.top_p = top_p
        self._mean_k: float | None = None

    def forward(self, x_TD: torch.Tensor, token_ids_T: torch.Tensor | None = None) -> Routing:
        logits_TE = self.logits(x_TD)
        r = route(logits_TE, self.k, mask_TE=self._mask(logits_TE, None))  # slots in descending order
        w_TK = r.topk_w_TK
        mass_before_TK = torch.cumsum(w_TK.detach(), -1) - w_TK.detach()  # mass of the better slots
        keep_TK = (mass_before_TK < self.top_p) & (r.topk_idx_TK >= 0)
        idx_TK = torch.where(keep_TK, r.topk_idx_TK, -1)
        counts_E = torch.bincount(idx_TK[keep_TK], minlength=self.n_experts)
        self._mean_k = float(keep_TK.sum(-1).float().mean()) if keep_TK.numel() else None
        return Routing(idx_TK, torch.where(keep_TK, w_TK, 0.0), counts_E, r.probs_TE, logits_TE)

    @property
    def k_active(self) -> float:
        """Measured mean k of the last forward if there was one, else the bound ``k_max``."""
        return self._mean_k if self._mean_k is not None else float(self.k)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, top_p={self.top_p}, k_max={self.k}"


class HashRouter(nn.Module):
    """Fixed routing from the token id: ``table_VK`` holds k distinct experts per vocabulary id (a buffer,
    saved with the model), each with weight 1/k. ``balanced_counts`` (token frequencies) switches from a random
    hash to Roller et al.'s balanced hash: ids in decreasing frequency go to the least-loaded experts."""

    def __init__(self, vocab_size: int, n_experts: int, k: int = 1, seed: int = 0,
                 balanced_counts: torch.Tensor | None = None, table_VK: torch.Tensor | None = None):
        super().__init__()
        if not 1 <= k <= n_experts:
            raise ValueError(f"HashRouter: k={k} must be in [1, n_experts={n_experts}]")
        self.n_experts, self.k = n_experts, k
        if table_VK is None:
            table_VK = hash_table(vocab_size, n_experts, k, seed, balanced_counts)
        if table_VK.shape != (vocab_size, k):
            raise ValueError(f"HashRouter: table_VK must have shape ({vocab_size}, {k})")
        self.register_buffer("table_VK", table_VK.long().clone())

    def forward(self, x_TD: torch.Tensor, token_ids_T: torch.Tensor | None = None) -> Routing:
        if token_ids_T is None:
            raise ValueError("HashRouter needs the token ids: call the layer as ffn(x, token_ids_BT=ids)")
        idx_TK = self.table_VK[token_ids_T]
        w_TK = torch.full(idx_TK.shape, 1.0 / self.k, dtype=torch.float32, device=idx_TK.device)
        return Routing(idx_TK, w_TK, torch.bincount(idx_TK.flatten(), minlength=self.n_experts))

    @property
    def k_active(self) -> float:
        return float(self.k)


def hash_table(vocab_size: int, n_experts: int, k: int = 1, seed: int = 0,
               balanced_counts: torch.Tensor | None = None) -> torch.Tensor:
    """``[V, k]`` distinct expert ids per token. Random (uniform, own generator: the model's RNG stream is not
    touched) or, given token counts, greedy balanced (stable order: count desc, id asc)."""
    g = torch.Generator().manual_seed(seed)
    if balanced_counts is None:
        return torch.rand(vocab_size, n_experts, generator=g).argsort(-1)[:, :k]
    order = sorted(range(vocab_size), key=lambda v: (-int(balanced_counts[v]), v))
    load = [0] * n_experts
    table = torch.empty(vocab_size, k, dtype=torch.int64)
    for v in order:
        chosen = sorted(range(n_experts), key=lambda e: (load[e], e))[:k]
        for e in chosen:
            load[e] += int(balanced_counts[v])
        table[v] = torch.tensor(chosen)
    return table


class SigmoidGate(nn.Module):
    """Independent sigmoid gate per expert, input-guided (DSMoE Sec. 3.3–3.5), in fp32.

        q   = sigmoid(x Y)                         Y: [D, E], no bias
        G   = q * 1[q > tau]                       hard threshold, keeps the value
        w   = sg(G) + q - sg(q)   (ste, training)  forward G, gradient as if w = q (Eq. 13–16)
        w  *= E / max(#active, 1)  (rescale)       Eq. 8, dropout-style
        L_sparse = mean(G)                          Eq. 19's per-layer term (no gradient below tau)

    ``threshold=None`` gives the soft gate w = q (no STE, no rescale, no sparsity loss) — the input-guided
    ablation of Finedeep, and DSMoE's "trained without G" run.

    Init Y ~ N(0, init_std); ``init_std=None``: N(0, 0.02) when built alone, the decoder's ``init_std`` inside a
    Decoder."""

    def __init__(self, d_model: int, n_experts: int, threshold: float | None = 0.5, ste: bool = True,
                 rescale: bool = True, init_std: float | None = None):
        super().__init__()
        self.n_experts, self.threshold, self.ste, self.rescale = n_experts, threshold, ste, rescale
        self.weight = nn.Parameter(torch.empty(n_experts, d_model))
        self.own_init_std = init_std
        nn.init.normal_(self.weight, 0.0, 0.02 if init_std is None else init_std)

    @torch.no_grad()
    def init_weights(self, std: float) -> None:
        self.weight.normal_(0.0, self.own_init_std if self.own_init_std is not None else std)

    def logits(self, x_TD: torch.Tensor) -> torch.Tensor:
        return F.linear(x_TD.float(), self.weight.float())

    def forward(self, x_TD: torch.Tensor):
        """Returns ``(weights_TE, active_TE, q_TE, sparse_loss)``."""
        q_TE = torch.sigmoid(self.logits(x_TD))
        if self.threshold is None:
            return q_TE, torch.ones_like(q_TE, dtype=torch.bool), q_TE, None
        active_TE = q_TE > self.threshold
        g_TE = q_TE * active_TE
        w_TE = g_TE.detach() + q_TE - q_TE.detach() if (self.ste and self.training) else g_TE
        if self.rescale:
            n_active_T1 = active_TE.sum(-1, keepdim=True).clamp(min=1)
            w_TE = w_TE * (self.n_experts / n_active_T1)
        return w_TE, active_TE, q_TE, g_TE.mean()

    def sparse_routing(self, x_TD: torch.Tensor) -> Routing:
        """The same forward value in padded top-k form, for inference that skips inactive experts."""
        logits_TE = self.logits(x_TD)
        r = route(logits_TE, self.n_experts, mode="sigmoid", threshold=self.threshold)
        w_TK = r.topk_w_TK
        if self.rescale:
            n_active_T1 = (r.topk_idx_TK >= 0).sum(-1, keepdim=True).clamp(min=1)
            w_TK = w_TK * (self.n_experts / n_active_T1)
        return Routing(r.topk_idx_TK, w_TK, r.counts_E, r.probs_TE, logits_TE)


class OutputSigmoidGate(nn.Module):
    """Output-guided score (Finedeep Sec. 3.3): ``r[t, e] = sigmoid(o[t, e] · R_e)``, R: [E, D], fp32.
    Soft, no threshold; every expert contributes. With R = 0 every score is exactly 0.5. Init R ~ N(0, init_std)
    (0: zeros, Finedeep's R = 0 ablation); ``init_std=None``: N(0, 0.02) when built alone, the decoder's
    ``init_std`` inside a Decoder."""

    def __init__(self, d_model: int, n_experts: int, init_std: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_experts, d_model))
        self.own_init_std = init_std
        self.init_weights(0.02)

    @torch.no_grad()
    def init_weights(self, std: float) -> None:
        std = self.own_init_std if self.own_init_std is not None else std
        if std:
            self.weight.normal_(0.0, std)
        else:
            self.weight.zero_()

    def forward(self, o_TED: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(torch.einsum("ted,ed->te", o_TED.float(), self.weight.float()))
