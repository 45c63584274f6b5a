"""Our decoder computes what transformers' LlamaForCausalLM computes; parts plug in through registries."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from replicate.models import Decoder, DecoderConfig, register_ffn
from replicate.models.decoder import from_llama_state_dict


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_same_logits_as_transformers_llama(n_kv_heads):
    torch.manual_seed(0)
    hf_cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=136, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=n_kv_heads, max_position_embeddings=64,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False,
                         mlp_bias=False)
    hf = LlamaForCausalLM(hf_cfg).eval()
    ours = Decoder(DecoderConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, d_ff=136,
                                 max_seq_len=64)).eval()
    from_llama_state_dict(ours, hf.state_dict())
    ids = torch.randint(0, 97, (3, 29))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_causality():
    torch.manual_seed(0)
    m = Decoder(DecoderConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=16)).eval()
    ids = torch.randint(0, 50, (1, 16))
    ids2 = ids.clone()
    ids2[0, 10:] = (ids2[0, 10:] + 1) % 50
    with torch.no_grad():
        a, b = m(ids).logits, m(ids2).logits
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_custom_ffn_plugs_in_and_its_aux_losses_are_summed():
    @register_ffn("test_scaled")
    class Scaled(torch.nn.Module):
        def __init__(self, d_model, d_ff, scale=1.0):
            super().__init__()
            self.lin = torch.nn.Linear(d_model, d_model, bias=False)
            self.scale = scale

        def forward(self, x, token_ids_BT=None):
            assert token_ids_BT is not None and token_ids_BT.shape == x.shape[:2]
            return self.lin(x) * self.scale, {"unit": torch.tensor(1.0)}

    m = Decoder(DecoderConfig(vocab_size=50, d_model=32, n_layers=3, n_heads=2, d_ff=64, max_seq_len=16,
                              ffn="test_scaled", ffn_kwargs=(("scale", 0.5),)))
    out = m(torch.randint(0, 50, (2, 8)))
    assert out.logits.shape == (2, 8, 50)
    assert out.aux["unit"].item() == 3.0


def test_unknown_parts_are_clear_errors():
    with pytest.raises(ValueError, match="ffn: unknown feed-forward part 'nope'"):
        Decoder(DecoderConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_ff=8, ffn="nope"))
    with pytest.raises(ValueError, match="attention: unknown part 'nope'"):
        Decoder(DecoderConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_ff=8, attention="nope"))
    with pytest.raises(ValueError, match="not divisible"):
        DecoderConfig(d_model=10, n_heads=3)


def test_moe_decoder_trains_with_its_aux_loss():
    from replicate.models import CausalLM, OptimConfig

    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=16, ffn="moe",
                        ffn_kwargs=(("n_experts", 4), ("k", 2)))
    lm = CausalLM(cfg, OptimConfig())
    lm.log = lambda *a, **k: None
    batch = torch.randint(0, 50, (2, 9))
    out = lm.model(batch[:, :-1])
    assert set(out.aux) == {"load_balance"} and out.aux["load_balance"] > 0
    lm_loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), batch[:, 1:].flatten())
    lm._trainer = None
    assert lm.training_step(batch, 0).item() == pytest.approx((lm_loss + out.aux["load_balance"]).item(), rel=1e-5)
    assert lm.model.layers[0].ffn.last_stats["load_E"].shape == (4,)


# ------------------------------------------------------------------ the standard configuration did not move

# sha256 of every state-dict tensor (names included) right after construction under torch.manual_seed(0), plus the
# next 8 draws of the random stream, computed with the decoder before per-layer parts existed (commit 3d12b6e):
# the standard configuration's init is bit-identical, and it draws exactly as many numbers as before.
GOLDEN_INIT = {
    "std": (dict(vocab_size=97, d_model=64, n_layers=2, n_heads=4, d_ff=136, max_seq_len=64), "cc7a9cfd957c3b40"),
    "gqa_tied": (dict(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=136, max_seq_len=64,
                      tie_embeddings=True), "3f00ee452a403e43"),
    "tsl_small": (dict(vocab_size=2048, d_model=192, n_layers=3, n_heads=3, d_ff=512, max_seq_len=256),
                  "88d909dc4cbb84bd"),
}


@pytest.mark.parametrize("name", list(GOLDEN_INIT))
def test_standard_init_is_bit_identical_to_the_previous_decoder(name):
    import hashlib

    kwargs, golden = GOLDEN_INIT[name]
    torch.manual_seed(0)
    m = Decoder(DecoderConfig(**kwargs))
    h = hashlib.sha256()
    for n, t in m.state_dict().items():
        h.update(n.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    h.update(torch.rand(8).numpy().tobytes())
    assert h.hexdigest()[:16] == golden


def test_standard_state_dict_names_and_order():
    m = Decoder(DecoderConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_ff=8))
    assert list(m.state_dict()) == [
        "embed.weight", "layers.0.attn_norm.weight", "layers.0.attn.qkv_proj.weight", "layers.0.attn.o_proj.weight",
        "layers.0.ffn_norm.weight", "layers.0.ffn.gate_proj.weight", "layers.0.ffn.up_proj.weight",
        "layers.0.ffn.down_proj.weight", "norm.weight", "lm_head.weight"]


# ------------------------------------------------------------------------------------------- per-layer parts


def test_per_layer_ffn_kind_width_and_kwargs():
    """Dense and MoE mixed, MoE every other layer, wider experts (SMoE-Top3) beside narrower dense layers."""
    from replicate.models import LayerSpec
    from replicate.moe import MoE

    moe = LayerSpec(ffn="moe", d_ff=48, ffn_kwargs=(("n_experts", 4), ("k", 3)))
    cfg = DecoderConfig(vocab_size=50, d_model=32, n_layers=4, n_heads=2, d_ff=40, max_seq_len=16,
                        layers={1: moe, 3: moe})
    assert len(cfg.layers) == 4 and cfg.layers[0] == LayerSpec()
    m = Decoder(cfg)
    assert [type(b.ffn).__name__ for b in m.layers] == ["SwiGLU", "MoE", "SwiGLU", "MoE"]
    assert m.layers[0].ffn.gate_proj.weight.shape == (40, 32)
    assert isinstance(m.layers[1].ffn, MoE) and m.layers[1].ffn.experts.w_gate_EDF.shape == (4, 32, 48)
    assert m.layers[1].ffn.router.k == 3
    out = m(torch.randint(0, 50, (2, 8)))
    assert set(out.aux) == {"load_balance"}
    # the same model written as a full tuple, and the layer_ffn shorthand, still work
    assert DecoderConfig(**{**cfg.__dict__, "layers": tuple(cfg.layers)}) == cfg
    short = DecoderConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, d_ff=40, layer_ffn=("swiglu", "moe"))
    assert [type(b.ffn).__name__ for b in Decoder(short).layers] == ["SwiGLU", "MoE"]
    # all-default layers are the standard config (same hash, same run key)
    assert DecoderConfig(layers=(LayerSpec(),) * 4) == DecoderConfig()
    with pytest.raises(ValueError, match="layers: needs 4 entries"):
        DecoderConfig(layers=(LayerSpec(),) * 3)


def test_config_round_trips_through_asdict_and_lists():
    """What Lightning saves (``asdict``, YAML lists) rebuilds the same, hashable config."""
    from dataclasses import asdict

    from replicate.models import LayerSpec, tensor_ref

    mask = tensor_ref(torch.eye(4, dtype=torch.bool))
    cfg = DecoderConfig(n_layers=2, layers={1: LayerSpec(ffn="moe", ffn_kwargs=(("routing_mask", mask), ("k", 1)))},
                        position_kwargs=(("bases", (1e4, 2e4, 3e4, 4e4)),))
    d = asdict(cfg)
    d["position_kwargs"] = [list(p) for p in d["position_kwargs"]]
    back = DecoderConfig(**d)
    assert back == cfg and hash(back) == hash(cfg)
    assert torch.equal(dict(back.layers[1].ffn_kwargs)["routing_mask"].resolve(), torch.eye(4, dtype=torch.bool))


def test_tensor_kwargs_by_content_hash():
    """A routing mask reaches the router through the config as a content-hashed reference."""
    from replicate.config import config_hash
    from replicate.models import LayerSpec, tensor_ref

    mask = torch.rand(50, 4) > 0.5
    mask[:, 0] = True
    ref = tensor_ref(mask)
    assert ref == tensor_ref(mask.clone()) and ref != tensor_ref(~mask)
    spec = LayerSpec(ffn="moe", ffn_kwargs=(("router", "masked"), ("routing_mask", ref), ("n_experts", 4), ("k", 1)))
    cfg = DecoderConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, d_ff=16, layers={1: spec})
    m = Decoder(cfg)
    assert torch.equal(m.layers[1].ffn.router.mask_VE, mask)
    other = DecoderConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, d_ff=16,
                          layers={1: LayerSpec(ffn="moe", ffn_kwargs=(("router", "masked"),
                                                                       ("routing_mask", tensor_ref(~mask | mask)),
                                                                       ("n_experts", 4), ("k", 1)))})
    assert config_hash(cfg) != config_hash(other)


def test_a_layer_without_attention():
    from replicate.models import LayerSpec

    cfg = DecoderConfig(vocab_size=50, d_model=32, n_layers=3, n_heads=2, d_ff=40, max_seq_len=16,
                        layers={1: LayerSpec(attention="none")})
    m = Decoder(cfg).eval()
    assert m.layers[1].attn is None and m.layers[1].attn_norm is None
    assert not any(k.startswith("layers.1.attn") for k in m.state_dict())
    x = torch.randn(2, 8, 32)
    b = m.layers[1]
    from replicate.models.context import ForwardContext

    with torch.no_grad():  # the block is x + ffn(norm(x)) (LLMDrop's dropped attention)
        torch.testing.assert_close(b(x, m.pos, ForwardContext())[0], x + b.ffn(b.ffn_norm(x)))
    assert m(torch.randint(0, 50, (2, 8))).logits.shape == (2, 8, 50)


def test_residual_owning_part_gets_the_stream_and_a_one_sublayer_stack_is_the_standard_block():
    from replicate.models import LayerSpec

    std = Decoder(DecoderConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, d_ff=40, max_seq_len=16)).eval()
    stack = Decoder(DecoderConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, d_ff=40, max_seq_len=16,
                                  ffn="stack", ffn_kwargs=(("n", 1), ("sub", "swiglu")))).eval()
    assert stack.layers[0].ffn_norm is None and stack.layers[0].owns_residual
    sd = {}
    for k, v in std.state_dict().items():
        k = k.replace("ffn_norm.", "ffn.sub.0.norm.").replace("ffn.gate_proj", "ffn.sub.0.ffn.gate_proj")
        k = k.replace("ffn.up_proj", "ffn.sub.0.ffn.up_proj").replace("ffn.down_proj", "ffn.sub.0.ffn.down_proj")
        sd[k] = v
    stack.load_state_dict(sd)
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert torch.equal(stack(ids).logits, std(ids).logits)

    # CartesianMoE's layer: sub-layer A, a norm, sub-layer B; both routers' aux losses are summed
    cart = Decoder(DecoderConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, d_ff=16, max_seq_len=16, layers={
        1: LayerSpec(ffn="stack", ffn_kwargs=(("n", 2), ("sub", "moe"),
                                              ("sub_kwargs", (("n_experts", 4), ("k", 2), ("d_shared", 16))))),
    }))
    out = cart(ids)
    a, b = (cart.layers[1].ffn.sub[j].ffn for j in (0, 1))
    assert a is not b and a.router is not b.router
    both = 0.01 * (a.last_stats["balance_loss"] + b.last_stats["balance_loss"])
    assert out.aux["load_balance"].item() == pytest.approx(both.item(), rel=1e-6)
    assert {"layer1/sub.0.ffn/load_max", "layer1/sub.1.ffn/load_max"} <= set(cart.layer_stats())


def test_prefix_embeddings_continue_positions_and_the_loss_is_on_token_rows():
    torch.manual_seed(0)
    m = Decoder(DecoderConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, d_ff=40, max_seq_len=32)).eval()
    ids = torch.randint(0, 50, (2, 12))
    P = 5
    with torch.no_grad():
        prefix = m.embed(ids[:, :P])  # a prefix of embeddings equal to those tokens' embeddings
        full = m(ids)
        out = m(ids[:, P:], prefix)
        torch.testing.assert_close(out.logits, full.logits[:, P:], atol=1e-6, rtol=1e-6)
        assert out.hidden.shape == (2, 12 - P, 32)
        targets = torch.randint(0, 50, (2, 12 - P))
        loss, _ = m.loss(ids[:, P:], targets, prefix)
        ref = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), targets.flatten())
        torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        m(ids, torch.zeros(2, 21, 32))


def test_layer_stats_collects_every_moe_layer():
    from replicate.models import LayerSpec

    cfg = DecoderConfig(vocab_size=50, d_model=32, n_layers=3, n_heads=2, d_ff=16, max_seq_len=16, layers={
        0: LayerSpec(ffn="moe", ffn_kwargs=(("n_experts", 4), ("k", 2))),
        2: LayerSpec(ffn="sigmoid_moe", d_ff=32, ffn_kwargs=(("n_experts", 4),))})
    m = Decoder(cfg)
    m(torch.randint(0, 50, (2, 8)))
    stats = m.layer_stats()
    assert {"layer0/load_max", "layer0/load_cv", "layer0/router_entropy", "layer0/router_max_prob",
            "layer0/active_per_token", "layer2/load_max", "layer2/sparsity_loss"} <= set(stats)
    assert [stats[f"layer0/load_e{e}"] for e in range(4)] == list(m.layers[0].ffn.last_stats["load_E"])
    assert not any(k.startswith("layer1/") for k in stats)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())
