"""Byte-level BPE trained with Hugging Face ``tokenizers``, cached by corpus and vocabulary size.

The tokenizer is GPT-2's recipe: the ByteLevel pre-tokenizer (GPT-2 regex, no prefix space), BPE over the 256
byte symbols, a ByteLevel decoder, and one special token ``<|endoftext|>`` (id 0) that separates documents.
:func:`as_transformers` wraps it as a ``transformers`` fast tokenizer, so any model code can use it.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from replicate.data.corpora import Document, fingerprint
from replicate.paths import cache_dir

EOS = "<|endoftext|>"


def train_bpe(docs: tuple[Document, ...], vocab_size: int, *, name: str = "corpus") -> Tokenizer:
    """A byte-level BPE with ``vocab_size`` tokens trained on ``docs``; cached under ``runs/cache/tokenizers``."""
    if vocab_size < 257:
        raise ValueError(f"vocab_size: must be >= 257 (256 bytes + {EOS}), got {vocab_size}")
    path = cache_dir("tokenizers") / f"{name}-v{vocab_size}-{fingerprint(docs)}.json"
    if path.exists():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as e:  # a corrupt cache file is reported in one line and rebuilt
            from replicate.io import discard_corrupt

            discard_corrupt(path, e)
    tok = bpe_from_texts([d.text for d in docs], vocab_size)
    from replicate.io import atomic_write

    atomic_write(path, lambda p: tok.save(str(p)))
    return tok


def bpe_from_texts(texts, vocab_size: int) -> Tokenizer:
    """The project's byte-level BPE recipe trained by HF's ``BpeTrainer`` on ``texts``, uncached."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(texts)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def as_transformers(tok: Tokenizer):
    """The tokenizer as a ``transformers.PreTrainedTokenizerFast`` (EOS doubles as the padding token)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    import hashlib

    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def encode_documents(tok: Tokenizer, docs: tuple[Document, ...], encoder=None, encoder_name: str = "bpe") -> list[np.ndarray]:
    """Each document's token ids (uint16 when the vocabulary allows), cached on disk by tokenizer, encoder and
    corpus. ``encoder`` (texts -> lists of ids) replaces the tokenizer's own BPE encoding, e.g. LBPE's."""
    from replicate.io import atomic_write

    path = cache_dir("tokens") / f"{tokenizer_fingerprint(tok)}-{encoder_name}-{fingerprint(docs)}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return [z[f"d{i}"] for i in range(len(docs))]
        except Exception as e:  # a corrupt cache file is reported in one line and rebuilt
            from replicate.io import discard_corrupt

            discard_corrupt(path, e)
    dtype = np.uint16 if tok.get_vocab_size() <= 65536 else np.int32
    texts = [d.text for d in docs]
    ids = encoder(texts) if encoder is not None else [e.ids for e in tok.encode_batch(texts)]
    encoded = [np.asarray(i, dtype=dtype) for i in ids]
    atomic_write(path, lambda p: np.savez(open(p, "wb"), **{f"d{i}": a for i, a in enumerate(encoded)}))
    return encoded
