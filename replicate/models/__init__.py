"""The decoder (swappable attention / position / FFN parts), the causal-LM LightningModule and the trainer."""

from replicate.models.decoder import ATTENTION, POSITION, Decoder, DecoderConfig, DecoderOutput
from replicate.models.ffn import FFN_REGISTRY, SwiGLU, build_ffn, register_ffn
from replicate.models.lm import CausalLM, OptimConfig, lr_at

__all__ = ["ATTENTION", "POSITION", "Decoder", "DecoderConfig", "DecoderOutput", "FFN_REGISTRY", "SwiGLU",
           "build_ffn", "register_ffn", "CausalLM", "OptimConfig", "lr_at"]
