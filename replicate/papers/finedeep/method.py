"""Finedeep's contribution: the FFN slot of a decoder layer as M sequential sub-layers of K small SwiGLU experts,
every expert always active and scaled by a sigmoid of its own output (spec §3.2-3.3).

Legend: T tokens, d model width, D dense FFN width, M sub-layers, K experts per sub-layer, f = D / (M K).

    E_{j,i}(x) = ( SiLU(x W_g^{j,i}) ⊙ (x W_up^{j,i}) ) W_down^{j,i}      W_g, W_up: [d, f], W_down: [f, d]
    ĥ^0        = the residual stream after attention
    h̃^j        = RMSNorm_j(ĥ^{j-1})                                     (norm="pre", the default)
    o_{j,i}    = E_{j,i}(h̃^j)
    r_{j,i}    = sigmoid(o_{j,i} · R_{j,i})                              (score="output", the default)
    ĥ^j        = ĥ^{j-1} + Σ_i r_{j,i} o_{j,i};      FFN slot output = ĥ^M

The experts of one sub-layer are the shared ``ExpertBank`` (gate/up of all K experts one GEMM, a batched down
projection; it emits the ``ffn_hidden`` probe: the SwiGLU intermediates of all experts, width K f); the scores are the
shared ``OutputSigmoidGate`` (output-guided) or ``SigmoidGate`` without threshold (input-guided, ablation c).
UNCONFIRMED choices, all options of :class:`FinedeepFFN`:

- ``norm``: ``"pre"`` (default: RMSNorm_j before every sub-layer, the natural reading), ``"shared"`` (one RMSNorm of
  ĥ^0 feeds every sub-layer: they become parallel), ``"post"`` (the pre-norm plus an RMSNorm of Σ_i r o before the
  residual add);
- ``score``: ``"output"`` (default, σ(o·R)), ``"input"`` (σ(h̃·R), DSMoE-style, ablation c), ``"none"`` (r ≡ 1,
  ablation b; with M = 1 this is exactly the dense SwiGLU);
- ``router_init_std``: None (default: the decoder's N(0, init_std = 0.02)), 0 (R = 0: every score starts at 0.5).

Parameter accounting (spec §3.4, exact for norm="pre"): the experts hold the dense FFN's 3 d D weights; the extras are
M K router vectors and M - 1 more RMSNorm gains (the first replaces the block's own FFN norm): (M K + M - 1) d per layer.
"""

from __future__ import annotations

import torch
from torch import nn

from replicate.models.ffn import register_ffn
from replicate.models.norm import RMSNorm
from replicate.models.probes import Probed
from replicate.moe.experts import ExpertBank
from replicate.moe.routers import OutputSigmoidGate, SigmoidGate

NORMS = ("pre", "shared", "post")
SCORES = ("output", "input", "none")


class FinedeepSubLayer(nn.Module, Probed):
    """Sub-layer j: its norm(s), K experts and K router vectors. Probes: ``score`` (r_{j,·}, [T, K]) and
    ``ffn_hidden`` (the SwiGLU intermediates a_{j,i} of its K experts side by side, [T, K f])."""

    probe_names = ("score", "ffn_hidden")

    def __init__(self, d_model: int, n_experts: int, d_expert: int, *, norm: str, score: str,
                 router_init_std: float | None, norm_eps: float):
        super().__init__()
        self.norm = RMSNorm(d_model, norm_eps) if norm in ("pre", "post") else None  # RMSNorm_j
        self.experts = ExpertBank(n_experts, d_model, d_expert)  # E_{j,1..K}
        if score == "output":
            self.router = OutputSigmoidGate(d_model, n_experts, router_init_std)  # R_{j,i}, r = σ(o·R)
        elif score == "input":
            self.router = SigmoidGate(d_model, n_experts, threshold=None, ste=False, rescale=False,
                                      init_std=router_init_std)  # r = σ(h̃·R)
        else:
            self.router = None  # r ≡ 1
        self.out_norm = RMSNorm(d_model, norm_eps) if norm == "post" else None
        self.score = score

    def intermediates(self, u_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """For the normed input u = h̃^j, [T, d]: the SiLU gate outputs g_{j,i} = SiLU(u W_g^{j,i}) and the SwiGLU
        intermediates a_{j,i} = g_{j,i} ⊙ (u W_up^{j,i}) of the K experts, each [T, K, f], and the scores r_{j,i}
        [T, K] (None for r ≡ 1). ``forward`` and the activation analysis (NSAR) both read them from here.
        The output-guided score without materialising o [T, K, d]: o_{j,i} · R_{j,i} = a_{j,i} W_down^{j,i} R_{j,i}
        = a_{j,i} · v_{j,i} with v = W_down R ∈ R^f."""
        T, d = u_TD.shape
        E = self.experts
        K, _, f = E.w_gate_EDF.shape
        wg_dX = E.w_gate_EDF.permute(1, 0, 2).reshape(d, K * f)  # the K experts' gate columns side by side
        wu_dX = E.w_up_EDF.permute(1, 0, 2).reshape(d, K * f)
        g_TKF = torch.nn.functional.silu(u_TD @ wg_dX).view(T, K, f)
        a_TKF = g_TKF * (u_TD @ wu_dX).view(T, K, f)  # a_{j,i}: SwiGLU intermediates
        if self.score == "output":
            v_KF = torch.einsum("kfd,kd->kf", E.w_down_EFD.float(), self.router.weight.float())  # v_i = W_down^i R_i
            r_TK = torch.sigmoid(torch.einsum("tkf,kf->tk", a_TKF.float(), v_KF))  # r = sigmoid(o_i · R_i), fp32
        elif self.score == "input":
            r_TK = self.router(u_TD)[0]  # r_{j,i} = sigmoid(h̃^j · R_{j,i})
        else:
            r_TK = None  # r ≡ 1
        return g_TKF, a_TKF, r_TK

    def forward(self, u_TD: torch.Tensor) -> torch.Tensor:
        """Σ_i r_{j,i} o_{j,i} for the normed input u = h̃^j, [T, d]: Σ_i r_i o_i = [r_1 a_1, ..., r_K a_K] W_down
        (one GEMM over all experts; the scale passes through the linear W_down). Same value as the reference
        :meth:`reference` (tests/papers/test_finedeep.py), ~2x faster on a CPU."""
        T, d = u_TD.shape
        _, a_TKF, r_TK = self.intermediates(u_TD)
        K, f = a_TKF.shape[1:]
        if self._probe is not None:
            self._probe("ffn_hidden", a_TKF.reshape(T, K * f))
        if r_TK is not None:
            if self._probe is not None:
                self._probe("score", r_TK)
            a_TKF = a_TKF * r_TK.to(a_TKF.dtype)[..., None]  # r_i a_i
        y_TD = a_TKF.reshape(T, K * f) @ self.experts.w_down_EFD.reshape(K * f, d)  # Σ_i r_{j,i} o_{j,i}
        return self.out_norm(y_TD) if self.out_norm is not None else y_TD

    def reference(self, u_TD: torch.Tensor) -> torch.Tensor:
        """The spec's §3.8 form, o [T, K, d] materialised (the shared ExpertBank and gates): the oracle of ``forward``."""
        o_TKD = self.experts.all_outputs(u_TD)  # o_{j,i} = E_{j,i}(h̃^j)
        if self.score == "output":
            r_TK = self.router(o_TKD)  # sigmoid(o · R)
        elif self.score == "input":
            r_TK = self.router(u_TD)[0]
        else:
            r_TK = torch.ones(o_TKD.shape[:2])
        y_TD = torch.einsum("tk,tkd->td", r_TK.to(o_TKD.dtype), o_TKD)
        return self.out_norm(y_TD) if self.out_norm is not None else y_TD


@register_ffn("finedeep")
class FinedeepFFN(nn.Module):
    """The FFN slot of one decoder layer (owns the residual): ``h -> ĥ^M``. ``d_ff`` is the dense width D that the
    M K experts share (width f = D / (M K) each)."""

    owns_residual = True

    def __init__(self, d_model: int, d_ff: int, M: int = 2, K: int = 4, *, norm: str = "pre", score: str = "output",
                 router_init_std: float | None = None, norm_eps: float = 1e-5):
        super().__init__()
        if M < 1 or K < 1 or d_ff % (M * K):
            raise ValueError(f"finedeep: d_ff={d_ff} must be divisible by M*K={M}*{K} (M, K >= 1)")
        if norm not in NORMS:
            raise ValueError(f"finedeep: norm={norm!r}; allowed: {', '.join(NORMS)}")
        if score not in SCORES:
            raise ValueError(f"finedeep: score={score!r}; allowed: {', '.join(SCORES)}")
        self.M, self.K, self.d_expert, self.norm_kind = M, K, d_ff // (M * K), norm
        self.norm = RMSNorm(d_model, norm_eps) if norm == "shared" else None  # one RMSNorm of ĥ^0 for all j
        self.sub = nn.ModuleList(
            FinedeepSubLayer(d_model, K, self.d_expert, norm=norm, score=score, router_init_std=router_init_std,
                             norm_eps=norm_eps) for _ in range(M))

    def forward(self, x_BTD: torch.Tensor, ctx=None) -> torch.Tensor:
        h_TD = x_BTD.reshape(-1, x_BTD.shape[-1])  # ĥ^0
        shared = self.norm(h_TD) if self.norm is not None else None
        for layer in self.sub:  # j = 1..M, in sequence
            u_TD = shared if shared is not None else layer.norm(h_TD)  # h̃^j = RMSNorm_j(ĥ^{j-1})
            h_TD = h_TD + layer(u_TD)  # ĥ^j = ĥ^{j-1} + Σ_i r_{j,i} o_{j,i}
        return h_TD.view(x_BTD.shape)  # ĥ^M


# ============================================================================================ accounting


def extra_params_per_layer(d_model: int, M: int, K: int, norm: str = "pre", score: str = "output") -> int:
    """Parameters a Finedeep FFN slot holds beyond the dense slot (FFN norm + 3 d D): M K router vectors (none for
    r ≡ 1) and the norms beyond the block's one: (M K + M - 1) d for the default (spec §3.4)."""
    norms = {"pre": M, "shared": 1, "post": 2 * M}[norm]
    routers = 0 if score == "none" else M * K
    return (routers + norms - 1) * d_model


def ffn_matmul_flops(d_model: int, d_ff: int, M: int = 0, K: int = 0, score: str = "output") -> int:
    """Forward matmul FLOPs per token of one FFN slot: 2·3·d·D for the experts (equal to dense), plus 2 M K d for
    the router dot products (output- or input-guided; 0 for dense, M = 0, or r ≡ 1). Norms and sigmoids
    (O(M d + M K) elementwise operations) are not matmul FLOPs and are left out."""
    return 6 * d_model * d_ff + (0 if (M == 0 or score == "none") else 2 * M * K * d_model)


def matmul_params(model: nn.Module) -> int:
    """Weights of matrix products in a decoder (2-D and stacked 3-D expert weights, routers, LM head; embeddings,
    norms excluded): 6 x this is the training FLOPs per token of the matmuls."""
    return sum(p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n)


# ======================================================================= dense <-> Finedeep (paired init)


def slice_dense_ffn(gate_Dd: torch.Tensor, up_Dd: torch.Tensor, down_dD: torch.Tensor, M: int, K: int) -> list:
    """Cut a dense SwiGLU (``nn.Linear`` layouts: gate/up [D, d], down [d, D]) along its intermediate axis into M
    sub-layers of K experts, contiguous: sub-layer j gets neurons [j K f, (j+1) K f). Returns, per sub-layer, the
    ``ExpertBank`` tensors (w_gate [K, d, f], w_up [K, d, f], w_down [K, f, d])."""
    D, d = gate_Dd.shape
    f = D // (M * K)
    out = []
    for j in range(M):
        rows = slice(j * K * f, (j + 1) * K * f)
        g = gate_Dd[rows].T.reshape(d, K, f).permute(1, 0, 2).contiguous()
        u = up_Dd[rows].T.reshape(d, K, f).permute(1, 0, 2).contiguous()
        w = down_dD[:, rows].T.reshape(K, f, d).contiguous()
        out.append((g, u, w))
    return out


def state_from_dense(dense_sd: dict, model: nn.Module, prefix: str = "") -> dict:
    """A Finedeep decoder's state dict whose every shared weight (embeddings, attention, norms, LM head) is the dense
    decoder's and whose experts are the dense FFN's slices; the first sub-layer's norm (or the shared one) takes the
    block's FFN norm; routers and other norms keep ``model``'s own initialisation. Used to pair a Finedeep run's
    initial weights with the dense run of the same seed (both i.i.d. N(0, init_std) draws: same distribution)."""
    own = model.state_dict()
    out = dict(own)
    for k, v in dense_sd.items():
        if k in own:
            out[k] = v
    for i, block in enumerate(model.layers):
        ffn = block.ffn
        if not isinstance(ffn, FinedeepFFN):
            continue
        p = f"{prefix}layers.{i}."
        slices = slice_dense_ffn(dense_sd[p + "ffn.gate_proj.weight"], dense_sd[p + "ffn.up_proj.weight"],
                                 dense_sd[p + "ffn.down_proj.weight"], ffn.M, ffn.K)
        for j, (g, u, w) in enumerate(slices):
            q = f"{p}ffn.sub.{j}.experts."
            out[q + "w_gate_EDF"], out[q + "w_up_EDF"], out[q + "w_down_EFD"] = g, u, w
        first = f"{p}ffn.norm.weight" if ffn.norm is not None else f"{p}ffn.sub.0.norm.weight"
        if first in out:
            out[first] = dense_sd[p + "ffn_norm.weight"]
    return out


# =================================================================================================== NSAR

# The activation tensors NSAR can read (spec §3.6: which one the paper measures is UNCONFIRMED, so all are logged):
# "scored": what reaches W_down, r_{j,i} a_{j,i} (dense: a, since a dense FFN has no score) -- the default;
# "product": the SwiGLU intermediates a before the score; "silu": the SiLU gate outputs g.
NSAR_TENSORS = ("scored", "product", "silu")


@torch.no_grad()
def ffn_activations(ffn: nn.Module, u_TD: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """The NSAR tensors of one FFN slot for its input: a dense ``SwiGLU`` gets the normed stream (one group of width
    D); a :class:`FinedeepFFN` gets the stream ĥ^0 and runs its sub-layers (one group of width K f per sub-layer,
    the groups whose RMS the per-sub-layer RMS-relative threshold uses). Returns tensor name -> list of [T, width]
    groups, and ``"score"`` -> the scores r [T, K] per sub-layer (empty for dense and r ≡ 1)."""
    if isinstance(ffn, FinedeepFFN):
        out = {k: [] for k in (*NSAR_TENSORS, "score")}
        h_TD = u_TD
        shared = ffn.norm(h_TD) if ffn.norm is not None else None
        for layer in ffn.sub:
            u = shared if shared is not None else layer.norm(h_TD)
            g, a, r = layer.intermediates(u)
            T = a.shape[0]
            out["silu"].append(g.reshape(T, -1))
            out["product"].append(a.reshape(T, -1))
            out["scored"].append((a if r is None else a * r.to(a.dtype)[..., None]).reshape(T, -1))
            if r is not None:
                out["score"].append(r)
            h_TD = h_TD + layer(u)
        return out
    g = torch.nn.functional.silu(ffn.gate_proj(u_TD))
    a = g * ffn.up_proj(u_TD)
    return {"scored": [a], "product": [a], "silu": [g], "score": []}


def nsar(groups, eps: float, relative: bool | str = False) -> float:
    """Non-sparse activation rate (spec §3.6): the fraction of entries with |a| > eps, or, scale-free, with
    |a| > eps · RMS(a) (``relative`` True or "rms") or |a| > eps · mean|a| (``relative="mean_abs"``, less driven by a
    few very large entries than the RMS). The scale is taken within each group -- each Finedeep sub-layer, or the
    whole dense layer -- so one sub-layer's scale does not set another's threshold. ``groups``: a tensor or a list."""
    groups = [groups] if isinstance(groups, torch.Tensor) else list(groups)
    above, total = 0.0, 0
    for a in groups:
        a = a.double().abs()
        if relative == "mean_abs":
            thr = eps * float(a.mean())
        elif relative:
            thr = eps * float(a.pow(2).mean().sqrt())
        else:
            thr = eps
        above += float((a > thr).double().sum())
        total += a.numel()
    return above / total
