"""RoPE: the standard table is transformers' LlamaRotaryEmbedding; per-KV-head bases (all equal = exactly the standard
RoPE; GQA groups share their KV head's base; relative-position invariance); position interpolation and YaRN equal
transformers' rope_parameters variants (frequencies, attention scaling, model logits); offsets and position ids."""

import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from replicate.models import Decoder, DecoderConfig
from replicate.models.context import ForwardContext
from replicate.models.position import RoPE

sys.path.insert(0, str(Path(__file__).parent))
from llama_pair import llama_pair  # noqa: E402


def _hf_config(head_dim=16, heads=4, max_len=64, rope=None, theta=10000.0):
    return LlamaConfig(hidden_size=head_dim * heads, num_attention_heads=heads, max_position_embeddings=max_len,
                       rope_parameters={"rope_type": "default", "rope_theta": theta, **(rope or {})})


def test_standard_rope_table_is_transformers():
    cfg = DecoderConfig(d_model=64, n_heads=4, max_seq_len=64, rope_theta=5e5)
    ours = RoPE(cfg)
    hf = LlamaRotaryEmbedding(_hf_config(theta=5e5))
    cos, sin = hf(torch.zeros(1), torch.arange(64)[None])
    assert torch.equal(ours.cos, cos[0, :, :8]) and torch.equal(ours.sin, sin[0, :, :8])
    assert torch.equal(ours.inv_freq, hf.inv_freq)


def test_equal_per_head_bases_are_exactly_the_standard_rope():
    cfg = DecoderConfig(d_model=64, n_heads=4, n_kv_heads=2, max_seq_len=32)
    std, per_head = RoPE(cfg), RoPE(cfg, bases=(10000.0, 10000.0))
    q, k = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 9, 16)
    ctx = ForwardContext(pos_offset=3)
    for a, b in zip(std(q, k, ctx), per_head(q, k, ctx)):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    m1 = Decoder(DecoderConfig(vocab_size=40, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, max_seq_len=32))
    torch.manual_seed(0)
    m2 = Decoder(DecoderConfig(vocab_size=40, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, max_seq_len=32,
                               position_kwargs=(("bases", (1e4, 1e4)),)))
    ids = torch.randint(0, 40, (2, 20))
    assert torch.equal(m1(ids).logits, m2(ids).logits)


def test_per_head_bases_follow_the_kv_head_and_keep_relative_positions():
    cfg = DecoderConfig(d_model=64, n_heads=4, n_kv_heads=2, max_seq_len=64)
    rope = RoPE(cfg, bases=(100.0, 5e5))
    q, k = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 1, 16)
    # query heads 0, 1 use base 100 (KV head 0), heads 2, 3 base 5e5 (KV head 1)
    for h in range(4):
        single = RoPE(DecoderConfig(d_model=16, n_heads=1, max_seq_len=64, rope_theta=(100.0, 5e5)[h // 2]))
        ctx = ForwardContext(pos_offset=7)
        torch.testing.assert_close(rope(q, k, ctx)[0][:, h], single(q[:, h : h + 1], None, ctx)[0][:, 0])

    def score(m, n):  # q at position m, k at position n, per head
        qm = rope(q, None, ForwardContext(pos_offset=m))[0]
        kn = rope(q, k, ForwardContext(pos_offset=n))[1].repeat_interleave(2, 1)
        return (qm * kn).sum(-1)

    torch.testing.assert_close(score(9, 4), score(30, 25), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(9, 4), score(9, 5))
    with pytest.raises(ValueError, match="one base per KV head"):
        RoPE(cfg, bases=(1e4, 1e4, 1e4, 1e4))


@pytest.mark.parametrize("rope, kwargs", [
    ({"rope_type": "linear", "factor": 4.0}, (("scaling", "linear"), ("factor", 4.0))),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
     (("scaling", "yarn"), ("factor", 4.0), ("original_max_seq_len", 16))),
    ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "beta_fast": 16.0, "beta_slow": 2.0},
     (("scaling", "yarn"), ("factor", 8.0), ("original_max_seq_len", 32), ("beta_fast", 16.0), ("beta_slow", 2.0))),
], ids=["pi", "yarn", "yarn-betas"])
def test_scaled_rope_equals_transformers(rope, kwargs):
    hf_cfg = _hf_config(rope=rope)
    inv_freq, scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf_cfg)
    ours = RoPE(DecoderConfig(d_model=64, n_heads=4, max_seq_len=64), **dict(kwargs))
    assert ours.attention_scaling == pytest.approx(scale, rel=0, abs=0)
    hf_cos, hf_sin = LlamaRotaryEmbedding(hf_cfg)(torch.zeros(1), torch.arange(64)[None])
    torch.testing.assert_close(ours.cos, hf_cos[0, :, :8], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.sin, hf_sin[0, :, :8], atol=1e-6, rtol=0)
    assert torch.equal(ours.inv_freq, inv_freq)
    hf, m = llama_pair(rope=rope, position_kwargs=kwargs, max_len=64)
    ids = torch.randint(0, 97, (2, 60))
    with torch.no_grad():
        torch.testing.assert_close(m(ids).logits, hf(ids).logits, atol=2e-5, rtol=1e-5)


def test_base_change_and_position_ids():
    hf, m = llama_pair(theta=5e5)  # ABF: a larger base
    ids = torch.randint(0, 97, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(m(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)
        # explicit position ids (left padding) and an offset are the same positions as transformers'
        pos = torch.arange(30)[None].expand(2, 30) + torch.tensor([[0], [5]])
        torch.testing.assert_close(m(ids, position_ids=pos).logits, hf(ids, position_ids=pos).logits,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m(ids, pos_offset=5).logits[1], hf(ids, position_ids=pos).logits[1],
                                   atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="exceeds max_seq_len"):
            m(ids, pos_offset=40)
