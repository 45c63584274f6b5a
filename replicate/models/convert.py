"""Conversions of a trained decoder into another architecture (the start of a continued run). Pure functions: the
input is not touched, the caller's random stream is not advanced (new parameters are drawn from a fork).

- MHA -> GQA (Ainslie et al. 2023, Sec. 2.1, "uptraining"): the K and V projections of the heads in each group are
  mean-pooled into one head,
      W_k^(g) = 1/G sum_{j in group g} W_k^(j),   same for W_v,      G = H_kv_old / H_kv_new,
  and query head h keeps reading the pooled head of its old KV head (h // (H / H_kv)).
- dense FFN -> partitioned experts (DSMoE Sec. 3.2, LLaMA-MoE): each dense SwiGLU cut along its intermediate axis
  (``ExpertBank.from_dense``): ``"sigmoid_moe"`` keeps the width and adds a fresh gate (with ``gate="none"`` the
  model computes exactly what it computed), ``"moe"`` makes experts of width d_ff / E behind a fresh router.

- standard attention -> attention that reuses or drops (UniAttn's baselines from one trained base): a layer that
  reuses an earlier layer's K/V (CLA) keeps its W_q, one that reuses probabilities (Softmax unification) its W_v, a
  layer without attention (LLMDrop) drops W_q, W_k, W_v, W_o and the norm (``attention_state``).

Two forms each: on a model (``mha_to_gqa``, ``partition_ffn``: a new Decoder), and on a state dict for a given
target model (``gqa_state``, ``partition_state``: the trainer's conversion protocol ``f(state_dict, module)``, which
keeps the target's fresh initialisation of the parameters the parent does not have). State-dict keys may carry a
prefix (a LightningModule's ``model.``).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from replicate.models.decoder import Decoder, DecoderConfig, LayerSpec


def _fresh(cfg: DecoderConfig, like: torch.nn.Module) -> Decoder:
    p = next(like.parameters())
    with torch.random.fork_rng(devices=[]):
        return Decoder(cfg).to(device=p.device, dtype=p.dtype)


def _prefix(state: dict) -> str:
    key = next(k for k in state if k.endswith("embed.weight"))
    return key[: -len("embed.weight")]


# ------------------------------------------------------------------------------------------------- MHA -> GQA


def gqa_config(cfg: DecoderConfig, n_kv_heads: int) -> DecoderConfig:
    """``cfg`` with ``n_kv_heads``; per-KV-head RoPE bases pooled too (only heads of equal base can be)."""
    if n_kv_heads < 1 or cfg.kv_heads % n_kv_heads:
        raise ValueError(f"mha_to_gqa: n_kv_heads={n_kv_heads} must divide the current {cfg.kv_heads} KV heads")
    G = cfg.kv_heads // n_kv_heads
    position_kwargs = dict(cfg.position_kwargs)
    if position_kwargs.get("bases") is not None:
        groups = [tuple(position_kwargs["bases"])[g * G : (g + 1) * G] for g in range(n_kv_heads)]
        if any(len(set(b)) > 1 for b in groups):
            raise ValueError("mha_to_gqa: the heads pooled into one KV head have different RoPE bases")
        position_kwargs["bases"] = tuple(b[0] for b in groups)
    return replace(cfg, n_kv_heads=n_kv_heads, position_kwargs=tuple(position_kwargs.items()))


def gqa_state(state: dict[str, torch.Tensor], target: Decoder) -> dict[str, torch.Tensor]:
    """``state`` (any number of KV heads, read from the shapes) with its K/V heads pooled to ``target``'s."""
    H, hd, n_new = target.cfg.n_heads, target.cfg.head_dim, target.cfg.kv_heads

    def pool(w):  # (kv_old * hd, D) -> (n_new * hd, D)
        kv_old = w.shape[0] // hd
        if kv_old % n_new:
            raise ValueError(f"mha_to_gqa: {n_new} KV heads do not divide the parent's {kv_old}")
        return w.view(n_new, kv_old // n_new, hd, -1).mean(1).reshape(n_new * hd, -1)

    out = {}
    for name, w in state.items():
        if name.endswith("attn.qkv_proj.weight"):
            kv = (w.shape[0] // hd - H) // 2
            q, k, v = w.split([H * hd, kv * hd, kv * hd])
            out[name] = torch.cat([q, pool(k), pool(v)])
        elif name.endswith("attn.v_proj.weight"):  # a layer that reuses another layer's probabilities
            out[name] = pool(w)
        else:
            out[name] = w.clone()
    return out


def mha_to_gqa(model: Decoder, n_kv_heads: int) -> Decoder:
    """A new Decoder with ``n_kv_heads`` KV heads, K/V projections mean-pooled over each group."""
    new = _fresh(gqa_config(model.cfg, n_kv_heads), model)
    new.load_state_dict(gqa_state(model.state_dict(), new))
    return new


# ----------------------------------------------------------------------------------- dense FFN -> experts


def partition_config(cfg: DecoderConfig, n_experts: int, *, kind: str = "sigmoid_moe", ffn_kwargs: tuple = (),
                     layers: tuple[int, ...] | None = None) -> DecoderConfig:
    """``cfg`` with the SwiGLU layers ``layers`` (default: all) as ``kind`` layers of ``n_experts`` experts."""
    if kind not in ("sigmoid_moe", "moe"):
        raise ValueError(f"partition_ffn: kind={kind!r}; allowed: sigmoid_moe, moe")
    specs = list(cfg.layers or (LayerSpec(),) * cfg.n_layers)
    for i in range(cfg.n_layers) if layers is None else layers:
        spec = cfg.layer(i)
        if spec.ffn != "swiglu":
            raise ValueError(f"partition_ffn: layer {i}'s FFN is {spec.ffn!r}, not 'swiglu'")
        if spec.d_ff % n_experts:
            raise ValueError(f"partition_ffn: d_ff={spec.d_ff} of layer {i} is not divisible by {n_experts} experts")
        width = spec.d_ff if kind == "sigmoid_moe" else spec.d_ff // n_experts
        specs[i] = replace(specs[i], ffn=kind, d_ff=width, ffn_kwargs=(("n_experts", n_experts), *ffn_kwargs))
    return replace(cfg, layers=tuple(specs))


def partition_state(state: dict[str, torch.Tensor], target: Decoder,
                    perm: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A state dict for ``target``: the parent's dense SwiGLU weights cut into the experts of every target layer
    that holds an expert bank (intermediate neurons in the order ``perm``, else contiguous), the parent's other
    weights as they are, the target's own initialisation for what the parent lacks (routers, gates)."""
    from replicate.models.ffn import SwiGLU
    from replicate.moe import ExpertBank

    p = _prefix(state)
    out = {p + k: v.clone() for k, v in target.state_dict().items()}
    out.update({k: v.clone() for k, v in state.items() if k in out})
    with torch.random.fork_rng(devices=[]):
        for i, block in enumerate(target.layers):
            bank = getattr(block.ffn, "experts", None)
            src = f"{p}layers.{i}.ffn."
            if not isinstance(bank, ExpertBank) or src + "gate_proj.weight" not in state:
                continue
            d_ff, d = state[src + "gate_proj.weight"].shape
            dense = SwiGLU(d, d_ff)
            dense.load_state_dict({f"{n}.weight": state[src + n + ".weight"] for n in ("gate_proj", "up_proj", "down_proj")})
            cut = ExpertBank.from_dense(dense, bank.n_experts, perm)
            out.update({f"{src}experts.{k}": v for k, v in cut.state_dict().items()})
    return out


def partition_ffn(model: Decoder, n_experts: int, *, kind: str = "sigmoid_moe", ffn_kwargs: tuple = (),
                  layers: tuple[int, ...] | None = None, perm: torch.Tensor | None = None) -> Decoder:
    """A new Decoder whose SwiGLU layers ``layers`` (default: all) are ``kind`` layers holding the dense weights cut
    into ``n_experts`` experts; everything else is copied; new parameters follow the decoder's init."""
    new = _fresh(partition_config(model.cfg, n_experts, kind=kind, ffn_kwargs=ffn_kwargs, layers=layers), model)
    new.load_state_dict(partition_state(model.state_dict(), new, perm))
    return new


# ------------------------------------------------------------------------- attention that reuses or drops


def attention_state(state: dict[str, torch.Tensor], target: Decoder) -> dict[str, torch.Tensor]:
    """A state dict for ``target`` from a parent whose layers all have standard attention (fused ``qkv_proj``):
    every parameter the two share by name and shape is the parent's; a ``kv_from`` layer's ``q_proj`` is the parent's
    W_q rows, a ``probs_from`` layer's ``v_proj`` its W_v rows; parameters the parent lacks (a compensation W_c)
    keep the target's initialisation; parent weights the target has no place for (dropped attention) are left out."""
    p = _prefix(state)
    H, kv, hd = target.cfg.n_heads, target.cfg.kv_heads, target.cfg.head_dim
    out = {p + k: v.clone() for k, v in target.state_dict().items()}
    out.update({k: v.clone() for k, v in state.items() if k in out and out[k].shape == v.shape})
    for i, block in enumerate(target.layers):
        src = f"{p}layers.{i}.attn.qkv_proj.weight"
        if block.attn is None or src not in state:
            continue
        q, _, v = state[src].split([H * hd, kv * hd, kv * hd])
        if getattr(block.attn, "kv_from", None) is not None:
            out[f"{p}layers.{i}.attn.q_proj.weight"] = q.clone()
        if getattr(block.attn, "probs_from", None) is not None:
            out[f"{p}layers.{i}.attn.v_proj.weight"] = v.clone()
    return out
