"""The decoder (swappable attention / position / FFN parts), the causal-LM LightningModule and the trainer."""

from replicate.models.attention import CrossAttention, register_attention
from replicate.models.context import ForwardContext, TensorRef, tensor_ref
from replicate.models.decoder import (
    ATTENTION, POSITION, Decoder, DecoderConfig, DecoderOutput, Encoder, LayerSpec, RMSNorm, RoPE,
)
from replicate.models.ffn import FFN_REGISTRY, SubLayerStack, SwiGLU, build_ffn, register_ffn
from replicate.models.generate import KVCache, generate
from replicate.models.lm import CausalLM, OptimConfig, lr_at
from replicate.models.position import register_position

__all__ = ["ATTENTION", "POSITION", "CrossAttention", "Decoder", "DecoderConfig", "DecoderOutput", "Encoder",
           "FFN_REGISTRY", "ForwardContext", "KVCache", "LayerSpec", "RMSNorm", "RoPE", "SubLayerStack", "SwiGLU",
           "TensorRef", "build_ffn", "generate", "register_attention", "register_ffn", "register_position",
           "tensor_ref", "CausalLM", "OptimConfig", "lr_at"]
