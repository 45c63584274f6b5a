"""Attention parts: eager == SDPA (causal, non-causal, GQA, padding), probabilities, cross-layer K/V and probability
reuse, cross-attention with a padding mask, a bidirectional encoder, MHA -> GQA by head pooling."""

import sys
from pathlib import Path

import pytest
import torch

from replicate.models import CrossAttention, Decoder, DecoderConfig, Encoder, LayerSpec
from replicate.models.attention import Attention, attention_probs
from replicate.models.context import ForwardContext
from replicate.models.convert import mha_to_gqa

sys.path.insert(0, str(Path(__file__).parent))
from llama_pair import llama_pair  # noqa: E402

CFG = dict(vocab_size=61, d_model=32, n_heads=4, d_ff=40, max_seq_len=32)


def _pair(n_kv, causal=True):
    cfg = DecoderConfig(n_layers=1, n_kv_heads=n_kv, **CFG)
    torch.manual_seed(0)
    sdpa = Attention(cfg, 0, impl="sdpa", causal=causal)
    eager = Attention(cfg, 0, impl="eager", causal=causal)
    eager.load_state_dict(sdpa.state_dict())
    return cfg, sdpa, eager


@pytest.mark.parametrize("n_kv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
def test_eager_equals_sdpa_with_gradients(n_kv, causal, padded):
    cfg, sdpa, eager = _pair(n_kv, causal)
    from replicate.models.position import RoPE

    pos = RoPE(cfg)
    x = torch.randn(3, 11, 32)
    pad = None
    if padded:  # right padding of different lengths
        pad = torch.arange(11)[None, :] < torch.tensor([11, 7, 4])[:, None]
    outs = []
    for attn in (sdpa, eager):
        xi = x.clone().requires_grad_()
        y = attn(xi, pos, ForwardContext(padding_mask_BS=pad))
        w = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
        (y * w).sum().backward()
        outs.append((y, xi.grad, attn.qkv_proj.weight.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)


def test_probabilities_are_a_causal_padded_softmax():
    cfg, _, eager = _pair(2)
    from replicate.models.probes import capture
    from replicate.models.position import RoPE

    pad = torch.arange(9)[None, :] < torch.tensor([9, 5])[:, None]
    with capture(eager, ["attn_probs"]) as rec:
        eager(torch.randn(2, 9, 32), RoPE(cfg), ForwardContext(padding_mask_BS=pad))
    p = rec["attn_probs"][0]
    assert p.shape == (2, 4, 9, 9)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 9))
    assert (p.triu(1) == 0).all()  # no query sees a later key
    assert (p[1, :, :, 5:] == 0).all()  # nor a padded one


def test_eager_decoder_matches_transformers_llama():
    hf, ours = llama_pair(n_kv_heads=2, attention="eager")
    ids = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)


def test_cross_layer_kv_sharing():
    """A layer with kv_from=j has only W_q (and W_o) and attends over layer j's rotated keys and values."""
    cfg = DecoderConfig(n_layers=3, n_kv_heads=2, **CFG, layers={2: LayerSpec(attention_kwargs=(("kv_from", 0),))})
    m = Decoder(cfg)
    prod, cons = m.layers[0].attn, m.layers[2].attn
    assert prod.export_kv and not hasattr(cons, "qkv_proj") and cons.q_proj.weight.shape == (32, 32)
    assert cons.cache_kind == "none"
    seen = {}

    def keep(mod, args, out):
        seen["kv"] = args[2].shared[("kv", 0)]
        seen["u"] = args[0]
    h = cons.register_forward_hook(keep)
    ids = torch.randint(0, 61, (2, 10))
    m(ids).logits.square().mean().backward()
    h.remove()
    k, v = seen["kv"]
    with torch.no_grad():
        q = cons.q_proj(seen["u"]).view(2, 10, 4, 8).transpose(1, 2)
        q, _ = m.pos(q, None, ForwardContext())
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        torch.testing.assert_close(cons(seen["u"], m.pos, ForwardContext(shared={("kv", 0): (k, v)})),
                                   cons.o_proj(y.transpose(1, 2).reshape(2, 10, 32)))
    # the producer's K/V projection learns from the consumer too
    assert prod.qkv_proj.weight.grad[16:].abs().sum() > 0


def test_reuse_probs_layer_applies_the_leaders_softmax_to_its_own_values():
    """UniAttn's unified layer: y = P_leader v W_o; no W_q/W_k; P is not detached."""
    cfg = DecoderConfig(n_layers=3, n_kv_heads=2, **CFG,
                        layers={2: LayerSpec(attention="reuse_probs", attention_kwargs=(("probs_from", 1),))})
    m = Decoder(cfg)
    leader, member = m.layers[1].attn, m.layers[2].attn
    assert leader.export_probs and set(dict(member.named_parameters())) == {"v_proj.weight", "o_proj.weight"}
    seen = {}
    h = member.register_forward_hook(lambda mod, args, out: seen.update(u=args[0], p=args[2].shared[("probs", 1)]))
    ids = torch.randint(0, 61, (2, 10))
    m(ids)
    h.remove()
    p = seen["p"]
    assert p.shape == (2, 4, 10, 10)
    with torch.no_grad():
        v = member.v_proj(seen["u"]).view(2, 10, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
        ref = member.o_proj((p @ v).transpose(1, 2).reshape(2, 10, 32))
        got = member(seen["u"], m.pos, ForwardContext(shared={("probs", 1): p}))
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    # gradients reach the leader's W_q and W_k from the member alone
    m.zero_grad()
    x = seen["u"].detach().requires_grad_()
    ctx = ForwardContext()
    leader.export_probs = True
    leader(x, m.pos, ctx)
    member(x, m.pos, ctx).square().sum().backward()
    assert leader.qkv_proj.weight.grad[:48].abs().sum() > 0  # q and k rows
    with pytest.raises(ValueError, match="must be an earlier layer"):
        Decoder(DecoderConfig(n_layers=2, **CFG, layers={0: LayerSpec(attention="reuse_probs",
                                                                      attention_kwargs=(("probs_from", 1),))}))


def test_cross_attention_with_a_memory_padding_mask():
    torch.manual_seed(0)
    xa = CrossAttention(32, 4, d_memory=24)
    x, mem = torch.randn(2, 5, 32), torch.randn(2, 7, 24)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    y = xa(x, mem, mask)
    # reference: per row, plain attention over its real memory rows only
    for b, n in enumerate((7, 4)):
        q = xa.q_proj(x[b]).view(5, 4, 8).transpose(0, 1)
        k, v = xa.kv_proj(mem[b, :n]).view(n, 8, 8).transpose(0, 1).chunk(2, dim=0)
        o = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v
        torch.testing.assert_close(y[b], xa.o_proj(o.transpose(0, 1).reshape(5, 32)), atol=1e-6, rtol=1e-5)
    mem2 = mem.clone()
    mem2[1, 4:] = 100.0  # padded memory rows do not matter
    torch.testing.assert_close(xa(x, mem2, mask), y)
    # as a decoder part: memory through the forward call
    m = Decoder(DecoderConfig(n_layers=2, **CFG, layers={1: LayerSpec(attention="cross",
                                                                      attention_kwargs=(("d_memory", 24),))}))
    out = m(torch.randint(0, 61, (2, 6)), memory_BMD=mem, memory_mask_BM=mask)
    assert out.logits.shape == (2, 6, 61)
    with pytest.raises(ValueError, match="needs memory"):
        m(torch.randint(0, 61, (2, 6)))


def test_bidirectional_encoder_with_padding():
    torch.manual_seed(0)
    enc = Encoder(DecoderConfig(n_layers=2, **CFG, attention_kwargs=(("causal", False),), position="none")).eval()
    x = torch.randn(2, 6, 32)
    pad = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    h = enc(x, pad)
    x2 = x.clone()
    x2[1, 3:] = -5.0
    torch.testing.assert_close(enc(x2, pad)[1, :3], h[1, :3])  # real rows ignore padded ones
    x3 = x.clone()
    x3[0, 5] += 1.0
    assert not torch.allclose(enc(x3, pad)[0, 0], h[0, 0])  # and see later rows (no causal mask)


def test_mha_to_gqa_pools_key_and_value_heads():
    torch.manual_seed(0)
    mha = Decoder(DecoderConfig(n_layers=2, **CFG)).eval()
    # make the heads of each pair identical: pooling is then exact, and the converted model computes the same
    with torch.no_grad():
        for b in mha.layers:
            w = b.attn.qkv_proj.weight  # rows: q 32, k 32, v 32; 4 heads of 8
            for part in (1, 2):
                blk = w[32 * part : 32 * (part + 1)].view(2, 2, 8, 32)
                blk[:, 1] = blk[:, 0]
    gqa = mha_to_gqa(mha, 2)
    assert gqa.cfg.kv_heads == 2 and gqa.layers[0].attn.qkv_proj.weight.shape == (64, 32)
    ids = torch.randint(0, 61, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids).logits, mha(ids).logits, atol=1e-5, rtol=1e-5)
    mqa = mha_to_gqa(mha, 1)
    k = mha.layers[1].attn.qkv_proj.weight[32:64].view(4, 8, 32)
    torch.testing.assert_close(mqa.layers[1].attn.qkv_proj.weight[32:40], k.mean(0))
    with pytest.raises(ValueError, match="must divide"):
        mha_to_gqa(mha, 3)
    # per-head RoPE bases: only equal bases pool
    harpe = Decoder(DecoderConfig(n_layers=1, **CFG, position_kwargs=(("bases", (1e4, 1e4, 5e4, 5e4)),)))
    assert dict(mha_to_gqa(harpe, 2).cfg.position_kwargs)["bases"] == (1e4, 5e4)
    with pytest.raises(ValueError, match="different RoPE bases"):
        mha_to_gqa(harpe, 1)


def test_attention_probs_helper_handles_gqa_without_copies():
    q, k = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 5, 8)
    p = attention_probs(q, k, None, False)
    ref = torch.softmax(q @ k.repeat_interleave(2, 1).transpose(-1, -2) / 8**0.5, -1)
    torch.testing.assert_close(p, ref)
