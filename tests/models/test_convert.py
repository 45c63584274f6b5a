"""Dense FFN -> partitioned experts as a whole-decoder conversion (the start of DSMoE / LLaMA-MoE continued runs)."""

import pytest
import torch

from replicate.models import Decoder, DecoderConfig
from replicate.models.convert import mha_to_gqa, partition_ffn
from replicate.moe import MoE, SigmoidGatedMoE


def _dense():
    torch.manual_seed(0)
    return Decoder(DecoderConfig(vocab_size=61, d_model=32, n_layers=3, n_heads=4, d_ff=48, max_seq_len=32)).eval()


def test_partition_with_no_gate_computes_what_the_dense_model_computed():
    dense = _dense()
    state = torch.random.get_rng_state()
    moe = partition_ffn(dense, 4, ffn_kwargs=(("gate", "none"),)).eval()
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream did not move
    assert all(isinstance(b.ffn, SigmoidGatedMoE) and b.ffn.experts.w_gate_EDF.shape == (4, 32, 12) for b in moe.layers)
    ids = torch.randint(0, 61, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, dense(ids).logits, atol=1e-5, rtol=1e-5)
    assert all(isinstance(b.ffn, type(dense.layers[0].ffn)) for b in dense.layers)  # the input is untouched


def test_partition_into_routed_experts_of_some_layers():
    dense = _dense()
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(1))
    moe = partition_ffn(dense, 4, kind="moe", ffn_kwargs=(("k", 4), ("renormalize", False)), layers=(1,), perm=perm)
    assert isinstance(moe.layers[1].ffn, MoE) and moe.layers[1].ffn.experts.w_up_EDF.shape == (4, 32, 12)
    assert moe.cfg.layer(1).d_ff == 12 and moe.cfg.layer(0).ffn == "swiglu"
    # every expert at weight 1 sums back to the dense FFN
    x = torch.randn(5, 32)
    bank = moe.layers[1].ffn.experts
    torch.testing.assert_close(bank.all_outputs(x).sum(1), dense.layers[1].ffn(x), atol=1e-6, rtol=1e-5)
    assert torch.equal(moe.layers[0].ffn.up_proj.weight, dense.layers[0].ffn.up_proj.weight)
    with pytest.raises(ValueError, match="not 'swiglu'"):
        partition_ffn(moe, 2, layers=(1,))


def test_conversions_compose():
    gqa = mha_to_gqa(_dense(), 2)
    out = partition_ffn(gqa, 2)
    assert out.cfg.kv_heads == 2 and out.cfg.layer(2).ffn == "sigmoid_moe"


def test_state_dict_forms_follow_the_trainers_conversion_protocol():
    """f(parent_state, target) -> state for the target, keys prefixed as a LightningModule's (``model.``)."""
    from replicate.models.convert import gqa_config, gqa_state, partition_config, partition_state

    dense = _dense()
    parent = {"model." + k: v for k, v in dense.state_dict().items()}
    target = Decoder(partition_config(gqa_config(dense.cfg, 2), 4, ffn_kwargs=(("gate", "none"),))).eval()
    fresh_gate_free = {k: v.clone() for k, v in target.state_dict().items()}
    state = partition_state(gqa_state(parent, target), target)
    assert set(state) == {"model." + k for k in fresh_gate_free}
    target.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    assert torch.equal(target.layers[0].ffn.experts.w_gate_EDF[1], dense.layers[0].ffn.gate_proj.weight[12:24].T)
    assert torch.equal(target.layers[2].attn.qkv_proj.weight[:32], dense.layers[2].attn.qkv_proj.weight[:32])


def test_attention_surgery_from_one_trained_base():
    """CLA (K/V reuse), Softmax unification (probability reuse) and LLMDrop (no attention) start from the base."""
    from replicate.models import LayerSpec
    from replicate.models.convert import attention_state

    base = _dense()
    cfg = DecoderConfig(vocab_size=61, d_model=32, n_layers=3, n_heads=4, d_ff=48, max_seq_len=32, layers={
        0: LayerSpec(attention="none"),
        2: LayerSpec(attention_kwargs=(("kv_from", 1),))})
    target = Decoder(cfg)
    state = attention_state(base.state_dict(), target)
    target.load_state_dict(state)
    qkv = base.layers[2].attn.qkv_proj.weight
    assert torch.equal(target.layers[2].attn.q_proj.weight, qkv[:32])
    assert torch.equal(target.layers[1].attn.qkv_proj.weight, base.layers[1].attn.qkv_proj.weight)
    assert torch.equal(target.layers[0].ffn.up_proj.weight, base.layers[0].ffn.up_proj.weight)
    assert not any(k.startswith("layers.0.attn") for k in state)
    uni = Decoder(DecoderConfig(vocab_size=61, d_model=32, n_layers=3, n_heads=4, d_ff=48, max_seq_len=32, layers={
        2: LayerSpec(attention="reuse_probs", attention_kwargs=(("probs_from", 1),))}))
    uni.load_state_dict(attention_state(base.state_dict(), uni))
    assert torch.equal(uni.layers[2].attn.v_proj.weight, qkv[64:])
