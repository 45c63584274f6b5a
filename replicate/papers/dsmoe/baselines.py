"""DSMoE's baselines as conversions of the shared dense checkpoint (spec §4): not the paper's contribution, so kept
out of ``method.py``. Each is a named conversion of the trainer (``replicate.models.trainer.CONVERSIONS``), so a
continued run's key names how its initial weights were made.

- ``dsmoe_partition`` (DSMoE and the top-k MoE): the dense SwiGLU cut into the experts, contiguous or in a random
  neuron order of a fixed seed (LLaMA-MoE's split); new gates / routers keep their fresh initialisation.
- ``prune_neurons`` (LLM-Pruner-block style, structured): each layer keeps the FFN neurons ``keep`` names (the rows
  of W, U and the columns of V), a narrower dense SwiGLU. Importance (:func:`neuron_importance`): mean |a_j| over
  calibration tokens times ‖V_{:, j}‖, the size of neuron j's contribution to the output (a data-aware magnitude
  criterion; LLM-Pruner's first-order Taylor term is not used).
- ``prune_magnitude`` (the SparseGPT *stand-in*: unstructured, no OBS weight update): each FFN matrix keeps its
  ``density`` largest-magnitude weights; the others are zero and stay zero (a fixed mask, the ``masked_swiglu``
  part, during the continued training).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from replicate.models import convert
from replicate.models.ffn import SwiGLU, register_ffn
from replicate.models.probes import module_inputs
from replicate.models.trainer import register_conversion


@register_ffn("masked_swiglu")
class MaskedSwiGLU(SwiGLU):
    """A SwiGLU whose weights are multiplied by fixed 0/1 masks (buffers, saved with the model): pruned weights
    contribute nothing and get no gradient. All-ones masks: exactly the SwiGLU."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__(d_model, d_ff)
        for name in ("gate_proj", "up_proj", "down_proj"):
            self.register_buffer(f"{name}_mask", torch.ones_like(getattr(self, name).weight))

    def forward(self, x_BTD: torch.Tensor, token_ids_BT: torch.Tensor | None = None) -> torch.Tensor:
        g = F.linear(x_BTD, self.gate_proj.weight * self.gate_proj_mask)
        u = F.linear(x_BTD, self.up_proj.weight * self.up_proj_mask)
        return F.linear(F.silu(g) * u, self.down_proj.weight * self.down_proj_mask)

    def nonzero_params(self) -> int:
        return int(sum(getattr(self, f"{n}_mask").sum() for n in ("gate_proj", "up_proj", "down_proj")))


def _perm(d_ff: int, perm_seed: int) -> torch.Tensor | None:
    return None if perm_seed < 0 else torch.randperm(d_ff, generator=torch.Generator().manual_seed(perm_seed))


def _prefix(sd: dict) -> str:
    k = next(k for k in sd if k.endswith("embed.weight"))
    return k[: -len("embed.weight")]


@register_conversion("dsmoe_partition")
def _partition(sd, module, perm_seed: int = -1):
    """The shared ``convert.partition_state`` with a seeded random neuron order (``perm_seed`` >= 0)."""
    p = _prefix(sd)
    d_ff = sd[f"{p}layers.0.ffn.gate_proj.weight"].shape[0]
    return convert.partition_state(sd, module.model, _perm(d_ff, perm_seed))


@register_conversion("prune_neurons")
def _prune_neurons(sd, module, keep: tuple = ()):
    """Layer i keeps the neurons ``keep[i]`` (sorted indices) of its dense SwiGLU."""
    p = _prefix(sd)
    out = {k: v.clone() for k, v in sd.items()}
    for i, idx in enumerate(keep):
        idx = torch.tensor(idx, dtype=torch.long)
        q = f"{p}layers.{i}.ffn."
        out[q + "gate_proj.weight"] = sd[q + "gate_proj.weight"][idx].clone()
        out[q + "up_proj.weight"] = sd[q + "up_proj.weight"][idx].clone()
        out[q + "down_proj.weight"] = sd[q + "down_proj.weight"][:, idx].clone()
    return out


@register_conversion("prune_magnitude")
def _prune_magnitude(sd, module, density: float = 1.0):
    """Every FFN matrix keeps its ``density`` share of largest-|w| weights; masks set, pruned weights zeroed."""
    out = {k: v.clone() for k, v in sd.items()}
    for k, v in sd.items():
        if not k.endswith(("gate_proj.weight", "up_proj.weight", "down_proj.weight")) or ".ffn." not in k:
            continue
        m = magnitude_mask(v, density)
        out[k] = v * m
        out[k.removesuffix(".weight") + "_mask"] = m
    return out


def magnitude_mask(w: torch.Tensor, density: float) -> torch.Tensor:
    """1 on the ``round(density · numel)`` largest-|w| entries of ``w`` (ties: the lower flat index first), else 0."""
    n_keep = int(round(density * w.numel()))
    m = torch.zeros(w.numel(), dtype=w.dtype)
    if n_keep > 0:
        order = torch.sort(w.detach().abs().flatten(), descending=True, stable=True).indices
        m[order[:n_keep]] = 1
    return m.view_as(w)


def neuron_importance(model: nn.Module, windows: torch.Tensor, chunk: int = 16) -> list[torch.Tensor]:
    """Per layer, per FFN neuron j of a dense decoder: mean_t |a_j(t)| · ‖V_{:, j}‖ on ``windows`` (W, T+1), with a_j
    the SwiGLU intermediate, computed from each FFN's own input."""
    ffns = [b.ffn for b in model.layers]
    acts = module_inputs(model, ffns, windows, chunk,
                         lambda i, mod, x: (F.silu(mod.gate_proj(x)) * mod.up_proj(x)).abs())
    return [a.mean(0) * f.down_proj.weight.norm(dim=0) for a, f in zip(acts, ffns)]


def keep_top(importance: list[torch.Tensor], width: int) -> tuple:
    """Per layer the ``width`` most important neuron indices, sorted (a hashable tuple of tuples: a conversion
    kwarg, part of the run key)."""
    return tuple(tuple(sorted(int(j) for j in torch.topk(imp, width).indices)) for imp in importance)
