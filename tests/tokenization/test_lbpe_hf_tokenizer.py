"""``LBPETokenizer``: a ``transformers`` tokenizer backed by LBPE, so the same model code trains on either encoding.

With ``mode="bpe"`` it must give the ids of ``PreTrainedTokenizerFast`` on the same ``tokenizers.Tokenizer``;
with LBPE the ids are the encoder's; padding, truncation, tensors and save/load work as for any HF tokenizer.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from replicate.papers.lbpe import LBPEEncoder, LBPETokenizer

EOT = "<|endoftext|>"
BATCH = [
    "To be, or not to be: that is the question.",
    "Whereof one cannot speak, thereof one must be silent.",
    "Hello" + EOT + "world  ",
    "naïve — 日本",
    "",
]


@pytest.fixture(scope="module")
def fast(bpe_tok):
    return PreTrainedTokenizerFast(tokenizer_object=bpe_tok, pad_token=EOT)


@pytest.fixture(scope="module")
def as_bpe(bpe_tok):
    return LBPETokenizer(tokenizer_object=bpe_tok, mode="bpe", pad_token=EOT)


@pytest.fixture(scope="module")
def as_lbpe(bpe_tok):
    return LBPETokenizer(tokenizer_object=bpe_tok, pad_token=EOT)


def test_bpe_mode_matches_fast_tokenizer_call(fast, as_bpe):
    kw = dict(padding=True, truncation=True, max_length=9, return_tensors="pt")
    a, b = fast(BATCH, **kw), as_bpe(BATCH, **kw)
    assert set(b.keys()) == {"input_ids", "attention_mask"}
    assert isinstance(b["input_ids"], torch.Tensor) and b["input_ids"].shape == (len(BATCH), 9)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"], b["attention_mask"])
    assert b["attention_mask"][-1].sum() == 0  # the empty text is all padding


def test_bpe_mode_matches_fast_tokenizer_on_play(fast, as_bpe, held_out_text):
    text = held_out_text[:20_000]
    assert as_bpe.encode(text) == fast.encode(text)
    assert as_bpe.tokenize(text) == fast.tokenize(text)
    assert as_bpe.decode(as_bpe.encode(text)) == fast.decode(fast.encode(text)) == text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_bpe_mode_matches_fast_tokenizer_arbitrary_unicode(fast, as_bpe, text):
    assert as_bpe.encode(text) == fast.encode(text)


def test_lbpe_call_pads_truncates_and_uses_the_lbpe_ids(as_lbpe, bpe_tok):
    enc = LBPEEncoder(bpe_tok)
    out = as_lbpe(BATCH, padding=True, truncation=True, max_length=12)
    pad = as_lbpe.pad_token_id
    assert pad == bpe_tok.token_to_id(EOT)
    for text, ids, mask in zip(BATCH, out["input_ids"], out["attention_mask"]):
        want = enc.encode(text)[:12]
        assert len(ids) == len(mask) == max(len(i) for i in out["input_ids"])  # padded to the longest
        assert ids[: len(want)] == want and mask == [1] * len(want) + [0] * (len(ids) - len(want))
        assert ids[len(want) :] == [pad] * (len(ids) - len(want))
    left = as_lbpe(BATCH[:2], padding="max_length", max_length=20, padding_side="left", return_tensors="pt")
    assert left["input_ids"].shape == (2, 20) and left["attention_mask"][:, -1].all()
    assert left["input_ids"][0, -1].item() == enc.encode(BATCH[0])[-1]


def test_lbpe_encode_decode_round_trip_and_differs_from_bpe(as_lbpe, as_bpe, held_out_text):
    text = held_out_text[:20_000]
    ids = as_lbpe.encode(text)
    assert as_lbpe.decode(ids) == text
    assert set(ids) <= set(range(as_lbpe.vocab_size))
    assert ids != as_bpe.encode(text)
    assert as_lbpe.vocab_size == as_bpe.vocab_size == len(as_lbpe) == len(as_lbpe.get_vocab())


def test_special_tokens_and_skip(as_lbpe):
    ids = as_lbpe.encode("Hello" + EOT + "world")
    assert ids.count(as_lbpe.pad_token_id) == 1
    assert as_lbpe.decode(ids) == "Hello" + EOT + "world"
    assert as_lbpe.decode(ids, skip_special_tokens=True) == "Helloworld"


def test_save_and_load(as_lbpe, bpe_tok, tmp_path):
    merge = LBPETokenizer(tokenizer_object=bpe_tok, mode="merge", tie_break="leftmost", pad_token=EOT)
    for tok in (as_lbpe, merge):
        folder = tmp_path / tok.mode
        tok.save_pretrained(folder)
        again = LBPETokenizer.from_pretrained(folder)
        assert again.mode == tok.mode and again.pad_token == EOT
        text = "Thou art more lovely and more temperate"
        assert again.encode(text) == tok.encode(text)
    text = "Shall I compare thee to a summer's day?"
    assert merge.encode(text) == LBPEEncoder(bpe_tok, mode="merge").encode(text)


def test_bad_construction(bpe_tok):
    with pytest.raises(ValueError, match="tokenizer_object"):
        LBPETokenizer()
    with pytest.raises(ValueError, match="mode"):
        LBPETokenizer(tokenizer_object=bpe_tok, mode="greedy")
