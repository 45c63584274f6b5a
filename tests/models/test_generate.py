"""Incremental decoding: cached logits equal full-forward logits at every step (standard, GQA, layers that store
no K or share K/V, a prefix of embeddings, chunked steps); greedy output equals transformers' generate on copied
weights; the cache reports its bytes."""

import sys
from pathlib import Path

import pytest
import torch

from replicate.models import Decoder, DecoderConfig, KVCache, LayerSpec, generate

sys.path.insert(0, str(Path(__file__).parent))
from llama_pair import llama_pair  # noqa: E402

CFG = dict(vocab_size=61, d_model=32, n_heads=4, d_ff=40, max_seq_len=48)
MIXED = {  # every way a layer can use the cache
    1: LayerSpec(attention="eager"),  # P materialised, exported to layer 2
    2: LayerSpec(attention="reuse_probs", attention_kwargs=(("probs_from", 1),)),  # stores V only
    3: LayerSpec(attention_kwargs=(("kv_from", 0),), ffn="moe", ffn_kwargs=(("n_experts", 4), ("k", 2))),  # no K/V
    4: LayerSpec(attention="none"),
}


def _model(n_kv=4, layers=None, n_layers=5):
    torch.manual_seed(0)
    return Decoder(DecoderConfig(n_layers=n_layers, n_kv_heads=n_kv, layers=layers or {}, **CFG)).eval()


@pytest.mark.parametrize("n_kv, layers", [(4, None), (2, None), (1, MIXED), (2, MIXED)],
                         ids=["mha", "gqa", "mqa-mixed", "gqa-mixed"])
def test_cached_logits_equal_full_forward_at_every_step(n_kv, layers):
    m = _model(n_kv, layers)
    ids = torch.randint(0, 61, (3, 20))
    with torch.no_grad():
        full = m(ids).logits
        cache = KVCache(m, batch_size=3, max_len=24)
        got = [m(ids[:, :8], cache=cache).logits]  # prefill
        got.append(m(ids[:, 8:11], cache=cache).logits)  # a chunk of 3: queries at positions 8..10
        for t in range(11, 20):  # then one token at a time
            got.append(m(ids[:, t : t + 1], cache=cache).logits)
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(got, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cached_decoding_after_a_prefix_of_embeddings():
    m = _model(2)
    ids = torch.randint(0, 61, (2, 14))
    prefix = torch.randn(2, 6, 32)
    with torch.no_grad():
        full = m(ids, prefix).logits
        cache = KVCache(m, batch_size=2)
        got = [m(ids[:, :4], prefix, cache=cache).logits]
        got += [m(ids[:, t : t + 1], cache=cache).logits for t in range(4, 14)]
    torch.testing.assert_close(torch.cat(got, dim=1), full, atol=1e-5, rtol=1e-5)
    out = generate(m, ids[:, :4], 5, prefix_embeds_BPD=prefix)
    assert torch.equal(out, generate(m, ids[:, :4], 5, prefix_embeds_BPD=prefix, use_cache=False))


@pytest.mark.parametrize("n_kv", [4, 2], ids=["mha", "gqa"])
def test_greedy_generation_equals_transformers(n_kv):
    hf, ours = llama_pair(n_kv_heads=n_kv, max_len=64)
    prompt = torch.randint(0, 97, (2, 7))
    prompt[0, 3] = 0  # an id equal to the pad id: transformers must not mask it (an explicit attention mask)
    mask = torch.ones_like(prompt)
    ref = hf.generate(prompt, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
    got = ours.generate(prompt, max_new_tokens=20)
    assert torch.equal(got, ref)
    # with an end-of-sequence id that occurs: finished rows continue with it, and decoding stops when all have
    eos = int(ref[0, 12])
    ref = hf.generate(prompt, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=eos,
                      pad_token_id=eos)
    got = generate(ours, prompt, 20, eos_id=eos)
    assert torch.equal(got, ref)


def test_generation_with_and_without_cache_agree_on_mixed_layers():
    m = _model(2, MIXED)
    prompt = torch.randint(0, 61, (2, 5))
    assert torch.equal(generate(m, prompt, 12), generate(m, prompt, 12, use_cache=False))


def test_cache_reports_its_bytes_and_skips_layers_that_store_nothing():
    B, L, hd = 2, 24, 8
    std = KVCache(_model(2), batch_size=B, max_len=L)
    per_tensor = B * 2 * L * hd * 4  # (B, H_kv, L, d) fp32
    assert std.nbytes == 5 * 2 * per_tensor and std.bytes_per_token == 5 * 2 * 2 * hd * 4
    mixed = KVCache(_model(2, MIXED), batch_size=B, max_len=L)
    # layer 0: K, V; layer 1: K, V; layer 2 (reuses P): V; layer 3 (reuses K/V): none; layer 4 (no attention): none
    assert sorted(mixed.k) == [0, 1] and sorted(mixed.v) == [0, 1, 2]
    assert mixed.nbytes == 5 * per_tensor
    with pytest.raises(ValueError, match="exceed max_len"):
        with torch.no_grad():
            _model(2)(torch.zeros(B, L + 1, dtype=torch.long), cache=std)


def test_generate_restores_training_mode():
    m = _model(2).train()
    generate(m, torch.zeros(1, 3, dtype=torch.long), 2)
    assert m.training
