"""A transformers LlamaForCausalLM and our Decoder with the same weights (built offline from a local LlamaConfig)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from replicate.models.decoder import Decoder, DecoderConfig, from_llama_state_dict


def llama_pair(n_kv_heads: int = 4, n_layers: int = 2, vocab: int = 97, d: int = 64, n_heads: int = 4,
               d_ff: int = 136, max_len: int = 64, theta: float = 10000.0, rope: dict | None = None,
               position_kwargs: tuple = (), attention: str = "sdpa", seed: int = 0):
    """(hf, ours), both in eval mode. ``rope``: transformers' ``rope_parameters`` beyond the base."""
    torch.manual_seed(seed)
    hf_cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=d_ff, num_hidden_layers=n_layers,
                         num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, max_position_embeddings=max_len,
                         rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": theta, **(rope or {})},
                         tie_word_embeddings=False, attention_bias=False, mlp_bias=False, bos_token_id=None,
                         eos_token_id=None, pad_token_id=None)
    hf = LlamaForCausalLM(hf_cfg).eval()
    ours = Decoder(DecoderConfig(vocab_size=vocab, d_model=d, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                                 d_ff=d_ff, max_seq_len=max_len, rope_theta=theta, position_kwargs=position_kwargs,
                                 attention=attention)).eval()
    from_llama_state_dict(ours, hf.state_dict())
    return hf, ours
