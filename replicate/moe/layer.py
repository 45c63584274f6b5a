"""MoE feed-forward layers: the part a decoder calls as ``ffn(x_BTD, token_ids_BT=...) -> (y_BTD, aux)``.

Legend: B batch, T tokens (B*S flattened), K slots, E experts, D model width, F expert width.

``MoE`` — routed experts, dropless, plus optional shared expert:

    r(x)   = sum_k w[t, k] * E_{idx[t, k]}(x)                        (router + ExpertBank)
    y      = r(x) + S(x)                                   shared_mix="add"   (DeepSeekMoE)
           = a_1 r(x) + a_2 S(x),  a = softmax(x W_a^T + b_a) in R^2   shared_mix="gate"  (CartesianMoE Sec. 3.2)

``SigmoidGatedMoE`` — every expert computed and weighted by an independent sigmoid score (DSMoE, Finedeep):

    y = sum_e w[t, e] * E_e(x)       w from SigmoidGate (input-guided, threshold + STE) or
                                     OutputSigmoidGate (output-guided), or w = 1 (gate="none": the dense FFN)

Both return ``aux``: a dict of scalar losses *already multiplied by the layer's coefficients*, so a training
objective is ``lm_loss + sum(aux.values())`` (summed over layers by the decoder). Per-expert load and router
statistics of the last forward are kept, detached, in ``layer.last_stats`` for a LightningModule to log.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from replicate.models.ffn import SwiGLU
from replicate.models.probes import Probed
from replicate.moe.experts import ExpertBank
from replicate.moe.losses import load_balancing_loss, load_stats, router_z_loss
from replicate.moe.routers import OutputSigmoidGate, Routing, SigmoidGate


class MoE(nn.Module, Probed):
    """Routed SwiGLU experts with an optional shared expert.

    Args:
        d_model, d_expert, n_experts: sizes; each routed expert is a SwiGLU ``d_model -> d_expert -> d_model``.
        router: any module ``router(x_TD, token_ids_T) -> Routing`` (``replicate.moe.routers``).
        d_shared: width of the shared expert (0 = none). n shared experts of width f are one SwiGLU of width
            n*f (their sum is exactly that SwiGLU's output).
        shared_mix: "add" (y = r + S) or "gate" (learned 2-way softmax, with bias).
        score_scale: the routed weights w[t, k] are multiplied by this constant (default 1): LLaMA-MoE's
            ``score_scale_factor`` (n/k makes a token's k renormalized weights sum to n/k, as DSMoE's rescale).
        shared_scale: S(x) is multiplied by this constant (default 1). 1/n makes the shared SwiGLU of width n*f
            the *mean* of n experts of width f (CartesianMoE's Fine-grained baseline: ½(S1 + S2)).
        balance_coef, z_coef: weights of the load-balancing and z losses in ``aux`` (0 = not computed).
        balance_first_choice: count f_e from the first choice only (DeepSpeed's top-2 gate).

    Probes: ``router`` (top-k expert ids, [T, K], -1 = empty slot), ``router_probs`` ([T, E], softmax routers).
    """

    probe_names = ("router", "router_probs")

    def __init__(self, d_model: int, d_expert: int, n_experts: int, router: nn.Module, *, d_shared: int = 0,
                 shared_mix: str = "gate", balance_coef: float = 0.01, z_coef: float = 0.0,
                 balance_first_choice: bool = False, init_std: float | None = None, shared_scale: float = 1.0,
                 score_scale: float = 1.0):
        super().__init__()
        if shared_mix not in ("add", "gate"):
            raise ValueError(f"MoE: shared_mix={shared_mix!r}; allowed: add, gate")
        self.d_model, self.n_experts = d_model, n_experts
        self.router = router
        self.experts = ExpertBank(n_experts, d_model, d_expert, init_std)
        self.shared = SwiGLU(d_model, d_shared) if d_shared else None
        self.shared_mix = shared_mix
        self.shared_scale = float(shared_scale)
        self.score_scale = float(score_scale)
        self.shared_gate = nn.Linear(d_model, 2) if (d_shared and shared_mix == "gate") else None
        self.balance_coef, self.z_coef, self.balance_first_choice = balance_coef, z_coef, balance_first_choice
        self.last_stats: dict[str, torch.Tensor] = {}

    def forward(self, x_BTD: torch.Tensor, token_ids_BT: torch.Tensor | None = None):
        D = x_BTD.shape[-1]
        x_TD = x_BTD.reshape(-1, D)
        ids_T = token_ids_BT.reshape(-1) if token_ids_BT is not None else None
        routing: Routing = self.router(x_TD, ids_T)
        if self._probe is not None:
            self._probe("router", routing.topk_idx_TK)
            if routing.probs_TE is not None:
                self._probe("router_probs", routing.probs_TE)
        w_TK = routing.topk_w_TK if self.score_scale == 1.0 else self.score_scale * routing.topk_w_TK
        y_TD = self.experts(x_TD, routing.topk_idx_TK, w_TK)
        if self.shared is not None:
            s_TD = self.shared(x_TD)
            if self.shared_scale != 1.0:
                s_TD = self.shared_scale * s_TD
            if self.shared_gate is None:
                y_TD = y_TD + s_TD
            else:
                a_T2 = torch.softmax(F.linear(x_TD.float(), self.shared_gate.weight.float(),
                                              self.shared_gate.bias.float()), dim=-1).to(y_TD.dtype)
                y_TD = a_T2[:, :1] * y_TD + a_T2[:, 1:] * s_TD
        aux = self._aux(routing)
        return y_TD.view(x_BTD.shape), aux

    def _aux(self, routing: Routing) -> dict[str, torch.Tensor]:
        aux: dict[str, torch.Tensor] = {}
        stats = load_stats(routing.counts_E, routing.topk_idx_TK.numel(), routing.probs_TE)
        stats["active_per_token"] = (routing.topk_idx_TK >= 0).sum(-1).float().mean().detach()
        if routing.probs_TE is not None and self.balance_coef:
            lb = load_balancing_loss(routing.probs_TE, routing.topk_idx_TK, self.balance_first_choice)
            aux["load_balance"] = self.balance_coef * lb
            stats["balance_loss"] = lb.detach()
        if routing.logits_TE is not None and self.z_coef:
            z = router_z_loss(routing.logits_TE)
            aux["z_loss"] = self.z_coef * z
            stats["z_loss"] = z.detach()
        self.last_stats = stats
        return aux

    def param_counts(self) -> tuple[int, float]:
        """(total, active) parameters; active counts ``router.k_active`` of the E experts."""
        expert = sum(p.numel() for p in self.experts.parameters())
        rest = sum(p.numel() for p in self.parameters()) - expert
        return expert + rest, rest + expert * getattr(self.router, "k_active", 1.0) / self.n_experts


class SigmoidGatedMoE(nn.Module, Probed):
    """A SwiGLU of width ``d_ff`` cut into ``n_experts`` blocks, each block's output weighted by its own score.

    gate="threshold": DSMoE (``SigmoidGate`` with threshold, STE, E/k rescale; aux "sparsity" = coef * mean G).
    gate="input":     soft input-guided score w = sigmoid(x Y) (no threshold).
    gate="output":    Finedeep's output-guided score w = sigmoid(o_e · R_e).
    gate="none":      w = 1: exactly the dense SwiGLU (partition identity).
    Training computes every block (the STE needs inactive blocks' outputs: DSMoE Sec. 3.4). With
    ``sparse_eval=True`` and gate="threshold", eval mode runs only the active blocks through the routed kernels
    (same value, fewer FLOPs). Build from a trained dense FFN with ``SigmoidGatedMoE.from_dense``.
    ``gate_init_std=None`` (default): the gate follows the decoder's ``init_std`` (0.02 when built alone).
    Probes: ``gate`` (per-expert weights [T, E]); ``ffn_hidden`` comes from ``self.experts``.
    """

    probe_names = ("gate",)

    def __init__(self, d_model: int, d_ff: int, n_experts: int, *, gate: str = "threshold", threshold: float = 0.5,
                 ste: bool = True, rescale: bool = True, sparsity_coef: float = 1.0, sparse_eval: bool = False,
                 gate_init_std: float | None = None, init_std: float | None = None):
        super().__init__()
        if d_ff % n_experts:
            raise ValueError(f"SigmoidGatedMoE: d_ff={d_ff} is not divisible by n_experts={n_experts}")
        if gate not in ("threshold", "input", "output", "none"):
            raise ValueError(f"SigmoidGatedMoE: gate={gate!r}; allowed: threshold, input, output, none")
        self.n_experts, self.gate_kind = n_experts, gate
        self.experts = ExpertBank(n_experts, d_model, d_ff // n_experts, init_std)
        if gate in ("threshold", "input"):
            self.gate = SigmoidGate(d_model, n_experts, threshold if gate == "threshold" else None, ste, rescale,
                                    gate_init_std)
        elif gate == "output":
            self.gate = OutputSigmoidGate(d_model, n_experts, gate_init_std)
        else:
            self.gate = None
        self.sparsity_coef, self.sparse_eval = sparsity_coef, sparse_eval
        self.last_stats: dict[str, torch.Tensor] = {}

    @classmethod
    def from_dense(cls, ffn: SwiGLU, n_experts: int, perm: torch.Tensor | None = None, **kwargs) -> "SigmoidGatedMoE":
        d_ff, d_model = ffn.gate_proj.weight.shape
        layer = cls(d_model, d_ff, n_experts, **kwargs)
        layer.experts = ExpertBank.from_dense(ffn, n_experts, perm)
        return layer.to(device=ffn.gate_proj.weight.device)

    def forward(self, x_BTD: torch.Tensor, token_ids_BT: torch.Tensor | None = None):
        D = x_BTD.shape[-1]
        x_TD = x_BTD.reshape(-1, D)
        aux: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor] = {}
        if self.gate_kind == "threshold" and self.sparse_eval and not self.training:
            r = self.gate.sparse_routing(x_TD)
            y_TD = self.experts(x_TD, r.topk_idx_TK, r.topk_w_TK)
            # empty slots (-1) add 0 to column 0 (a plain scatter of False there would overwrite expert 0's True)
            filled_TK = (r.topk_idx_TK >= 0).to(torch.int32)
            active_TE = torch.zeros_like(r.probs_TE, dtype=torch.int32).scatter_add_(
                1, r.topk_idx_TK.clamp(min=0), filled_TK) > 0
            q_TE = r.probs_TE
        else:
            o_TED = self.experts.all_outputs(x_TD)
            if self.gate is None:
                w_TE = torch.ones(o_TED.shape[:2], dtype=o_TED.dtype, device=o_TED.device)
                active_TE, q_TE = w_TE.bool(), None
            elif self.gate_kind == "output":
                w_TE = self.gate(o_TED)
                active_TE, q_TE = torch.ones_like(w_TE, dtype=torch.bool), w_TE
            else:
                w_TE, active_TE, q_TE, sparse = self.gate(x_TD)
                if sparse is not None:
                    aux["sparsity"] = self.sparsity_coef * sparse
                    stats["sparsity_loss"] = sparse.detach()
            if self._probe is not None:
                self._probe("gate", w_TE)
            y_TD = torch.einsum("te,ted->td", w_TE.to(o_TED.dtype), o_TED)
        with torch.no_grad():
            stats.update(load_stats(active_TE.sum(0), active_TE.numel()))
            stats["active_per_token"] = active_TE.sum(-1).float().mean()
            if q_TE is not None:
                stats["score_mean"] = q_TE.float().mean()
        self.last_stats = {k: v.detach() for k, v in stats.items()}
        return y_TD.view(x_BTD.shape), aux

    def param_counts(self, active_per_token: float | None = None) -> tuple[int, float]:
        """(total, active). Active experts per token: the argument, else the last forward's mean, else all."""
        total = sum(p.numel() for p in self.parameters())
        expert = sum(p.numel() for p in self.experts.parameters())
        k = active_per_token
        if k is None:
            k = float(self.last_stats["active_per_token"]) if "active_per_token" in self.last_stats else self.n_experts
        return total, total - expert + expert * k / self.n_experts
