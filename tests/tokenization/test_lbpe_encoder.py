"""LBPE encoder (arXiv 2411.05504) on the exact vocabulary of an HF byte-level BPE.

- our rank BPE reproduces HF's Rust encoder exactly (real text, prefix-space / missing-unit / unk variants,
  arbitrary Unicode);
- LBPE (both readings, both tie-breaks) decodes back to the input byte for byte and emits only ids of V;
- the fast encoders equal the spec's reference functions (Sec. 3.4, Sec. 7 test 5), the longest-first invariant
  holds (Sec. 7 test 3), and the spec's toy fixtures give the worked segmentations (Sec. 7 test 4).
"""

import string
from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from replicate.papers.lbpe import LBPEEncoder, lbpe_encode_word, lbpe_merge_encode_word, make_encoder
from replicate.tokenization.words import FAST_PRETOKENIZE_RANGES, BPEEncoder, bpe_encode_word, bytes_to_unicode

EOT = "<|endoftext|>"  # the special token of the conftest tokenizers

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ALL_VARIANTS = [("bpe", "leftmost"), ("scan", "leftmost"), ("scan", "rank"), ("merge", "leftmost")]


def hand_tokenizer(merges: list[tuple[str, str]], add_prefix_space=False) -> Tokenizer:
    """A byte-level HF BPE built by hand: the 256 byte units, then the given merges in rank order."""
    alphabet = sorted(bytes_to_unicode().values())
    vocab = {u: i for i, u in enumerate(alphabet)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    return tok


def words_of(enc, text):
    return [w for w in enc.words(text) if isinstance(w, str)]


# ---- our BPE == HF's Rust BPE -----------------------------------------------------------------------------------
@pytest.mark.parametrize("pretokenizer", ["auto", "hf"])
def test_reference_bpe_equals_hf_on_plays(bpe_tok, train_texts, held_out_text, pretokenizer):
    enc = BPEEncoder(bpe_tok, pretokenizer=pretokenizer)
    for text in [held_out_text, train_texts[0][:50_000]]:
        assert enc.encode(text) == bpe_tok.encode(text, add_special_tokens=False).ids


def test_fast_path_is_used_and_hf_path_is_not(bpe_tok, held_out_text):
    fast, slow = BPEEncoder(bpe_tok), BPEEncoder(bpe_tok, pretokenizer="hf")
    assert fast.pretokenizer == "auto" and slow.pretokenizer == "hf"
    fast.encode(held_out_text), slow.encode(held_out_text)
    assert fast._raw_cache and not fast._cache  # Shakespeare (ASCII + em dash) stays on the fast path
    assert slow._cache and not slow._raw_cache


def test_spec_bpe_function_equals_encoder_per_word(bpe_tok, held_out_text):
    enc = BPEEncoder(bpe_tok)
    for w in set(words_of(enc, held_out_text)):
        assert bpe_encode_word(list(w), enc.merge_ranks) == enc.tokenize_word(w)


@pytest.mark.parametrize("fixture", ["bpe_tok_prefix", "bpe_tok_partial", "bpe_tok_unk"])
def test_reference_bpe_equals_hf_variants(fixture, request, held_out_text):
    tok = request.getfixturevalue(fixture)
    texts = [
        held_out_text[:30_000],
        "Hello<|endoftext|>world",
        "  leading spaces, naïve café — 日本語 🎭 and\ttabs\n\n",
        "\nnewline first",
        "",
    ]
    for pretokenizer in ("auto", "hf"):
        enc = BPEEncoder(tok, pretokenizer=pretokenizer)
        for t in texts:
            assert enc.encode(t) == tok.encode(t, add_special_tokens=False).ids, (fixture, pretokenizer, t[:40])


@SETTINGS
@given(st.text())
def test_reference_bpe_equals_hf_arbitrary_unicode(bpe_tok, text):
    assert BPEEncoder(bpe_tok).encode(text) == bpe_tok.encode(text, add_special_tokens=False).ids


@SETTINGS
@given(st.text())
def test_reference_bpe_equals_hf_variants_arbitrary_unicode(bpe_tok_prefix, bpe_tok_partial, bpe_tok_unk, text):
    for tok in (bpe_tok_prefix, bpe_tok_partial, bpe_tok_unk):  # prefix space; dropped units; [UNK] units
        assert BPEEncoder(tok, cache_size=0).encode(text) == tok.encode(text, add_special_tokens=False).ids


# ---- fast pre-tokenization == HF's pre-tokenizer ------------------------------------------------------------
def test_fast_split_agrees_with_hf_on_every_code_point_in_its_ranges(bpe_tok):
    """The justification of FAST_PRETOKENIZE_RANGES: every code point in them splits as HF splits it."""
    enc = BPEEncoder(bpe_tok)
    table = enc._byte_table
    for lo, hi in FAST_PRETOKENIZE_RANGES:
        for cp in range(lo, hi + 1):
            c = chr(cp)
            s = "a" + c + " " + c + "1" + c + "!" + c + c + " " + c + "'s"
            fast = [w.encode("utf-8").decode("latin-1").translate(table) for w in enc._fast_split(s)]
            assert fast == [w for w, _ in bpe_tok.pre_tokenizer.pre_tokenize_str(s)], hex(cp)


def test_text_outside_fast_ranges_falls_back_to_hf(bpe_tok):
    # U+0559 is a letter for Unicode 16+ regex tables but not for HF's Oniguruma: the fast split would differ
    text = "ab\u0559cd 1\u0559"
    enc = BPEEncoder(bpe_tok)
    assert enc._unsafe_char(text) is not None
    assert enc.encode(text) == bpe_tok.encode(text, add_special_tokens=False).ids
    assert enc._cache and not enc._raw_cache


FAST_ALPHABET = st.characters(min_codepoint=0, max_codepoint=0x557, exclude_categories=("Cs",)) | st.characters(
    min_codepoint=0x2000, max_codepoint=0x206F
)


@pytest.fixture(scope="module")
def fast_hf_pairs(bpe_tok, bpe_tok_prefix):
    return [
        (make_encoder(tok, mode, pretokenizer="auto"), make_encoder(tok, mode, pretokenizer="hf"))
        for tok in (bpe_tok, bpe_tok_prefix)
        for mode in ("bpe", "scan")
    ]


@SETTINGS
@given(st.text(alphabet=FAST_ALPHABET) | st.text(alphabet=" \t\n'sdlmtrev1aZ!.,—"))
def test_fast_and_hf_pretokenizer_give_same_ids(fast_hf_pairs, text):
    for fast, hf in fast_hf_pairs:
        assert fast.encode(text) == hf.encode(text)


# ---- LBPE: round trip and vocabulary membership --------------------------------------------------------------
@pytest.mark.parametrize("mode,tie_break", ALL_VARIANTS)
def test_round_trip_and_membership_on_play(bpe_tok, held_out_text, mode, tie_break):
    enc = make_encoder(bpe_tok, mode, tie_break)
    ids = enc.encode(held_out_text)
    assert enc.decode_bytes(ids) == held_out_text.encode("utf-8")
    assert enc.decode(ids) == held_out_text
    assert set(ids) <= set(enc.vocab.values())  # only ids of V (no special, no unknown)


@pytest.fixture(scope="module")
def all_encoders(bpe_tok):
    return [make_encoder(bpe_tok, mode, tie_break) for mode, tie_break in ALL_VARIANTS]


@SETTINGS
@given(st.text())
def test_round_trip_and_membership_arbitrary_unicode(all_encoders, text):
    vocab_ids = set(all_encoders[0].vocab.values())
    for enc in all_encoders:
        ids = enc.encode(text)
        assert enc.decode_bytes(ids) == text.encode("utf-8")
        assert set(ids) <= vocab_ids or EOT in text


@SETTINGS
@given(st.text())
def test_prefix_space_tokenizer_units_preserved(bpe_tok_prefix, text):
    """With add_prefix_space the decoded text gains HF's leading space, and nothing else changes. (Text holding a
    special token's string is split there first, as HF does, so the prefix-space rule does not apply to it.)"""
    assume("<|endoftext|>" not in text)
    enc = LBPEEncoder(bpe_tok_prefix)
    out = enc.decode(enc.encode(text))
    assert out == (text if (not text or text.startswith(" ")) else " " + text)


@pytest.mark.parametrize("mode", ["scan", "merge"])
def test_lbpe_with_units_missing_from_vocab(bpe_tok_partial, bpe_tok_unk, mode):
    """V without some byte units: LBPE drops them (or emits [UNK] per unit) and encodes the runs around them."""
    text = "Sweet prince — 日本 rest naïve 🎭 café"
    drop = LBPEEncoder(bpe_tok_partial, mode=mode)
    assert not drop.covers_all_bytes
    b2u = bytes_to_unicode()
    missing = {b for b in range(256) if b2u[b] not in drop.vocab}
    kept = bytes(b for b in text.encode("utf-8") if b not in missing)
    assert kept != text.encode("utf-8")  # some units are missing
    assert drop.decode_bytes(drop.encode(text)) == kept
    assert set(drop.encode(text)) <= set(drop.vocab.values())
    unk = LBPEEncoder(bpe_tok_unk, mode=mode)
    ids = unk.encode(text)
    unk_id = bpe_tok_unk.token_to_id("[UNK]")
    n_missing = sum(b2u[b] not in unk.vocab for b in text.encode("utf-8"))
    assert n_missing > 0 and ids.count(unk_id) == n_missing  # fuse_unk=False: one [UNK] per unit
    known = [i for i in ids if i != unk_id]
    assert unk.decode_bytes(known) == bytes(b for b in text.encode("utf-8") if b2u[b] in unk.vocab)
    for w in words_of(unk, text):  # each run between missing units is the LBPE of that run
        runs, cur = [], ""
        for c in w:
            if c in unk.vocab:
                cur += c
            else:
                runs, cur = runs + [cur] if cur else runs, ""
        runs += [cur] if cur else []
        want = [t for r in runs for t in (unk._encode_units(r))]
        assert [unk.id_to_token[i] for i in unk.encode_word(w) if i != unk_id] == want


def test_special_tokens_pass_through(bpe_tok):
    enc = LBPEEncoder(bpe_tok)
    eot = bpe_tok.token_to_id(EOT)
    ids = enc.encode("To be" + EOT + "or not")
    assert ids.count(eot) == 1 and enc.decode(ids) == "To be" + EOT + "or not"
    assert eot not in enc.vocab.values()  # special tokens are not part of V


# ---- fast encoders == the spec's reference functions -------------------------------------------------------
def corpus_words(enc, texts, n=10_000):
    c = Counter(w for t in texts for w in words_of(enc, t))
    return [w for w, _ in c.most_common(n)]


@pytest.mark.parametrize("tie_break", ["leftmost", "rank"])
def test_fast_scan_equals_reference_on_corpus_words(bpe_tok, word_texts, tie_break):
    enc = LBPEEncoder(bpe_tok, mode="scan", tie_break=tie_break)
    vocab = enc.rank if tie_break == "rank" else set(enc.vocab)
    words = corpus_words(enc, word_texts)
    assert len(words) == 10_000
    for w in words:
        assert enc.tokenize_word(w) == lbpe_encode_word(list(w), vocab, enc.max_len, tie_break=tie_break), w


def test_fast_merge_equals_reference_on_corpus_words(bpe_tok, word_texts):
    enc = LBPEEncoder(bpe_tok, mode="merge")
    for w in corpus_words(enc, word_texts):
        assert enc.tokenize_word(w) == lbpe_merge_encode_word(list(w), enc.rank), w


WORDS_SMALL = st.text(alphabet="abcd", min_size=0, max_size=14)
SMALL_VOCABS = st.lists(st.text(alphabet="abcd", min_size=2, max_size=5), min_size=0, max_size=12, unique=True)


@SETTINGS
@given(WORDS_SMALL, SMALL_VOCABS)
def test_fast_scan_equals_reference_random_vocab(word, multi):
    """Random toy vocabularies (any set of strings, not only BPE-closed ones) and random words."""
    rank = {c: -1 for c in "abcd"} | {t: r for r, t in enumerate(multi)}
    tok = hand_tokenizer([])  # only for the class scaffolding; the vocab is swapped below
    for tie_break in ("leftmost", "rank"):
        enc = LBPEEncoder(tok, tie_break=tie_break)
        enc.vocab = {t: i for i, t in enumerate(rank)}
        enc.rank = rank
        enc.max_len = max(map(len, rank))
        enc._prefixes = {t[:k] for t in rank for k in range(2, len(t) + 1)}
        ref = lbpe_encode_word(list(word), rank if tie_break == "rank" else set(rank), enc.max_len, tie_break)
        assert enc._scan(word) == ref
        assert "".join(ref) == word and all(t in rank for t in ref)
        assert_longest_first(ref, set(rank))


def assert_longest_first(pieces: list[str], vocab: set[str]):
    """Sec. 7 test 3, re-simulated: every vocabulary window of length K >= 2 in the word overlaps an emitted
    token of length >= K. (Else its units were all still free when length K was scanned, and it would have been
    taken or blocked by an equally long one.)"""
    word = "".join(pieces)
    cover = []
    for p in pieces:
        cover += [len(p)] * len(p)
    for j in range(len(word)):
        for e in range(j + 2, len(word) + 1):
            if word[j:e] in vocab:
                assert max(cover[j:e]) >= e - j, (pieces, word[j:e])


def test_longest_first_invariant_on_corpus(bpe_tok, held_out_text):
    enc = LBPEEncoder(bpe_tok)
    vocab = set(enc.vocab)
    for w in corpus_words(enc, [held_out_text], n=3000):
        assert_longest_first(enc.tokenize_word(w), vocab)


def test_lbpe_longest_token_never_shorter_than_bpe(bpe_tok, held_out_text):
    """LBPE's first pick is the longest vocabulary string in the word, so its longest token is at least BPE's;
    and on real text the two encoders do differ."""
    lb, bp = LBPEEncoder(bpe_tok), BPEEncoder(bpe_tok)
    n_diff = 0
    for w in corpus_words(lb, [held_out_text], n=5000):
        a, b = lb.tokenize_word(w), bp.tokenize_word(w)
        assert max(map(len, a)) >= max(map(len, b))
        n_diff += a != b
    assert n_diff > 50


# ---- worked examples (Sec. 3.4 and Sec. 7 test 4) -----------------------------------------------------------
def test_spec_example_abcd():
    """Merges 1: a+b, 2: b+c, 3: bc+d. BPE: [ab, c, d]; LBPE: [a, bcd] (the long token BPE never reaches)."""
    tok = hand_tokenizer([("a", "b"), ("b", "c"), ("bc", "d")])
    assert tok.encode("abcd").tokens == ["ab", "c", "d"]  # HF's own Rust BPE
    assert BPEEncoder(tok).tokenize("abcd") == ["ab", "c", "d"]
    assert LBPEEncoder(tok).tokenize("abcd") == ["a", "bcd"]
    assert LBPEEncoder(tok, tie_break="rank").tokenize("abcd") == ["a", "bcd"]
    # variant B is path-dependent: "ab" wins the length-2 round by rank, then "bcd" can no longer form
    assert LBPEEncoder(tok, mode="merge").tokenize("abcd") == ["ab", "c", "d"]
    assert lbpe_encode_word(list("abcd"), {"ab", "bc", "bcd"}, 3) == ["a", "bcd"]
    assert bpe_encode_word(list("abcd"), {("a", "b"): 0, ("b", "c"): 1, ("bc", "d"): 2}) == ["ab", "c", "d"]


def test_example_variant_b_agrees_with_scan():
    """Merges 1: c+d, 2: a+b, 3: b+cd. BPE: cd, then ab (rank 2 < 3) -> [ab, cd]; LBPE scan and variant B:
    [a, bcd] (B: after c+d, the length-3 pair b+cd beats the length-2 pair a+b)."""
    tok = hand_tokenizer([("c", "d"), ("a", "b"), ("b", "cd")])
    assert tok.encode("abcd").tokens == ["ab", "cd"]
    assert BPEEncoder(tok).tokenize("abcd") == ["ab", "cd"]
    assert LBPEEncoder(tok).tokenize("abcd") == ["a", "bcd"]
    assert LBPEEncoder(tok, mode="merge").tokenize("abcd") == ["a", "bcd"]


def test_tie_break_fixture():
    """V ⊇ {ab, bc}, word "abc": leftmost gives [ab, c]; rank (bc merged first) gives [a, bc] = BPE here."""
    tok = hand_tokenizer([("b", "c"), ("a", "b")])
    assert lbpe_encode_word(list("abc"), {"ab", "bc"}, 2) == ["ab", "c"]
    assert LBPEEncoder(tok).tokenize("abc") == ["ab", "c"]
    assert LBPEEncoder(tok, tie_break="rank").tokenize("abc") == ["a", "bc"]
    assert BPEEncoder(tok).tokenize("abc") == tok.encode("abc").tokens == ["a", "bc"]


def test_example_longer_token_and_fewer_tokens():
    """A run of spaces: BPE builds ĠĠ pairs first; LBPE takes the longest whitespace token at once."""
    tok = hand_tokenizer([("Ġ", "Ġ"), ("ĠĠ", "ĠĠ"), ("Ġ", "ĠĠ")])  # ranks: ĠĠ, ĠĠĠĠ, ĠĠĠ
    text = "     x"  # 5 spaces: the regex gives a word of 4 spaces, then " x"
    assert BPEEncoder(tok).tokenize(text) == tok.encode(text).tokens == ["ĠĠĠĠ", "Ġ", "x"]
    assert LBPEEncoder(tok).tokenize("   ") == ["ĠĠĠ"]  # BPE: [ĠĠ, Ġ]
    assert BPEEncoder(tok).tokenize("   ") == ["ĠĠ", "Ġ"]


# ---- cache, options and errors ---------------------------------------------------------------------------------
def test_cache_does_not_change_output(bpe_tok, held_out_text):
    text = held_out_text[:20_000]
    cached, uncached = LBPEEncoder(bpe_tok), LBPEEncoder(bpe_tok, cache_size=0)
    first = cached.encode(text)
    assert cached.encode(text) == first == uncached.encode(text)
    assert not uncached._raw_cache and not uncached._cache
    small = LBPEEncoder(bpe_tok, cache_size=10)
    assert small.encode(text) == first and len(small._raw_cache) == 10
    cached.clear_cache()
    assert not cached._raw_cache and cached.encode(text) == first


def test_encode_batch_and_token_lengths(bpe_tok):
    enc = LBPEEncoder(bpe_tok)
    texts = ["To be, or not to be", "", "ay, there's the rub"]
    assert enc.encode_batch(texts) == [enc.encode(t) for t in texts]
    for t, i in enc.vocab.items():
        assert enc.token_lengths[i] == len(t) == len(enc.id_bytes[i])
    assert enc.max_len == max(len(t) for t in enc.vocab)
    assert enc.covers_all_bytes


def test_rejects_bad_options_and_models(bpe_tok):
    with pytest.raises(ValueError, match="mode"):
        LBPEEncoder(bpe_tok, mode="longest")
    with pytest.raises(ValueError, match="tie_break"):
        LBPEEncoder(bpe_tok, tie_break="random")
    with pytest.raises(ValueError, match="pretokenizer"):
        LBPEEncoder(bpe_tok, pretokenizer="regex")
    wl = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match="BPE"):
        LBPEEncoder(wl)
    ws = Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    ws.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="byte-level"):
        LBPEEncoder(ws)
    with pytest.raises(ValueError, match="tie_break"):
        lbpe_encode_word(list("ab"), {"ab"}, 2, tie_break="rank")  # rank needs a mapping


def test_bytes_to_unicode_matches_hf_alphabet():
    assert set(bytes_to_unicode().values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert bytes_to_unicode()[ord(" ")] == "Ġ" and bytes_to_unicode()[ord("\n")] == "Ċ"
    assert all(c in string.printable or ord(c) > 127 for c in bytes_to_unicode().values())
