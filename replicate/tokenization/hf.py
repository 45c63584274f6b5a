"""A ``transformers`` tokenizer over any of our word encoders, so the same model code trains on any encoding.

``WordEncoderTokenizer`` is a slow (Python) ``transformers.PreTrainedTokenizer`` over the vocabulary of a trained
byte-level HF BPE whose ``_tokenize`` runs a word-cached encoder (``replicate.tokenization.words``). A subclass
names its encoder factory and the encoder's options (LBPE's ``LBPETokenizer`` in ``replicate.papers.lbpe``:
``options = {"mode": "scan", "tie_break": "leftmost"}``); the base class itself is our rank BPE, with the same ids
as ``PreTrainedTokenizerFast`` on the same ``tokenizers.Tokenizer``.

Vocabulary, ids, special tokens and decoding are the BPE tokenizer's, unchanged, so ``encode`` / ``decode`` /
``__call__`` (padding, truncation, ``return_tensors``) behave as for any HF tokenizer. ``save_pretrained`` writes
the underlying BPE (``bpe_tokenizer.json``) plus the encoder's options in ``tokenizer_config.json``;
``<Class>.from_pretrained(folder)`` reads them back.
"""

from __future__ import annotations

import os

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizer

from replicate.tokenization.words import BPEEncoder

__all__ = ["WordEncoderTokenizer"]

TOKENIZER_FILE = "bpe_tokenizer.json"


class WordEncoderTokenizer(PreTrainedTokenizer):
    """``transformers`` tokenizer whose segmentation is a word encoder over a byte-level HF BPE vocabulary.

    Args:
        vocab_file: path of a saved ``tokenizers.Tokenizer`` (its ``tokenizer.json``); or
        tokenizer_object: the trained ``tokenizers.Tokenizer`` itself (byte-level BPE).
        the encoder's options (``options``: name -> default), e.g. ``mode`` / ``tie_break`` for LBPE;
        bos_token / eos_token / pad_token / unk_token: as for any HF tokenizer (e.g. ``pad_token="<|endoftext|>"``).
    """

    vocab_files_names = {"vocab_file": TOKENIZER_FILE}  # ("tokenizer_file" is reserved for fast tokenizers)
    model_input_names = ["input_ids", "attention_mask"]
    options: dict = {}  # the encoder's options and their defaults (saved with the tokenizer)

    @staticmethod
    def build_encoder(tokenizer_object: Tokenizer, **options):
        """The word encoder for ``tokenizer_object`` (subclasses: their own encoder factory)."""
        return BPEEncoder(tokenizer_object)

    def __init__(
        self,
        vocab_file: str | None = None,
        tokenizer_object: Tokenizer | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        **kwargs,
    ):
        if tokenizer_object is None:
            if vocab_file is None:
                raise ValueError("give tokenizer_object (a trained tokenizers.Tokenizer) or vocab_file")
            tokenizer_object = Tokenizer.from_file(vocab_file)
        opts = {k: kwargs.pop(k, default) for k, default in self.options.items()}
        self.backend_tokenizer_bpe = tokenizer_object
        self.encoder = self.build_encoder(tokenizer_object, **opts)
        for k, v in opts.items():
            setattr(self, k, v)
        self._vocab: dict[str, int] = tokenizer_object.get_vocab(with_added_tokens=True)
        self._id_to_token = self.encoder.id_to_token
        kwargs.setdefault("clean_up_tokenization_spaces", False)  # decode gives the bytes back, as ByteLevel does
        super().__init__(
            **opts,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            unk_token=unk_token,
            **kwargs,
        )

    # -- vocabulary --------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.encoder.vocab_size

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self._vocab)
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _convert_token_to_id(self, token: str) -> int:
        i = self._vocab.get(token)
        if i is None:
            return self.unk_token_id if self.unk_token is not None else None  # type: ignore[return-value]
        return i

    def _convert_id_to_token(self, index: int) -> str:
        return self._id_to_token[index]

    # -- segmentation and decoding -------------------------------------------------------------------------------
    def _tokenize(self, text: str, **kwargs) -> list[str]:
        """ByteLevel token strings of ``text`` (a piece between added tokens), from the word encoder."""
        ids = self.encoder.encode(text)
        return [self._id_to_token[i] for i in ids]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        vocab, idb = self._vocab, self.encoder.id_bytes
        out = b"".join(idb[vocab[t]] if t in vocab else t.encode("utf-8") for t in tokens)
        return out.decode("utf-8", errors="replace")

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + TOKENIZER_FILE)
        self.backend_tokenizer_bpe.save(path)
        return (path,)
