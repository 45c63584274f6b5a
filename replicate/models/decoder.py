"""One LLaMA-style decoder with swappable parts (nanoGPT-sized: read it top to bottom).

    x = [prefix embeddings ; embed(ids)]                 # optional prefix rows (visual tokens), positions continue
    for each layer i:  x = x + attn_i(norm(x), pos, ctx)   # pre-norm residual blocks (RMSNorm); no attention: skipped
                       x = x + ffn_i(norm(x), token_ids)   # SwiGLU, or any registered FFN / MoE part
                       (or x = ffn_i(x, ctx)                 for a part that owns its residual)
    logits = lm_head(norm(x))                            # on the token rows

Three parts are looked up by name in registries, so a paper adds its own without copying the decoder:
- ``attention`` (``replicate.models.attention.ATTENTION``): ``"sdpa"`` (default: causal MHA / GQA through
  ``F.scaled_dot_product_attention``, one fused QKV projection), ``"eager"`` (P materialised), cross-layer K/V or
  probability reuse, ``"cross"``, ``"none"``.
- ``position`` (``replicate.models.position.POSITION``): ``"rope"`` (default; per-head bases, PI, YaRN via
  ``position_kwargs``) or ``"none"``.
- ``ffn`` (``replicate.models.ffn.FFN_REGISTRY``): default ``"swiglu"``; MoE layers register there too. An FFN may
  return ``(y, aux)``; the decoder sums the auxiliary losses over layers into ``DecoderOutput.aux``.

Each layer may choose its own attention and FFN kind, width and kwargs (``DecoderConfig.layers``: one ``LayerSpec``
per layer). One ``ForwardContext`` per forward carries positions, masks, the KV cache, cross-attention memory and
what layers hand to later layers. With the defaults (``"sdpa"``, ``"rope"``, ``"swiglu"``, no ``layers``) the
decoder computes exactly what ``transformers.LlamaForCausalLM`` computes (tests/models/test_decoder.py copies
weights and compares logits and greedy generations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from replicate.models.attention import ATTENTION
from replicate.models.context import ForwardContext, TensorRef
from replicate.models.ffn import build_ffn
from replicate.models.loss import linear_cross_entropy
from replicate.models.norm import RMSNorm
from replicate.models.position import POSITION, RoPE
from replicate.models.probes import Probed

__all__ = ["ATTENTION", "POSITION", "Block", "Decoder", "DecoderConfig", "DecoderOutput", "Encoder", "ForwardContext",
           "LayerSpec", "RMSNorm", "RoPE", "from_llama_state_dict", "register"]


def register(registry: dict, name: str):
    def deco(factory):
        registry[name] = factory
        return factory

    return deco


def _freeze(x):
    """Lists (as a config comes back from YAML / JSON / ``asdict``) to tuples, recursively, so the config stays
    hashable; a dict of a ``TensorRef``'s fields back to the ref."""
    if isinstance(x, Mapping) and set(x) == {"sha256", "shape", "dtype"}:
        return TensorRef(x["sha256"], tuple(x["shape"]), x["dtype"])
    return tuple(_freeze(v) for v in x) if isinstance(x, (list, tuple)) else x


@dataclass(frozen=True)
class LayerSpec:
    """One layer's parts; None means the ``DecoderConfig``'s default. Kwargs are tuples of pairs."""

    attention: str | None = None  # "none": no attention sub-block (layer dropping)
    attention_kwargs: tuple | None = None
    ffn: str | None = None
    d_ff: int | None = None  # this layer's FFN width (for "moe": the width of one expert)
    ffn_kwargs: tuple | None = None

    def __post_init__(self):
        for name in ("attention_kwargs", "ffn_kwargs"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _freeze(getattr(self, name)))


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int = 2048
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: = n_heads (MHA); fewer: grouped-query attention
    d_ff: int = 344
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    tie_embeddings: bool = False
    attention: str = "sdpa"
    position: str = "rope"
    ffn: str = "swiglu"
    ffn_kwargs: tuple = ()  # (("n_experts", 8), ...): a tuple of pairs, so the config stays hashable
    attention_kwargs: tuple = ()
    position_kwargs: tuple = ()  # RoPE variants: (("bases", (1e4, 2e4)),), (("scaling", "yarn"), ("factor", 4.0), ...)
    layer_ffn: tuple = ()  # optional per-layer FFN names (len n_layers), overriding ``ffn`` (shorthand of ``layers``)
    # Per-layer parts: () = every layer the defaults above; else one LayerSpec per layer (a {layer: LayerSpec}
    # mapping is accepted and filled with LayerSpec()), e.g. MoE every other layer: {1: LayerSpec(ffn="moe", ...)}.
    layers: tuple = ()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    def __post_init__(self):
        set_ = lambda name, v: object.__setattr__(self, name, v)  # noqa: E731 (frozen: normalise in place)
        for name in ("ffn_kwargs", "attention_kwargs", "position_kwargs", "layer_ffn"):
            set_(name, _freeze(getattr(self, name)))
        layers = self.layers
        if isinstance(layers, Mapping):
            if any(not 0 <= int(i) < self.n_layers for i in layers):
                raise ValueError(f"layers: indices must be in [0, {self.n_layers}), got {sorted(layers)}")
            layers = [layers.get(i, layers.get(str(i), LayerSpec())) for i in range(self.n_layers)]
        layers = tuple(s if isinstance(s, LayerSpec) else LayerSpec(**dict(s)) for s in layers)
        if layers and len(layers) != self.n_layers:
            raise ValueError(f"layers: needs {self.n_layers} entries, got {len(layers)}")
        set_("layers", () if all(s == LayerSpec() for s in layers) else layers)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model: {self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_kv_heads: {self.kv_heads} does not divide n_heads={self.n_heads}")
        if self.layer_ffn and len(self.layer_ffn) != self.n_layers:
            raise ValueError(f"layer_ffn: needs {self.n_layers} entries, got {len(self.layer_ffn)}")

    def layer(self, i: int) -> LayerSpec:
        """Layer i's parts with every default filled in."""
        s = self.layers[i] if self.layers else LayerSpec()
        return LayerSpec(
            attention=s.attention if s.attention is not None else self.attention,
            attention_kwargs=s.attention_kwargs if s.attention_kwargs is not None else self.attention_kwargs,
            ffn=s.ffn if s.ffn is not None else (self.layer_ffn[i] if self.layer_ffn else self.ffn),
            d_ff=s.d_ff if s.d_ff is not None else self.d_ff,
            ffn_kwargs=s.ffn_kwargs if s.ffn_kwargs is not None else self.ffn_kwargs,
        )


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # (B, T, V) on the token rows
    aux: dict[str, torch.Tensor] = field(default_factory=dict)  # summed auxiliary losses of the FFN parts
    hidden: torch.Tensor | None = None  # (B, T, D): the final normed hidden states of the token rows (LM-head input)


# --------------------------------------------------------------------------------------------------- decoder


class Block(nn.Module, Probed):
    """Pre-norm residual block: ``x = x + attn(norm(x)); x = x + ffn(norm(x))`` (see the module docstring)."""

    probe_names = ("resid_in", "attn_in", "resid_mid", "resid_out")

    def __init__(self, cfg: DecoderConfig, layer_idx: int):
        super().__init__()
        spec = cfg.layer(layer_idx)  # this layer's parts, defaults filled in
        # Registration order (attn_norm, attn, ffn_norm, ffn) fixes the state-dict order and the order of the init
        # draws: the standard block registers exactly what it always did.
        if spec.attention not in ATTENTION:
            raise ValueError(f"attention: unknown part {spec.attention!r}; allowed: {', '.join(sorted(ATTENTION))}")
        attn = ATTENTION[spec.attention](cfg, layer_idx=layer_idx, **dict(spec.attention_kwargs))
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps) if attn is not None else None  # none: no norm either
        self.attn = attn
        ffn = build_ffn(spec.ffn, d_model=cfg.d_model, d_ff=spec.d_ff, **dict(spec.ffn_kwargs))
        self.owns_residual = getattr(ffn, "owns_residual", False)  # then the part does its own norms and adds
        self.ffn_norm = None if self.owns_residual else RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = ffn

    def forward(self, x, pos: nn.Module, ctx: ForwardContext):
        probe = self._probe  # None unless probes.capture is active: each test below is the whole cost
        if probe is not None:
            probe("resid_in", x)
        if self.attn is not None:
            u = self.attn_norm(x)  # u = RMSNorm(x)
            if probe is not None:
                probe("attn_in", u)
            x = x + self.attn(u, pos, ctx)  # h = x + Attn(u)
        if probe is not None:
            probe("resid_mid", x)
        if self.owns_residual:
            out = self.ffn(x, ctx)  # the part maps the stream h to the block output itself
            x, aux = out if isinstance(out, tuple) else (out, {})
        else:
            out = self.ffn(self.ffn_norm(x), token_ids_BT=ctx.token_ids_BT)  # x' = h + FFN(RMSNorm(h))
            out, aux = out if isinstance(out, tuple) else (out, {})
            x = x + out
        if probe is not None:
            probe("resid_out", x)
        return x, aux


def init_module(m: nn.Module, std: float) -> None:
    """The decoder's init, applied to every module (``model.apply``, children first, in registration order): every
    weight N(0, std), biases 0, norms 1. ``nn.Linear`` / ``nn.Embedding`` here; parts that hold raw parameters
    (stacked experts, routers, gates) through their own ``init_weights(std)``."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=std)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    elif hasattr(m, "init_weights"):
        m.init_weights(std)


def _link_layers(layers: nn.ModuleList) -> None:
    """Mark the layers whose K/V or probabilities a later layer reuses (``kv_from`` / ``probs_from``)."""
    for i, block in enumerate(layers):
        for link, flag in (("kv_from", "export_kv"), ("probs_from", "export_probs")):
            j = getattr(block.attn, link, None)
            if j is None:
                continue
            src = layers[j].attn if 0 <= j < i else None
            if src is None or not hasattr(src, flag):
                raise ValueError(f"layers: layer {i} takes {link}={j}, which must be an earlier layer with an "
                                 f"attention that can export them")
            setattr(src, flag, True)


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        if cfg.position not in POSITION:
            raise ValueError(f"position: unknown part {cfg.position!r}; allowed: {', '.join(sorted(POSITION))}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = POSITION[cfg.position](cfg, **dict(cfg.position_kwargs))  # shared by every layer (no parameters)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        _link_layers(self.layers)  # layers that hand K/V or P to later layers export them
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def _init(self, m):
        init_module(m, self.cfg.init_std)

    def hidden(self, input_ids_BT: torch.Tensor, prefix_embeds_BPD: torch.Tensor | None = None, *, cache=None,
               padding_mask_BS: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
               pos_offset: int = 0, memory_BMD: torch.Tensor | None = None,
               memory_mask_BM: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Final normed hidden states (B, P + T, D) of every row, prefix included, and the summed aux losses.

        ``prefix_embeds_BPD``: P rows of input embeddings before the token embeddings (positions continue through
        them). ``cache``: a ``replicate.models.generate.KVCache``; the rows continue its sequence and are appended
        to it. ``padding_mask_BS`` (bool, True = real) covers every key: cached, prefix and token rows.
        ``position_ids`` override the positions ``cache.length + pos_offset + 0..``. ``memory_BMD`` /
        ``memory_mask_BM``: what ``"cross"`` attention layers attend to."""
        x = self.embed(input_ids_BT)
        P = 0
        if prefix_embeds_BPD is not None:  # x = [prefix ; embed(ids)]: (B, P + T, D)
            P = prefix_embeds_BPD.shape[1]
            x = torch.cat([prefix_embeds_BPD.to(x.dtype), x], dim=1)
        offset = pos_offset + (cache.length if cache is not None else 0)  # position of the first row
        last = offset + x.shape[1] if position_ids is None else int(position_ids.max()) + 1
        if last > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {last} exceeds max_seq_len={self.cfg.max_seq_len}")
        # Token-conditioned routers see the ids; with a prefix the rows have none (such routers then fail clearly).
        ctx = ForwardContext(token_ids_BT=input_ids_BT if P == 0 else None, pos_offset=offset,
                             position_ids=position_ids, padding_mask_BS=padding_mask_BS, cache=cache,
                             memory_BMD=memory_BMD, memory_mask_BM=memory_mask_BM, prefix_len=P)
        aux_total: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            x, aux = layer(x, self.pos, ctx)
            for k, v in aux.items():
                aux_total[k] = aux_total[k] + v if k in aux_total else v
        if cache is not None:
            cache.advance(x.shape[1])  # every layer has written these rows
        return self.norm(x), aux_total

    def forward(self, input_ids_BT: torch.Tensor, prefix_embeds_BPD: torch.Tensor | None = None,
                **kwargs) -> DecoderOutput:
        """Logits (and final hidden states) of the token rows; ``kwargs`` as in ``hidden``."""
        h, aux = self.hidden(input_ids_BT, prefix_embeds_BPD, **kwargs)
        if prefix_embeds_BPD is not None:
            h = h[:, prefix_embeds_BPD.shape[1]:]  # the token rows
        return DecoderOutput(self.lm_head(h), aux, h)

    def loss(self, input_ids_BT: torch.Tensor, targets_BT: torch.Tensor, prefix_embeds_BPD: torch.Tensor | None = None,
             **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean next-token cross-entropy (fp32) over the token rows and the aux losses, the head fused with the loss
        (:func:`replicate.models.loss.linear_cross_entropy`: the (B, T, V) logits are never materialised)."""
        h, aux = self.hidden(input_ids_BT, prefix_embeds_BPD, **kwargs)
        if prefix_embeds_BPD is not None:
            h = h[:, prefix_embeds_BPD.shape[1]:]  # no loss on the prefix rows
        return linear_cross_entropy(h.flatten(0, 1), self.lm_head.weight, targets_BT.flatten()), aux

    @torch.no_grad()
    def generate(self, input_ids_BT: torch.Tensor, max_new_tokens: int, eos_id: int | None = None, **kwargs):
        """Greedy decoding with a KV cache (:func:`replicate.models.generate.generate`)."""
        from replicate.models.generate import generate

        return generate(self, input_ids_BT, max_new_tokens, eos_id, **kwargs)

    def layer_stats(self) -> dict[str, torch.Tensor]:
        """Every layer's ``last_stats`` (MoE load, router entropy, active experts), detached scalars keyed
        ``layer3/load_max``; a sub-module's stats carry its path (``layer1/sub.0.ffn/load_max``) and a per-expert
        vector ``load_E`` becomes ``layer3/load_e0``, ``layer3/load_e1``, ... (what a LightningModule logs)."""
        out: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.layers):
            for path, m in block.named_modules():
                stats = getattr(m, "last_stats", None)
                if not stats:
                    continue
                rel = path.removeprefix("ffn").lstrip(".")
                prefix = f"layer{i}/" + (f"{rel}/" if rel else "")
                for k, v in stats.items():
                    if v.dim() == 0:
                        out[prefix + k] = v
                    else:
                        base = k.removesuffix("_E")
                        out.update({f"{prefix}{base}_e{e}": x for e, x in enumerate(v.flatten())})
        return out

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward) of the dense matmuls and attention:
        6 * N_matmul + 12 * n_attention_layers * d_model * seq_len (attention scores and values, causal mask not
        subtracted)."""
        n_matmul = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and "embed" not in n)
        n_attn = sum(block.attn is not None for block in self.layers)
        return 6 * n_matmul + 12 * n_attn * self.cfg.d_model * seq_len


class Encoder(nn.Module):
    """The decoder's blocks without token embedding or LM head, on given input rows (a ViT over patch embeddings):
    ``h = norm(blocks(x))``. Build it with ``attention_kwargs=(("causal", False),)`` for bidirectional attention;
    ``padding_mask_BT`` (True = real) hides padded rows as keys."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.pos = POSITION[cfg.position](cfg, **dict(cfg.position_kwargs))
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        _link_layers(self.layers)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.apply(lambda m: init_module(m, cfg.init_std))

    def forward(self, x_BTD: torch.Tensor, padding_mask_BT: torch.Tensor | None = None,
                memory_BMD: torch.Tensor | None = None, memory_mask_BM: torch.Tensor | None = None) -> torch.Tensor:
        ctx = ForwardContext(padding_mask_BS=padding_mask_BT, memory_BMD=memory_BMD, memory_mask_BM=memory_mask_BM)
        for layer in self.layers:
            x_BTD, _ = layer(x_BTD, self.pos, ctx)
        return self.norm(x_BTD)


def from_llama_state_dict(model: Decoder, sd: dict[str, torch.Tensor]) -> None:
    """Load a ``transformers`` LlamaForCausalLM state dict into ``model`` (q, k, v fused into ``qkv_proj``)."""
    out = {"embed.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
           "lm_head.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"])}
    for i in range(model.cfg.n_layers):
        p = f"model.layers.{i}."
        out[f"layers.{i}.attn.qkv_proj.weight"] = torch.cat(
            [sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"], sd[p + "self_attn.v_proj.weight"]]
        )
        out[f"layers.{i}.attn.o_proj.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[f"layers.{i}.attn_norm.weight"] = sd[p + "input_layernorm.weight"]
        out[f"layers.{i}.ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[f"layers.{i}.ffn.{name}.weight"] = sd[p + f"mlp.{name}.weight"]
    model.load_state_dict(out)

