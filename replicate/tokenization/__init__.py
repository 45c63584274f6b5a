"""Tokenization beyond HF ``tokenizers``: pure-Python byte-level BPE encoders, Scaffold-BPE, token analyses.

- ``replicate.tokenization.words``: ``WordEncoder`` (HF-identical word splitting, word cache, vocabulary tables),
  ``BPEEncoder`` (rank BPE, HF's ids) and the reference ``bpe_encode_word``: what a tokenizer paper's encoder
  builds on (LBPE's lives in ``replicate.papers.lbpe``).
- ``replicate.tokenization.scaffold``: Scaffold-BPE (arXiv 2404.17808): training with scaffold tokens (cached, HF
  ``tokenizers`` output) and the encoder that never emits them (rank BPE + demolish).
- ``replicate.tokenization.hf``: ``WordEncoderTokenizer``, a ``transformers`` tokenizer over any word encoder.
- ``replicate.tokenization.analysis``: token-frequency, compression, loss-by-length and speed tables and plots.
"""

from replicate.tokenization.scaffold import (
    UNFLAGS,
    ScaffoldBPE,
    ScaffoldBPEEncoder,
    demolish,
    train_scaffold_bpe,
)
from replicate.tokenization.words import BPEEncoder, WordEncoder, bpe_encode_word, bytes_to_unicode

__all__ = ["UNFLAGS", "BPEEncoder", "ScaffoldBPE", "ScaffoldBPEEncoder", "WordEncoder", "bpe_encode_word",
           "bytes_to_unicode", "demolish", "train_scaffold_bpe"]
