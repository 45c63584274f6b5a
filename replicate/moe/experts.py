"""Expert bank: E SwiGLU experts with stacked weights, and the dense ↔ experts conversion.

Legend: T tokens, K slots per token, E experts, D model width, F expert width.

    E_e(x) = ( silu(x Wg_e) * (x Wu_e) ) Wd_e          Wg_e, Wu_e: [D, F],  Wd_e: [F, D]

Parameters are stacked (``w_gate_EDF``, ``w_up_EDF``, ``w_down_EFD``) so the routed path is one grouped
computation (``replicate.kernels.moe_experts``) rather than E modules.

Partition (DSMoE Sec. 3.2, Finedeep Sec. 3.2): a dense SwiGLU of width D_ff cut along its intermediate axis
into E blocks of width F = D_ff / E gives experts whose *sum* is the dense output exactly,
``sum_e E_e(x) = FFN(x)``, because the intermediate neurons never interact: ``from_dense`` / ``to_dense``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from replicate.kernels import moe_experts
from replicate.models.ffn import SwiGLU
from replicate.models.probes import Probed


class ExpertBank(nn.Module, Probed):
    """``n_experts`` SwiGLU experts of width ``d_expert`` over ``d_model``.

    - ``forward(x_TD, topk_idx_TK, topk_w_TK)``: routed, dropless: ``out[t] = sum_k w[t,k] E_{idx[t,k]}(x[t])``
      (slots with idx -1 are empty).
    - ``all_outputs(x_TD)``: every expert on every token, ``[T, E, D]`` (dense-compute layers, oracles).
    - ``dense_combine(x_TD, weights_TE)``: ``sum_e w[t,e] E_e(x[t])`` through ``all_outputs``.

    Init: built alone, ``nn.Linear``'s default per expert (uniform ±1/sqrt(fan_in)), or N(0, init_std); inside a
    ``Decoder`` every expert weight is redrawn N(0, DecoderConfig.init_std) (``init_weights``) unless ``init_std``
    was given explicitly. Probe ``ffn_hidden``: the intermediate of every expert, (T, E*F), from ``all_outputs``.
    """

    probe_names = ("ffn_hidden",)

    def __init__(self, n_experts: int, d_model: int, d_expert: int, init_std: float | None = None):
        super().__init__()
        self.n_experts, self.d_model, self.d_expert = n_experts, d_model, d_expert
        self.w_gate_EDF = nn.Parameter(torch.empty(n_experts, d_model, d_expert))
        self.w_up_EDF = nn.Parameter(torch.empty(n_experts, d_model, d_expert))
        self.w_down_EFD = nn.Parameter(torch.empty(n_experts, d_expert, d_model))
        self.own_init_std = init_std
        self.reset_parameters(init_std)

    @torch.no_grad()
    def reset_parameters(self, init_std: float | None = None) -> None:
        """``nn.Linear``'s default (uniform ±1/sqrt(fan_in)) per expert, as ``SwiGLU``; or N(0, init_std)."""
        if init_std is not None:
            for w in (self.w_gate_EDF, self.w_up_EDF, self.w_down_EFD):
                w.normal_(0.0, init_std)
            return
        for w, fan_in in ((self.w_gate_EDF, self.d_model), (self.w_up_EDF, self.d_model), (self.w_down_EFD, self.d_expert)):
            bound = 1.0 / math.sqrt(fan_in)
            w.uniform_(-bound, bound)

    def init_weights(self, std: float) -> None:
        """The decoder's init: N(0, std) for every expert weight (unless this bank was built with its own std)."""
        self.reset_parameters(self.own_init_std if self.own_init_std is not None else std)

    def forward(self, x_TD: torch.Tensor, topk_idx_TK: torch.Tensor, topk_w_TK: torch.Tensor) -> torch.Tensor:
        return moe_experts(x_TD, topk_idx_TK, topk_w_TK, self.w_gate_EDF, self.w_up_EDF, self.w_down_EFD)

    def all_outputs(self, x_TD: torch.Tensor) -> torch.Tensor:
        """``o[t, e] = E_e(x[t])``, shape [T, E, D]: one wide GEMM for gate and up, a batched down projection."""
        T, D = x_TD.shape
        E, _, Fw = self.w_gate_EDF.shape
        wg_DX = self.w_gate_EDF.permute(1, 0, 2).reshape(D, E * Fw)  # [D, E*F]: all experts side by side
        wu_DX = self.w_up_EDF.permute(1, 0, 2).reshape(D, E * Fw)
        h_TX = F.silu(x_TD @ wg_DX) * (x_TD @ wu_DX)  # [T, E*F]
        if self._probe is not None:
            self._probe("ffn_hidden", h_TX)
        h_ETF = h_TX.view(T, E, Fw).transpose(0, 1)  # [E, T, F]
        return torch.bmm(h_ETF, self.w_down_EFD).transpose(0, 1)  # [E, T, D] -> [T, E, D]

    def dense_combine(self, x_TD: torch.Tensor, weights_TE: torch.Tensor) -> torch.Tensor:
        o_TED = self.all_outputs(x_TD)
        return torch.einsum("te,ted->td", weights_TE.to(o_TED.dtype), o_TED)

    # -- dense <-> experts --------------------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, ffn: SwiGLU, n_experts: int, perm: torch.Tensor | None = None) -> "ExpertBank":
        """Cut a trained SwiGLU into ``n_experts`` blocks of its intermediate neurons (contiguous, or in the
        order ``perm`` — LLaMA-MoE's random split). ``sum_e E_e(x) == ffn(x)`` up to float rounding."""
        d_ff, d_model = ffn.gate_proj.weight.shape
        if d_ff % n_experts:
            raise ValueError(f"from_dense: d_ff={d_ff} is not divisible by n_experts={n_experts}")
        f = d_ff // n_experts
        bank = cls(n_experts, d_model, f)
        wg, wu, wd = ffn.gate_proj.weight, ffn.up_proj.weight, ffn.down_proj.weight  # [d_ff, D], [d_ff, D], [D, d_ff]
        if perm is not None:
            wg, wu, wd = wg[perm], wu[perm], wd[:, perm]
        with torch.no_grad():
            bank.w_gate_EDF.copy_(wg.T.reshape(d_model, n_experts, f).permute(1, 0, 2))  # [E, D, F]
            bank.w_up_EDF.copy_(wu.T.reshape(d_model, n_experts, f).permute(1, 0, 2))
            bank.w_down_EFD.copy_(wd.T.reshape(n_experts, f, d_model))  # [E, F, D]
        return bank.to(dtype=ffn.gate_proj.weight.dtype, device=ffn.gate_proj.weight.device)

    def to_dense(self) -> SwiGLU:
        """The SwiGLU of width E*F whose output is the sum of all experts (inverse of ``from_dense``)."""
        E, D, Fw = self.w_gate_EDF.shape
        ffn = SwiGLU(D, E * Fw).to(dtype=self.w_gate_EDF.dtype, device=self.w_gate_EDF.device)
        with torch.no_grad():
            ffn.gate_proj.weight.copy_(self.w_gate_EDF.permute(1, 0, 2).reshape(D, E * Fw).T)
            ffn.up_proj.weight.copy_(self.w_up_EDF.permute(1, 0, 2).reshape(D, E * Fw).T)
            ffn.down_proj.weight.copy_(self.w_down_EFD.reshape(E * Fw, D).T)
        return ffn

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, d_model={self.d_model}, d_expert={self.d_expert}"
