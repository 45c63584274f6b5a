"""Scaffold-BPE (arXiv 2404.17808): training and encoders.

- plain training (``scaffold=False``) equals HF ``tokenizers``' BpeTrainer byte for byte (the project's ``train_bpe``);
  with scaffolds, the merge sequence is HF's at ``vocab_size + |scaffolds|``;
- the fast trainer equals the slow reference trainer (merges and scaffold set) on small corpora, under both
  ``unflag`` options; hand-worked examples check the scaffold rule, the budget and un-flagging (``"requeue"``:
  flag, un-flag, re-flag, ties, exhausted pairs) against values derived by hand;
- ``unflag="never"`` reproduces the results from before the option existed (digests of the old output);
  ``"requeue"`` leaves no scaffold more frequent than the last merged pair (full corpus, vocabulary 1,024);
- every encoder decodes back to its input, never emits a scaffold id, and equals its plain-loop reference;
  ``compose="exclude"`` and ``"demolish"`` differ where they should;
- the cache: a second call loads, a corrupt file is rebuilt, the two ``unflag`` options get their own files.
"""

import hashlib
import json
import logging
import time

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from replicate.data import corpora
from replicate.data.corpora import Document
from replicate.data.tokenizer import bpe_from_texts
from replicate.papers.lbpe import (
    ScaffoldLBPEEncoder,
    lbpe_encode_word,
    lbpe_merge_encode_word,
    make_scaffold_encoder,
)
from replicate.tokenization import scaffold as sbpe
from replicate.tokenization.scaffold import (
    EOS,
    UNFLAGS,
    ScaffoldBPE,
    ScaffoldBPEEncoder,
    build_scaffold_bpe,
    count_words,
    demolish,
    reference_train,
    train_scaffold_bpe,
    train_word_counts,
)
from replicate.tokenization.words import bpe_encode_word

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ENCODERS = [  # (mode, compose, tie_break)
    ("bpe", "exclude", "leftmost"),
    ("scan", "exclude", "leftmost"),
    ("scan", "demolish", "leftmost"),
    ("scan", "exclude", "rank"),
    ("scan", "demolish", "rank"),
    ("merge", "exclude", "leftmost"),
    ("merge", "demolish", "leftmost"),
]
V = 640  # vocabulary of the tokenizers trained on the small corpus


def hf_train(texts, vocab_size: int) -> Tokenizer:
    """HF's BpeTrainer with ``replicate.data.tokenizer.train_bpe``'s settings, uncached."""
    return bpe_from_texts(texts, vocab_size)


def model_of(tok: Tokenizer) -> dict:
    return json.loads(tok.to_str())["model"]


@pytest.fixture(scope="session")
def small_docs() -> tuple[Document, ...]:
    """Three plays, about 430 KB."""
    return corpora.shakespeare()[:3]


@pytest.fixture(scope="session")
def small_counts(small_docs):
    return count_words(d.text for d in small_docs)


@pytest.fixture(scope="session")
def full_counts():
    """Word counts of the 38 plays (5 MB)."""
    return count_words(d.text for d in corpora.shakespeare())


@pytest.fixture(scope="session")
def sb(small_counts) -> ScaffoldBPE:
    return train_word_counts(small_counts, V)


@pytest.fixture(scope="session")
def eval_text() -> str:
    return corpora.shakespeare()[5].text[:60_000]  # a play not in small_docs


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A private runs/ folder: caches written by this test go there."""
    monkeypatch.setenv("REPLICATE_RUNS", str(tmp_path))
    return tmp_path


# ---- hand-worked example ----------------------------------------------------------------------------------------
HAND = {"abcd": 10, "abc": 3, "ab": 2, "xy": 4}
# Pair counts at the start: (a,b) 10+3+2 = 15, (b,c) 13, (c,d) 10, (x,y) 4. Base: EOS + 256 units = 257 usable.
# 1. merge (a,b) -> ab (15). freq(ab) = 15; next best (ab,c) = 13. Usable 258.
# 2. merge (ab,c) -> abc (13). freq(ab) = 15 - 13 = 2 < next best (abc,d) = 10: ab is a scaffold. Usable 259 - 1.
# 3. merge (abc,d) -> abcd (10). freq(abc) = 13 - 10 = 3 < next best (x,y) = 4: abc is a scaffold. Usable 258.
# 4. merge (x,y) -> xy (4). Usable 259 = vocab_size: stop. Scaffolds {ab, abc}; abc demolishes to ab c, then a b c.
# Plain BPE at 259 stops after step 2 (257 + ab + abc).
# unflag="requeue" gives the same at 259: before step 4 the most frequent scaffold, abc (3), is not > (x,y) (4).


@pytest.mark.parametrize("unflag", UNFLAGS)
def test_hand_worked_example(unflag):
    sb = train_word_counts(HAND, 259, unflag=unflag)
    assert sb.merges == [("a", "b"), ("ab", "c"), ("abc", "d"), ("x", "y")]
    assert sb.scaffolds == {"ab", "abc"}
    assert sb.vocab_size == 259 and sb.tokenizer.get_vocab_size() == 261
    vocab = sb.tokenizer.get_vocab()
    assert [vocab[t] for t in ("abcd", "xy", "ab", "abc")] == [257, 258, 259, 260]  # scaffolds after usable ids
    assert sb.scaffold_ids == {259, 260}
    assert sb.components == {"ab": ("a", "b"), "abc": ("ab", "c"), "abcd": ("abc", "d"), "xy": ("x", "y")}
    assert reference_train(HAND, 259, unflag=unflag) == (sb.merges, {"ab", "abc"})
    assert sb.unflag == unflag
    plain = train_word_counts(HAND, 259, scaffold=False, unflag=unflag)
    assert plain.merges == [("a", "b"), ("ab", "c")] and plain.scaffolds == frozenset() and plain.unflag is None
    # encoding: abc is built by rank BPE, then demolished recursively (abc -> ab c -> a b c)
    enc = ScaffoldBPEEncoder(sb)
    assert enc.tokenize_word("abc") == ["a", "b", "c"]
    assert enc.tokenize_word("abcd") == ["abcd"]
    assert enc.tokenize_word("abxy") == ["a", "b", "xy"]
    assert demolish(["abc", "xy"], sb.scaffolds, sb.components) == ["a", "b", "c", "xy"]


@pytest.mark.parametrize("unflag", UNFLAGS)
def test_budget_counts_only_usable_tokens(unflag):
    # vocab_size 258: usable reaches 258 after step 1 -> stop before ab could be flagged
    sb = train_word_counts(HAND, 258, unflag=unflag)
    assert sb.merges == [("a", "b")] and sb.scaffolds == frozenset() and sb.vocab_size == 258
    # more than the corpus allows: training stops when no pair is left ...
    sb = train_word_counts(HAND, 400, unflag=unflag)
    assert sb.merges == [("a", "b"), ("ab", "c"), ("abc", "d"), ("x", "y")]
    if unflag == "never":
        assert sb.scaffolds == {"ab", "abc"} and sb.vocab_size == 259
    else:
        # ... and, with "requeue", no scaffold of freq > 0 is left: no pair counts as frequency 0, so after step 4
        # abc (3) is un-flagged (usable 260), then ab (2) (usable 261). At 260 the un-flag of abc ends training.
        assert sb.scaffolds == frozenset() and sb.vocab_size == 261
        sb = train_word_counts(HAND, 260, unflag=unflag)
        assert sb.merges == [("a", "b"), ("ab", "c"), ("abc", "d"), ("x", "y")] and sb.scaffolds == {"ab"}


# ---- un-flagging (unflag="requeue"), hand-worked -----------------------------------------------------------------
REQ = {"abc": 10, "ab": 1, "abd": 2, "xy": 3, "xyz": 2, "pq": 2}
# Pairs at the start: (a,b) 10+1+2 = 13, (b,c) 10, (b,d) 2, (x,y) 3+2 = 5, (y,z) 2, (p,q) 2. Usable 257. Each step
# first compares the most frequent scaffold with the best pair (un-flag only if strictly more frequent).
# 1. no scaffold. merge (a,b) -> ab (13). freq(ab) 13, next best (ab,c) 10: not flagged. Usable 258.
# 2. merge (ab,c) -> abc (10). freq(ab) = 13 - 10 = 3 < next best (x,y) 5: ab FLAGGED. Usable 259 - 1 = 258.
# 3. ab 3 > (x,y) 5? no. merge (x,y) -> xy (5) (units: no flag). Usable 259. Left: (ab,d) 2, (xy,z) 2, (p,q) 2;
#    ties go to the smaller ids: p, q are units (< 257 = ab < 259 = xy), so the best pair is (p,q).
# 4. ab 3 > (p,q) 2: ab UN-FLAGGED, nothing merged. Usable 260.
# 5. no scaffold. merge (p,q) -> pq (2). Usable 261. Best now (ab,d) 2 (id 257 < 259).
# 6. merge (ab,d) -> abd (2). freq(ab) = 3 - 2 = 1 < next best (xy,z) 2: ab FLAGGED AGAIN. Usable 262 - 1 = 261.
# 7. ab 1 > (xy,z) 2? no. merge (xy,z) -> xyz (2). freq(xy) = 5 - 2 = 3, no pair left (0): not flagged. Usable 262.
# 8. no pair (frequency 0); ab 1 > 0: ab UN-FLAGGED. Usable 263.
# 9. no pair, no scaffold: stop, whatever vocab_size (263 at most).
# unflag="never": steps 4 and 8 do not happen (ab stays flagged): 259 after step 3, 260 after pq, 261 after abd,
# 262 after xyz, then stop.
M = [("a", "b"), ("ab", "c"), ("x", "y"), ("p", "q"), ("ab", "d"), ("xy", "z")]
REQ_EXPECTED = {  # vocab_size -> (number of merges, scaffolds, usable tokens)
    "requeue": {
        258: (1, set(), 258),
        259: (3, {"ab"}, 259),  # stop after step 3
        260: (3, set(), 260),  # the un-flag of step 4 ends training
        261: (4, set(), 261),
        262: (6, {"ab"}, 262),  # re-flagged at step 6
        263: (6, set(), 263),  # the un-flag of step 8 (no pair left) ends training
        300: (6, set(), 263),
    },
    "never": {
        258: (1, set(), 258),
        259: (3, {"ab"}, 259),
        260: (4, {"ab"}, 260),
        261: (5, {"ab"}, 261),
        262: (6, {"ab"}, 262),
        263: (6, {"ab"}, 262),
        300: (6, {"ab"}, 262),
    },
}
TIE = {"abc": 10, "ab": 3, "xy": 5, "pq": 3}
# (a,b) 13, (b,c) 10, (x,y) 5, (p,q) 3. 1. ab (13; next (ab,c) 10): usable 258. 2. abc: freq(ab) 3 < (x,y) 5:
# flagged, 258. 3. 3 > 5? no: xy, 259. 4. ab 3 > (p,q) 3? NO, equal: the pair wins, pq merged, 260.
# 5. no pair: ab 3 > 0: un-flagged, 261. So at 260: 4 merges, {ab}; at 261: {} (with "never": {ab}, 260 at most).


@pytest.mark.parametrize("unflag", UNFLAGS)
def test_hand_worked_unflag(unflag):
    for vocab_size, (n, scaffolds, usable) in REQ_EXPECTED[unflag].items():
        sb = train_word_counts(REQ, vocab_size, unflag=unflag)
        assert (sb.merges, sb.scaffolds, sb.vocab_size) == (M[:n], scaffolds, usable), vocab_size
        assert reference_train(REQ, vocab_size, unflag=unflag) == (M[:n], scaffolds), vocab_size
    tie = [("a", "b"), ("ab", "c"), ("x", "y"), ("p", "q")]
    for vocab_size, scaffolds in [(259, {"ab"}), (260, {"ab"}), (261, set() if unflag == "requeue" else {"ab"})]:
        sb = train_word_counts(TIE, vocab_size, unflag=unflag)
        assert (sb.merges, sb.scaffolds) == (tie[: 3 if vocab_size == 259 else 4], scaffolds), vocab_size
        assert reference_train(TIE, vocab_size, unflag=unflag) == (sb.merges, sb.scaffolds)
    # an un-flagged token is an ordinary usable token: ids below vocab_size, rank BPE keeps it
    sb = train_word_counts(REQ, 263, unflag=unflag)
    ab = sb.tokenizer.token_to_id("ab")
    assert (ab < sb.vocab_size) == (unflag == "requeue")
    assert ScaffoldBPEEncoder(sb).tokenize_word("ab") == (["ab"] if unflag == "requeue" else ["a", "b"])


# ---- HF equality --------------------------------------------------------------------------------------------------
def test_plain_training_equals_projects_train_bpe(small_docs, runs):
    from replicate.data.tokenizer import train_bpe

    ours = train_scaffold_bpe(small_docs, V, scaffold=False)
    assert ours.scaffolds == frozenset()
    assert ours.tokenizer.to_str() == train_bpe(small_docs, V).to_str()  # vocab, ids, merges, everything


def test_scaffold_merges_are_hf_merges_at_the_larger_vocabulary(sb, small_docs):
    assert len(sb.scaffolds) > 20
    hf = hf_train((d.text for d in small_docs), sb.tokenizer.get_vocab_size())
    assert [tuple(m) for m in model_of(hf)["merges"]] == sb.merges
    assert set(model_of(hf)["vocab"]) == set(sb.tokenizer.get_vocab())


@SETTINGS
@given(
    st.lists(st.text(alphabet="abc d\n.é", min_size=1, max_size=40), min_size=1, max_size=6),
    st.integers(257, 330),
)
def test_plain_training_equals_hf_on_random_corpora(texts, vocab_size):
    ours = train_word_counts(count_words(texts), vocab_size, scaffold=False)
    assert ours.tokenizer.to_str() == hf_train(texts, vocab_size).to_str()


def test_training_does_not_split_special_tokens_like_hf():
    texts = ["hello<|endoftext|>world<|endoftext|>" * 20, "a <|endoftext|> b"]
    ours = train_word_counts(count_words(texts), 280, scaffold=False)
    assert ours.tokenizer.to_str() == hf_train(texts, 280).to_str()
    assert ("<", "|") in ours.merges  # HF's trainer sees the special token's text as ordinary text


# ---- fast trainer == reference trainer ----------------------------------------------------------------------------
words_strategy = st.dictionaries(st.text(alphabet="abcd", min_size=1, max_size=9), st.integers(1, 7), max_size=12)


@SETTINGS
@given(words_strategy, st.integers(257, 300), st.booleans(), st.sampled_from(UNFLAGS))
def test_fast_trainer_equals_reference(word_counts, vocab_size, scaffold, unflag):
    sb = train_word_counts(word_counts, vocab_size, scaffold=scaffold, unflag=unflag)
    merges, scaffolds = reference_train(word_counts, vocab_size, scaffold=scaffold, unflag=unflag)
    assert sb.merges == merges
    assert sb.scaffolds == scaffolds
    assert sb.vocab_size == min(vocab_size, 257 + len(merges) - len(scaffolds))


@pytest.mark.parametrize(
    "word_counts",
    [
        {"aaaa": 5, "aaa": 3, "aa": 1},  # overlapping pairs (a,a)
        {"abab": 4, "ababab": 2, "ba": 3},  # adjacent occurrences of the merged pair
        {"the": 20, "then": 6, "there": 5, "other": 4, "th": 1},  # th / the become scaffolds
        {"abcd": 10, "abc": 3, "ab": 2, "xy": 4},
        REQ,  # flag, un-flag, re-flag
        TIE,  # a scaffold as frequent as the best pair
        {"abc": 10, "ab": 2, "xyz": 10, "xy": 2, "pq": 5},  # two scaffolds of equal freq: ab (smaller id) first
    ],
)
def test_fast_trainer_equals_reference_hand_made(word_counts):
    for vocab_size in range(257, 275):
        for scaffold, unflag in [(False, "requeue"), (True, "requeue"), (True, "never")]:
            sb = train_word_counts(word_counts, vocab_size, scaffold=scaffold, unflag=unflag)
            ref = reference_train(word_counts, vocab_size, scaffold=scaffold, unflag=unflag)
            assert (sb.merges, sb.scaffolds) == ref, (vocab_size, scaffold, unflag)


@pytest.mark.parametrize("unflag", UNFLAGS)
def test_fast_trainer_equals_reference_on_real_words(small_counts, unflag):
    """The 400 most frequent words of the plays (vocabulary 300, with scaffolds)."""
    counts = dict(sorted(small_counts.items(), key=lambda kv: -kv[1])[:400])
    sb = train_word_counts(counts, 300, unflag=unflag)
    assert sb.scaffolds
    assert (sb.merges, sb.scaffolds) == reference_train(counts, 300, unflag=unflag)


def digest(sb: ScaffoldBPE) -> str:
    return hashlib.sha256(json.dumps([[list(m) for m in sb.merges], sorted(sb.scaffolds)]).encode()).hexdigest()[:16]


def test_unflag_never_reproduces_the_previous_trainer(small_counts):
    """Digests of (merges, sorted scaffolds) written by the trainer before the ``unflag`` option existed (version
    sbpe1): three plays at vocabulary 640, 467 merges and 84 scaffolds (the full corpus at 4,096: in
    ``test_full_corpus_vocab_4096``)."""
    sb = train_word_counts(small_counts, V, unflag="never")
    assert (len(sb.merges), len(sb.scaffolds)) == (467, 84)
    assert digest(sb) == "a8c3fda09426387f"


def test_requeue_leaves_no_scaffold_above_the_last_merged_pair(full_counts):
    """The invariant of ``unflag="requeue"``: a pair is merged only when no flagged token is strictly more frequent
    than it, flags are only added right after a merge (below the next pair, whose count is <= the merged one's), and
    a token's freq never grows afterwards. So, at the end, every scaffold x has freq(x) <= c_last, where freq is the
    standalone count in the final training segmentation and c_last the count of the last merged pair (a, b) at its
    merge: its adjacent occurrences in the segmentation by all merges but the last (overlaps counted, as the
    trainer's pair counts). Equality is allowed (a tie goes to the pair). ``"never"`` breaks it here."""

    def freqs(sb, n_merges):
        model = build_scaffold_bpe(sb.merges[:n_merges]).tokenizer.model
        tok, pair = Counter(), Counter()
        for w, c in full_counts.items():
            seg = [t.value for t in model.tokenize(w)]
            for t in seg:
                tok[t] += c
            for xy in zip(seg, seg[1:]):
                pair[xy] += c
        return tok, pair

    over = {}
    for unflag in UNFLAGS:
        sb = train_word_counts(full_counts, 1024, unflag=unflag)
        tok, _ = freqs(sb, len(sb.merges))
        _, pair = freqs(sb, len(sb.merges) - 1)
        c_last = pair[sb.merges[-1]]
        assert c_last > 0 and sb.scaffolds
        over[unflag] = {t for t in sb.scaffolds if tok[t] > c_last}
    assert over["requeue"] == set()
    assert len(over["never"]) > 20  # e.g. "ill", "Ġo", "ot"


def test_count_words_fast_equals_hf(small_docs):
    texts = [d.text for d in small_docs]
    assert count_words(texts) == count_words(texts, pretokenizer="hf")


@SETTINGS
@given(st.lists(st.text(), max_size=3))
def test_count_words_fast_equals_hf_arbitrary_unicode(texts):
    assert count_words(texts) == count_words(texts, pretokenizer="hf")


# ---- the trained Scaffold-BPE ------------------------------------------------------------------------------------
def test_usable_ids_are_exactly_range_vocab_size(sb):
    vocab = sb.tokenizer.get_vocab()
    assert sb.vocab_size == V and len(vocab) == V + len(sb.scaffolds)
    assert sb.scaffold_ids == set(range(V, len(vocab)))
    assert vocab[EOS] == 0
    # every scaffold demolishes into usable tokens that spell it
    for t in sb.scaffolds:
        parts = sb.demolish([t])
        assert "".join(parts) == t and not set(parts) & sb.scaffolds
    # demolition is recursive on this corpus: some scaffold has a scaffold component
    assert any(set(sb.components[t]) & sb.scaffolds for t in sb.scaffolds)


@pytest.mark.parametrize("mode,compose,tie_break", ENCODERS)
def test_encoders_round_trip_and_never_emit_scaffolds(sb, eval_text, mode, compose, tie_break):
    enc = make_scaffold_encoder(sb, mode, compose=compose, tie_break=tie_break)
    ids = enc.encode(eval_text)
    assert enc.decode(ids) == eval_text
    assert max(ids) < sb.vocab_size and not set(ids) & sb.scaffold_ids
    text = "Hello<|endoftext|>naïve café — 日本語 🎭\t\n  x"
    ids = enc.encode(text)
    assert enc.decode(ids) == text and not set(ids) & sb.scaffold_ids


@SETTINGS
@given(st.text())
def test_encoders_round_trip_arbitrary_unicode(sb, text):
    for mode, compose, tie_break in ENCODERS:
        enc = make_scaffold_encoder(sb, mode, compose=compose, tie_break=tie_break, cache_size=0)
        ids = enc.encode(text)
        assert enc.decode_bytes(ids) == text.encode("utf-8")
        assert not set(ids) & sb.scaffold_ids


def test_scaffold_bpe_is_hf_bpe_then_demolish(sb, eval_text):
    enc = ScaffoldBPEEncoder(sb)
    hf_tokens = sb.tokenizer.encode(eval_text, add_special_tokens=False).tokens
    assert any(t in sb.scaffolds for t in hf_tokens)  # plain rank BPE does emit scaffolds here
    assert enc.tokenize(eval_text) == sb.demolish(hf_tokens)


def test_encoders_equal_plain_loop_references(sb, eval_text):
    bpe = ScaffoldBPEEncoder(sb)
    words = sorted({w for w in bpe.words(eval_text) if isinstance(w, str)})[:3000]
    full = set(bpe.vocab)
    usable = full - sb.scaffolds
    rank = {t: r for t, r in bpe.rank.items()}
    usable_rank = {t: r for t, r in rank.items() if t in usable}
    m_full, m_usable = max(map(len, full)), max(map(len, usable))
    encs = {
        (mode, compose, tb): make_scaffold_encoder(sb, mode, compose=compose, tie_break=tb)
        for mode, compose, tb in ENCODERS[1:]
    }
    differ = 0
    for w in words:
        units = list(w)
        assert bpe.tokenize_word(w) == sb.demolish(bpe_encode_word(units, bpe.merge_ranks))
        for tb in ("leftmost", "rank"):
            excl = lbpe_encode_word(units, usable_rank if tb == "rank" else usable, m_usable, tb)
            dem = sb.demolish(lbpe_encode_word(units, rank if tb == "rank" else full, m_full, tb))
            assert encs[("scan", "exclude", tb)].tokenize_word(w) == excl, w
            assert encs[("scan", "demolish", tb)].tokenize_word(w) == dem, w
            differ += excl != dem
        assert encs[("merge", "exclude", "leftmost")].tokenize_word(w) == lbpe_merge_encode_word(units, usable_rank)
        assert encs[("merge", "demolish", "leftmost")].tokenize_word(w) == sb.demolish(
            lbpe_merge_encode_word(units, rank)
        )
    assert differ > 0  # the two readings really differ on real text


def test_compose_readings_differ_on_constructed_example():
    # V: ab (scaffold) = a+b, abc (scaffold) = ab+c, bc = b+c (usable)
    sb = build_scaffold_bpe([("a", "b"), ("ab", "c"), ("b", "c")], scaffolds={"ab", "abc"})
    exclude = ScaffoldLBPEEncoder(sb, compose="exclude")
    dem = ScaffoldLBPEEncoder(sb, compose="demolish")
    assert (exclude.name, dem.name) == ("scaffold_lbpe", "scaffold_lbpe_demolish")
    # exclude: longest usable window is bc -> a | bc.  demolish: abc (longest in V) -> ab c -> a b c
    assert exclude.tokenize_word("abc") == ["a", "bc"] == lbpe_encode_word(list("abc"), {"bc"} | set("abc"), 2)
    assert dem.tokenize_word("abc") == ["a", "b", "c"] == sb.demolish(lbpe_encode_word(list("abc"), {"abc"}, 3))
    # rank BPE: ab, then abc, then demolish
    assert ScaffoldBPEEncoder(sb).tokenize_word("abc") == ["a", "b", "c"]
    assert ScaffoldBPEEncoder(sb).tokenize_word("bcbc") == ["bc", "bc"]


def test_without_scaffolds_the_encoders_are_the_plain_ones(small_counts, eval_text):
    from replicate.papers.lbpe import make_encoder

    plain = train_word_counts(small_counts, 400, scaffold=False)
    text = eval_text[:20_000]
    assert ScaffoldBPEEncoder(plain).encode(text) == plain.tokenizer.encode(text, add_special_tokens=False).ids
    for compose in ("exclude", "demolish"):
        assert ScaffoldLBPEEncoder(plain, compose=compose).encode(text) == make_encoder(plain.tokenizer).encode(text)


def test_bad_arguments(sb):
    with pytest.raises(ValueError, match="compose"):
        ScaffoldLBPEEncoder(sb, compose="both")
    with pytest.raises(ValueError, match="mode"):
        make_scaffold_encoder(sb, "lbpe")
    with pytest.raises(ValueError, match="vocab_size"):
        train_scaffold_bpe((Document("x", "abc"),), 100)
    with pytest.raises(ValueError, match="ByteLevel"):
        train_word_counts({"日本": 1}, 300)  # not ByteLevel-mapped
    with pytest.raises(ValueError, match="scaffolds"):
        build_scaffold_bpe([("a", "b")], scaffolds={"c"})
    with pytest.raises(ValueError, match="unflag"):
        train_word_counts(HAND, 300, unflag="sometimes")
    with pytest.raises(ValueError, match="unflag"):
        reference_train(HAND, 300, unflag="always")
    with pytest.raises(ValueError, match="unflag"):
        train_scaffold_bpe((Document("x", "abc"),), 300, unflag="")


# ---- cache ----------------------------------------------------------------------------------------------------------
def test_cache_loads_and_corrupt_file_is_rebuilt(small_docs, runs, monkeypatch, caplog):
    docs = small_docs[:1]
    first = train_scaffold_bpe(docs, 400, name="t")
    files = list((runs / "cache" / "tokenizers").glob("t-scaffold-requeue-v400-*.json"))
    assert len(files) == 1 and first.unflag == "requeue"

    def no_training(*a, **k):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(sbpe, "train_word_counts", no_training)
    t0 = time.perf_counter()
    second = train_scaffold_bpe(docs, 400, name="t")
    assert time.perf_counter() - t0 < 2.0
    assert second.tokenizer.to_str() == first.tokenizer.to_str()
    assert (second.scaffolds, second.components, second.unflag) == (first.scaffolds, first.components, "requeue")
    monkeypatch.undo()
    monkeypatch.setenv("REPLICATE_RUNS", str(runs))

    # different options / sizes get their own files
    assert train_scaffold_bpe(docs, 400, name="t", scaffold=False).scaffolds == frozenset()
    assert len(list((runs / "cache" / "tokenizers").glob("t-*.json"))) == 2

    for corrupt in ("{not json", json.dumps({**first.to_json(), "scaffolds": ["not-a-token"]})):
        files[0].write_text(corrupt)
        with caplog.at_level(logging.WARNING, logger="replicate"):
            rebuilt = train_scaffold_bpe(docs, 400, name="t")
        assert "corrupt file" in caplog.text
        caplog.clear()
        assert rebuilt.tokenizer.to_str() == first.tokenizer.to_str() and rebuilt.scaffolds == first.scaffolds
        assert ScaffoldBPE.from_json(json.loads(files[0].read_text())).scaffolds == first.scaffolds


def test_cache_files_differ_between_unflag_options(small_docs, runs, caplog):
    docs = small_docs[:1]
    folder = runs / "cache" / "tokenizers"
    by_option = {u: train_scaffold_bpe(docs, 400, name="t", unflag=u) for u in UNFLAGS}
    files = {u: list(folder.glob(f"t-scaffold-{u}-v400-*-{sbpe.CACHE_VERSION}.json")) for u in UNFLAGS}
    assert all(len(f) == 1 for f in files.values()) and len(list(folder.iterdir())) == 2
    assert sbpe.CACHE_VERSION != "sbpe1"  # files of the trainer before the option are never read
    for u in UNFLAGS:
        assert by_option[u].unflag == u == json.loads(files[u][0].read_text())["unflag"]
        assert by_option[u].scaffolds == train_word_counts(count_words([docs[0].text]), 400, unflag=u).scaffolds
        loaded = train_scaffold_bpe(docs, 400, name="t", unflag=u)  # from the cache
        assert (loaded.scaffolds, loaded.unflag) == (by_option[u].scaffolds, u)
    assert by_option["requeue"].scaffolds < by_option["never"].scaffolds  # here: un-flagging only removes flags
    # plain BPE ignores the option: one file, unflag recorded as None
    for u in UNFLAGS:
        assert train_scaffold_bpe(docs, 400, name="t", scaffold=False, unflag=u).unflag is None
    assert len(list(folder.glob("t-plain-*.json"))) == 1
    # a file whose recorded option disagrees with its name is treated as corrupt and rebuilt
    files["never"][0].write_text(json.dumps({**by_option["never"].to_json(), "unflag": "requeue"}))
    with caplog.at_level(logging.WARNING, logger="replicate"):
        rebuilt = train_scaffold_bpe(docs, 400, name="t", unflag="never")
    assert "corrupt file" in caplog.text and rebuilt.scaffolds == by_option["never"].scaffolds


def test_full_corpus_vocab_4096(runs, full_counts):
    """The replication's setting: the 38 plays (5 MB), 4,096 tokens. Plain training equals HF's ``train_bpe``;
    Scaffold-BPE has 4,096 usable tokens; both train well under a minute on one core. ``unflag="never"`` gives the
    previous trainer's output (digest) and many more scaffolds than ``"requeue"``."""
    from replicate.data.tokenizer import train_bpe

    docs = corpora.shakespeare()
    t0 = time.perf_counter()
    counts = count_words(d.text for d in docs)
    plain = train_word_counts(counts, 4096, scaffold=False)
    elapsed = time.perf_counter() - t0
    assert plain.tokenizer.to_str() == train_bpe(docs, 4096).to_str()
    t0 = time.perf_counter()
    sb = train_scaffold_bpe(docs, 4096)
    elapsed = max(elapsed, time.perf_counter() - t0)
    assert elapsed < 30, elapsed
    assert sb.vocab_size == 4096 and len(sb.scaffolds) > 100 and sb.unflag == "requeue"
    assert sb.merges[: len(plain.merges)] == plain.merges  # same merge sequence, continued past the scaffolds
    t0 = time.perf_counter()
    never = train_word_counts(full_counts, 4096, unflag="never")
    assert time.perf_counter() - t0 < 30
    assert (len(never.merges), len(never.scaffolds)) == (5168, 1329) and digest(never) == "88b35941abe37ff1"
    assert never.merges[: len(sb.merges)] == sb.merges  # fewer scaffolds: a prefix of the same sequence
    assert len(sb.scaffolds) < len(never.scaffolds)
    assert "Ġup" in never.scaffolds and "Ġup" not in sb.scaffolds  # flagged early, 1,170 occurrences at the end
