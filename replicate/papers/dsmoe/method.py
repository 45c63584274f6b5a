"""DSMoE's contribution: a trained dense SwiGLU FFN cut into n experts behind independent sigmoid gates with a hard
threshold, a straight-through estimator, a dropout-style n/k rescale and an L1 sparsity loss (spec §3.2-3.5).

Legend: T tokens, d model width, D dense FFN width, n experts, f = D / n, L decoder layers, ĥ the FFN input (the
post-attention RMSNorm output: the tensor the FFN consumes, spec §3.1, UNCONFIRMED).

    o_i  = ( SiLU(ĥ W_i) ⊙ (ĥ U_i) ) V_i,          Σ_i o_i = FFN(ĥ)                 (§3.2: exact partition)
    q_i  = σ(ĥ Y_i)                                  Y: [d, n], no bias              (§3.3: not a softmax)
    G(x) = x · 1[x > τ]                              hard threshold, keeps the value
    S(x) = sg(G(x)) + x − sg(x)                      STE: forward G, dG/dq := 1       (§3.4, training only)
    k    = Σ_i 1[q_i > τ]                            active experts of this token
    h    = (n / max(k, 1)) · Σ_i o_i · S(q_i)        Eq. 8, the same factor in training and inference;
                                                     k = 0: h = 0, the token passes through the residual
    L    = L_LM + λ · (1 / (L·N)) Σ_l Σ_j mean_t G(q^l_j)           Eq. 19 (λ = 1 in the paper)

The part is the shared MoE family's ``SigmoidGatedMoE`` with its ``SigmoidGate`` (``replicate.moe``): every expert is
computed in training (the STE needs the inactive experts' outputs for Y's gradient), and in eval mode only the
active experts run (``sparse_eval``: tokens grouped per expert through the routed kernels, the same value). This
module registers it as the decoder's ``"dsmoe"`` FFN kind with the paper's loss weighting, and holds what the
experiments measure of it: the spec's reference forward (the oracle), re-thresholding at inference, the gate values
per layer, the counted inference FLOPs of the sparse path.

The 1/(L·N) weighting: a layer's gate returns mean_{t,j} G = (1/N) Σ_j mean_t G, and the decoder *sums* the aux
losses of its L layers. So each layer's coefficient is λ / L: Σ_l (λ/L)(1/N) Σ_j mean_t G = λ/(L·N) Σ_l Σ_j mean_t G.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from replicate.models.ffn import register_ffn
from replicate.models.probes import module_inputs
from replicate.moe.layer import SigmoidGatedMoE


@register_ffn("dsmoe")
def build_dsmoe(*, d_model: int, d_ff: int, n_experts: int = 8, tau: float = 0.5, ste: bool = True,
                rescale: bool = True, lam: float = 1.0, n_layers: int = 1, soft: bool = False,
                gate_init_std: float | None = None) -> SigmoidGatedMoE:
    """One DSMoE FFN of dense width ``d_ff`` cut into ``n_experts`` (the partition itself is the conversion of the
    trained dense weights, ``replicate.models.convert.partition_state``). ``n_layers`` is L of the 1/(L·N)
    weighting (the layer's coefficient is ``lam / n_layers``). ``soft``: trained without G (plain σ weights, no
    threshold, no rescale, no sparsity loss: Figure 2's model, thresholded only at inference by
    :func:`set_threshold`)."""
    if soft:
        return SigmoidGatedMoE(d_model, d_ff, n_experts, gate="input", rescale=False, sparsity_coef=0.0,
                               gate_init_std=gate_init_std)
    return SigmoidGatedMoE(d_model, d_ff, n_experts, gate="threshold", threshold=tau, ste=ste, rescale=rescale,
                           sparsity_coef=lam / n_layers, sparse_eval=True, gate_init_std=gate_init_std)


def dsmoe_layers(model: nn.Module) -> list[SigmoidGatedMoE]:
    """The sigmoid-gated FFNs of a decoder, in layer order."""
    return [b.ffn for b in model.layers if isinstance(b.ffn, SigmoidGatedMoE) and b.ffn.gate_kind in ("threshold",
                                                                                                       "input")]


def reference_forward(x_TD, w_gate_dD, w_up_dD, w_down_Dd, Y_dn, tau: float, *, training: bool, ste: bool = True,
                      renorm: bool = True):
    """The spec's §3.8 pseudocode, literally (the oracle of the shared part): returns (y [T, d], the layer's share of
    L_sparse = mean over T·n of G, k [T])."""
    T, n = x_TD.shape[0], Y_dn.shape[1]
    a = F.silu(x_TD @ w_gate_dD) * (x_TD @ w_up_dD)  # [T, n f]: the dense intermediate
    o = torch.einsum("tef,efd->ted", a.view(T, n, -1), w_down_Dd.view(n, -1, w_down_Dd.shape[1]))  # o_i, [T, n, d]
    q = torch.sigmoid(x_TD @ Y_dn)  # q_i = σ(ĥ Y_i)
    mask = (q > tau).to(q.dtype)  # 1[q_i > τ] (strict, as the paper)
    g = q * mask  # G(q_i)
    w = (g.detach() + q - q.detach()) if (training and ste) else g  # S(q_i) in training
    k = mask.sum(-1, keepdim=True)
    if renorm:
        w = w * (n / k.clamp(min=1))  # n / k, k = 0 -> weights 0 -> output 0
    return torch.einsum("te,ted->td", w, o), g.mean(), k.squeeze(-1)


def set_threshold(model: nn.Module, tau: float | None, rescale: bool | None = None) -> None:
    """Re-threshold every sigmoid gate of ``model`` at inference (the τ sweep, Table 4; a soft-trained model
    thresholded, Figure 2). ``tau=None``: no threshold (soft weights). ``rescale``: None keeps each gate's own."""
    for layer in dsmoe_layers(model):
        layer.gate.threshold = tau
        if rescale is not None:
            layer.gate.rescale = rescale


def gate_values(model: nn.Module, windows: torch.Tensor, chunk: int = 16) -> list[torch.Tensor]:
    """q = σ(ĥ Y) of every DSMoE layer on ``windows`` (W, T+1): a list over layers of [W·T, n] fp32, read from each
    FFN's own input during one eval pass."""
    return module_inputs(model, dsmoe_layers(model), windows, chunk,
                         lambda i, mod, x: torch.sigmoid(mod.gate.logits(x)))


def inference_ffn_flops(d_model: int, d_ff: int, n_experts: int, active_per_token: float) -> float:
    """Forward matmul FLOPs per token of one DSMoE FFN on the sparse path: the gate ĥY (2 d n) and, per active
    expert, its gate, up and down products (3 · 2 d f); ``active_per_token`` is the count the routing actually ran."""
    f = d_ff // n_experts
    return 2.0 * d_model * n_experts + active_per_token * 6.0 * d_model * f
