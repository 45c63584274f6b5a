"""Tokenization beyond HF ``tokenizers``: LBPE (arXiv 2411.05504) and its analyses.

- ``replicate.tokenization.lbpe``: reference and word-cached encoders (rank BPE, LBPE scan, LBPE merge loop)
  over the vocabulary of a trained byte-level HF BPE.
- ``replicate.tokenization.scaffold``: Scaffold-BPE (arXiv 2404.17808): training with scaffold tokens (cached, HF
  ``tokenizers`` output) and encoders that never emit them (rank BPE + demolish; LBPE on a Scaffold-BPE vocabulary).
- ``replicate.tokenization.hf``: ``LBPETokenizer``, a ``transformers`` tokenizer backed by those encoders.
- ``replicate.tokenization.analysis``: token-frequency, compression, loss-by-length and speed tables and plots.
"""

from replicate.tokenization.lbpe import (
    MODES,
    TIE_BREAKS,
    BPEEncoder,
    LBPEEncoder,
    WordEncoder,
    bpe_encode_word,
    bytes_to_unicode,
    lbpe_encode_word,
    lbpe_merge_encode_word,
    make_encoder,
)
from replicate.tokenization.scaffold import (
    COMPOSES,
    ScaffoldBPE,
    ScaffoldBPEEncoder,
    ScaffoldLBPEEncoder,
    demolish,
    make_scaffold_encoder,
    train_scaffold_bpe,
)

__all__ = [
    "COMPOSES",
    "MODES",
    "TIE_BREAKS",
    "BPEEncoder",
    "LBPEEncoder",
    "ScaffoldBPE",
    "ScaffoldBPEEncoder",
    "ScaffoldLBPEEncoder",
    "WordEncoder",
    "bpe_encode_word",
    "bytes_to_unicode",
    "demolish",
    "lbpe_encode_word",
    "lbpe_merge_encode_word",
    "make_encoder",
    "make_scaffold_encoder",
    "train_scaffold_bpe",
]
