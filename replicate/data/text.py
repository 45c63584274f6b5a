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


def stream_batches(stream: np.ndarray, batch_size: int, seq_len: int, seed: int) -> lm.Batches:
    """The training batches of one seed over a single stream: a pure function of (seed, step), so every variant
    trained with ``seed`` sees the same windows in the same order."""
    return lm.Batches((lm.Stream(stream),), (1.0,), batch_size, seq_len, seed)


@dataclass(frozen=True)
class LMData:
    """What an LM paper's ``data`` step returns: the tokenizer and training stream of :class:`LMText`, fixed held-out
    windows, and the count models of validity (``replicate.data.ngram``) on those windows."""

    tok: object
    n_ids: int
    stream: np.ndarray  # the training documents joined by EOS
    windows: "torch.Tensor"  # (W, T+1) fixed held-out windows
    unigram_nats: float  # held-out cross-entropy of the add-one unigram of the training split
    bigram_nats: float  # ... of the interpolated Kneser-Ney bigram of the whole training split (informational)
    seen_bigram_nats: dict  # seed -> ... of the Kneser-Ney bigram of exactly the windows a run of that seed trains on
    n_train_docs: int
    n_heldout_docs: int
    description: str


def lm_data(text: LMText, *, eval_windows: int, seq_len: int, batch_size: int, steps: int, seeds) -> LMData:
    """``text`` with ``eval_windows`` fixed held-out windows of ``seq_len`` + 1 tokens and the validity bars: the
    unigram of the training split, the Kneser-Ney bigram of the whole split, and one Kneser-Ney bigram per seed of
    ``seeds`` fitted on exactly the windows :func:`stream_batches` gives that seed over ``steps`` steps."""
    from replicate.data.ngram import count_bars

    windows = lm.eval_windows(text.held_ids, eval_windows, seq_len)
    unigram, bigram, seen = count_bars(text.stream, text.n_ids, windows,
                                       lambda s: stream_batches(text.stream, batch_size, seq_len, s), steps, seeds)
    return LMData(text.tok, text.n_ids, text.stream, windows, unigram, bigram, seen, len(text.train_docs),
                  len(text.held_docs), text.description)
