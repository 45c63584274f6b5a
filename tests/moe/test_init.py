"""Every weight of a decoder follows DecoderConfig.init_std, MoE parts included: stacked expert weights, routers,
gates, shared experts and every new part. Exceptions (stated): norm gains are 1, biases 0, a part built with its own
``init_std`` / ``gate_init_std`` keeps it (0 = zeros: Finedeep's R = 0 ablation)."""

import pytest
import torch

from replicate.models import Decoder, DecoderConfig, LayerSpec

D = 64
KINDS = {
    "swiglu": LayerSpec(),
    "moe_topk_shared_gate": LayerSpec(ffn="moe", d_ff=48, ffn_kwargs=(("n_experts", 8), ("k", 2), ("d_shared", 48))),
    "moe_shared_add": LayerSpec(ffn="moe", d_ff=48, ffn_kwargs=(("d_shared", 48), ("shared_mix", "add"))),
    "moe_topp": LayerSpec(ffn="moe", d_ff=48, ffn_kwargs=(("router", "topp"),)),
    "moe_hash": LayerSpec(ffn="moe", d_ff=48, ffn_kwargs=(("router", "hash"), ("vocab_size", 50))),
    "sigmoid_threshold": LayerSpec(ffn="sigmoid_moe", d_ff=256, ffn_kwargs=(("n_experts", 8),)),
    "sigmoid_input": LayerSpec(ffn="sigmoid_moe", d_ff=256, ffn_kwargs=(("n_experts", 8), ("gate", "input"))),
    "finedeep_stack": LayerSpec(ffn="stack", d_ff=128, ffn_kwargs=(("n", 2), ("sub", "sigmoid_moe"), (
        "sub_kwargs", (("n_experts", 4), ("gate", "output")))),),
    "cartesian_stack": LayerSpec(ffn="stack", d_ff=32, ffn_kwargs=(("n", 2), ("sub", "moe"), (
        "sub_kwargs", (("n_experts", 8), ("k", 2), ("d_shared", 32)))),),
    "attention_variants": LayerSpec(attention="reuse_probs", attention_kwargs=(("probs_from", 0),)),
    "kv_sharing": LayerSpec(attention_kwargs=(("kv_from", 0),)),
    "cross": LayerSpec(attention="cross"),
}


def _check_std(model, std):
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith(".bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:  # N(0, std): the sample std within ~4 standard errors
            n = p.numel()
            tol = 4 / (2 * n) ** 0.5
            assert abs(p.std().item() / std - 1) < tol, f"{name}: std {p.std().item():.4f} vs {std} (n={n})"
            assert abs(p.mean().item()) < 4 * std / n**0.5, name


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("std", [0.02, 0.05])
def test_every_parameter_follows_the_decoder_init(kind, std):
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=50, d_model=D, n_layers=2, n_heads=4, d_ff=172, max_seq_len=16, init_std=std,
                        layers={1: KINDS[kind]})
    _check_std(Decoder(cfg), std)


def test_experts_match_the_dense_ffn_std_at_d_128():
    """The confound the issue names: experts once kept nn.Linear's default, ~2.5x the dense FFN's std at d 128."""
    torch.manual_seed(0)
    cfg = DecoderConfig(d_model=128, n_layers=2, layers={1: LayerSpec(ffn="moe", d_ff=344)})
    m = Decoder(cfg)
    dense = m.layers[0].ffn.gate_proj.weight.std().item()
    experts = m.layers[1].ffn.experts.w_gate_EDF.std().item()
    assert experts / dense == pytest.approx(1.0, abs=0.02)


def test_an_explicit_part_std_is_kept():
    torch.manual_seed(0)
    layers = {0: LayerSpec(ffn="moe", d_ff=48, ffn_kwargs=(("init_std", 0.1),)),
              1: LayerSpec(ffn="sigmoid_moe", d_ff=256, ffn_kwargs=(("gate", "output"), ("gate_init_std", 0.0)))}
    m = Decoder(DecoderConfig(vocab_size=50, d_model=D, n_layers=2, n_heads=4, max_seq_len=16, layers=layers))
    assert m.layers[0].ffn.experts.w_up_EDF.std().item() == pytest.approx(0.1, rel=0.05)
    assert m.layers[0].ffn.router.weight.std().item() == pytest.approx(0.1, rel=0.2)
    assert torch.equal(m.layers[1].ffn.gate.weight, torch.zeros(8, D))  # R = 0: every score exactly 0.5
