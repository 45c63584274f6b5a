"""One shipped corpus made ready for language modelling, as every LM paper starts: documents (optionally cut),
a split into training and held-out documents, a byte-level BPE trained on the training documents only, both sides
encoded, and the training stream (documents joined by EOS).

``description`` fixes the data for run keys: the corpus, the cut, the split, the tokenizer's fingerprint and the
training documents' fingerprint (a different tokenizer or split is a different run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from replicate.data import corpora, lm, tokenizer
from replicate.data.evaluation import cut_text


@dataclass(frozen=True)
class LMText:
    tok: object  # the trained tokenizers.Tokenizer
    n_ids: int  # its vocabulary (the model's embedding rows)
    eos_id: int
    train_docs: tuple
    held_docs: tuple
    train_ids: list  # per training document
    held_ids: list  # per held-out document
    stream: np.ndarray  # the training documents joined by EOS
    description: str


def lm_text(corpus: str, vocab_size: int, heldout_fraction: float, doc_max_bytes: int = 0, *,
            name: str) -> LMText:
    """``corpus`` (``replicate.data.corpora.load``) with every document cut to ``doc_max_bytes`` at a line end (0:
    whole), whole documents held out by ``heldout_fraction``, and a BPE of ``vocab_size`` cached as ``name``."""
    docs = corpora.load(corpus)
    if doc_max_bytes:
        docs = tuple(corpora.Document(d.name, cut_text(d.text, doc_max_bytes)) for d in docs)
    train_docs, held_docs = corpora.split(docs, heldout_fraction)
    tok = tokenizer.train_bpe(train_docs, vocab_size, name=name)
    eos = tok.token_to_id(tokenizer.EOS)
    train_ids = tokenizer.encode_documents(tok, train_docs)
    held_ids = tokenizer.encode_documents(tok, held_docs)
    desc = (f"corpus={corpus};cut={doc_max_bytes};held={heldout_fraction};"
            f"tok=bpe{vocab_size}:{tokenizer.tokenizer_fingerprint(tok)};train={corpora.fingerprint(train_docs)}")
    return LMText(tok, tok.get_vocab_size(), eos, train_docs, held_docs, train_ids, held_ids,
                  lm.join(train_ids, eos), desc)
