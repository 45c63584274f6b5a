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
