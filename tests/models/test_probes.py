"""Probes: off by default (no sink installed), record what they name, leave outputs bit-identical, clean up."""

import pytest
import torch

from replicate.models import Decoder, DecoderConfig, LayerSpec
from replicate.models.probes import Probed, capture, module_inputs

CFG = dict(vocab_size=61, d_model=32, n_heads=4, n_kv_heads=2, d_ff=40, max_seq_len=32)


def _model():
    torch.manual_seed(0)
    layers = {1: LayerSpec(ffn="moe", d_ff=16, ffn_kwargs=(("n_experts", 4), ("k", 2))),
              2: LayerSpec(ffn="sigmoid_moe", d_ff=32, ffn_kwargs=(("n_experts", 4), ("gate", "output"))),
              3: LayerSpec(attention="eager")}
    return Decoder(DecoderConfig(n_layers=4, layers=layers, **CFG)).eval()


def test_probes_are_off_by_default():
    m = _model()
    probed = [mod for mod in m.modules() if isinstance(mod, Probed)]
    assert len(probed) >= 4 + 4 + 2  # blocks, attentions, FFNs, MoE, expert banks
    assert all(mod._probe is None and "_probe" not in vars(mod) for mod in probed)


def test_capture_records_per_layer_tensors_and_changes_nothing():
    m = _model()
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        ref = m(ids).logits
        with capture(m, ["ffn_hidden", "router", "attn_probs", "resid_mid", "gate"]) as rec:
            got = m(ids).logits
            m(ids)
    assert torch.equal(got, ref)  # SDPA layers compute P beside their output, which stays SDPA's
    assert all("_probe" not in vars(mod) for mod in m.modules())  # removed on exit
    assert rec["layer0.ffn/ffn_hidden"][0].shape == (2, 9, 40) and len(rec["layer0.ffn/ffn_hidden"]) == 2
    assert rec["layer2.ffn.experts/ffn_hidden"][0].shape == (18, 32)  # (T, E * F): every expert's intermediate
    assert rec["layer1.ffn/router"][0].shape == (18, 2) and rec["layer2.ffn/gate"][0].shape == (18, 4)
    assert sorted(rec.by_layer("attn_probs")) == [0, 1, 2, 3]
    p = rec["layer0.attn/attn_probs"][0]
    assert p.shape == (2, 4, 9, 9)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 9))
    torch.testing.assert_close(rec.cat("layer3/resid_mid"), torch.cat(rec["layer3/resid_mid"]))
    assert not any(k.endswith("/router_probs") for k in rec.keys())  # only what was asked


def test_capture_reduces_on_the_fly_and_rejects_unknown_names():
    m = _model()
    with capture(m, ["ffn_hidden"], fn=lambda key, t: (t.abs() > 0.01).float().mean().item()) as rec:
        with torch.no_grad():
            m(torch.randint(0, 61, (2, 9)))
    assert all(isinstance(v[0], float) and 0 <= v[0] <= 1 for v in rec.data.values())
    with pytest.raises(ValueError, match="not emitted by this model"):
        with capture(m, ["nope"]):
            pass


def test_module_inputs_are_what_each_module_receives_over_chunks():
    m = _model()
    windows = torch.randint(0, 61, (5, 10))  # (W, T+1): inputs [:, :-1], 5 windows in chunks of 2
    ffns = [b.ffn for b in m.layers]
    got = module_inputs(m, ffns, windows, chunk=2)
    with torch.no_grad(), capture(m, ["resid_mid"]) as rec:
        ref_logits = m(windows[:, :-1]).logits
    for i, b in enumerate(m.layers):  # the FFN's input is the normed mid-block stream
        want = b.ffn_norm(rec[f"layer{i}/resid_mid"][0]).reshape(-1, 32)
        assert got[i].shape == (5 * 9, 32)
        torch.testing.assert_close(got[i], want)
    sums = module_inputs(m, ffns[:1], windows, chunk=2, fn=lambda i, mod, x: x.sum(-1))
    torch.testing.assert_close(sums[0], got[0].sum(-1))
    assert not any(mod._forward_pre_hooks for mod in ffns)  # hooks removed
    with torch.no_grad():
        assert torch.equal(m(windows[:, :-1]).logits, ref_logits)
