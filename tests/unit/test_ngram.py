"""Count models (replicate/data/ngram.py): proper distributions, the textbook KN quantities, and the bar they set."""

import numpy as np
import pytest

from replicate.data.ngram import KneserNeyBigram, KneserNeyTrigram, document_nll, seen_windows, unigram_nll


def test_kn_rows_are_distributions_and_unseen_events_get_mass():
    rng = np.random.default_rng(0)
    V = 12
    stream = rng.integers(0, V - 2, 400)  # ids 10 and 11 never occur
    kn = KneserNeyBigram(stream, V)
    a = np.repeat(np.arange(V), V)
    b = np.tile(np.arange(V), V)
    p = kn.prob(a, b).reshape(V, V)
    assert np.all(p > 0)  # unseen successors and unseen contexts keep some mass
    assert np.allclose(p.sum(1), 1.0, atol=1e-12)  # every context, seen or not, is a distribution
    assert np.allclose(kn.p_cont.sum(), 1.0, atol=1e-12)
    n1, n2 = (kn.counts == 1).sum(), (kn.counts == 2).sum()
    assert kn.discount == pytest.approx(n1 / (n1 + 2 * n2))  # Ney's estimate from the count-of-counts


def test_kn_by_hand_on_a_tiny_stream():
    # stream a b a b a c (ids 0 1 0 1 0 2), V = 3, D = 0.5: bigrams ab x2, ba x2, ac x1
    kn = KneserNeyBigram(np.array([0, 1, 0, 1, 0, 2]), 3, discount=0.5)
    # p_cont: predecessors of a: {b} -> 1, of b: {a} -> 1, of c: {a} -> 1; N1+(., .) = 3 distinct bigrams
    p_cont = (np.array([1, 1, 1]) - 0.5) / 3 + 0.5 * 3 / 3 / 3
    assert np.allclose(kn.p_cont, p_cont)
    # p(b | a): c(a) = 3 as a context, c(a, b) = 2, N1+(a, .) = 2
    assert kn.prob(np.array([0]), np.array([1]))[0] == pytest.approx((2 - 0.5) / 3 + 0.5 * 2 / 3 * p_cont[1])
    # c is never a context: its row is the continuation distribution
    assert np.allclose(kn.prob(np.array([2, 2, 2]), np.arange(3)), p_cont)


def test_bigram_beats_unigram_on_structured_text_and_a_model_of_the_truth_beats_both():
    rng = np.random.default_rng(1)
    V = 50
    nxt = rng.integers(0, V, V)  # a deterministic successor 90% of the time
    s = [0]
    for _ in range(20_000):
        s.append(int(nxt[s[-1]]) if rng.random() < 0.9 else int(rng.integers(V)))
    s = np.array(s)
    train, held = s[:18_000], s[18_000:]
    windows = np.lib.stride_tricks.sliding_window_view(held, 33)[::32]
    uni = unigram_nll(train, V, windows).mean()
    bi = KneserNeyBigram(train, V).nll(windows).mean()
    truth = -np.log(np.where(windows[:, 1:] == nxt[windows[:, :-1]], 0.9 + 0.1 / V, 0.1 / V)).mean()
    assert truth < bi < uni
    assert bi - truth < 0.05  # with 18k tokens and 50 types the bigram is nearly the true model


def test_rows_are_independent_sequences_and_seen_windows_are_the_runs_batches():
    rows = np.array([[0, 1, 2], [2, 0, 1]])
    kn = KneserNeyBigram(rows, 3, discount=0.5)
    joined = KneserNeyBigram(np.array([0, 1, 2, 2, 0, 1]), 3, discount=0.5)
    assert kn.counts.sum() == 4 and joined.counts.sum() == 5  # the pair (2, 2) across the rows is not counted
    from replicate.data import lm

    b = lm.Batches((lm.Stream(np.arange(1000) % 50),), (1.0,), 4, 16, seed=3)
    w = seen_windows(b, 5)
    assert w.shape == (20, 17) and np.array_equal(w[4:8], np.asarray(b.batch(1)))


def test_kn_trigram_rows_are_distributions():
    rng = np.random.default_rng(2)
    V = 9
    stream = rng.integers(0, V - 2, 600)  # ids 7 and 8 never occur: unseen contexts and successors
    kn = KneserNeyTrigram(stream, V)
    a, b, c = (x.reshape(-1) for x in np.meshgrid(np.arange(V), np.arange(V), np.arange(V), indexing="ij"))
    p = kn.prob(a, b, c).reshape(V, V, V)
    assert np.all(p > 0)
    assert np.allclose(p.sum(2), 1.0, atol=1e-12)  # every (a, b) context, seen or not, is a distribution
    assert np.allclose(kn.prob2(np.repeat(np.arange(V), V), np.tile(np.arange(V), V)).reshape(V, V).sum(1), 1.0)
    assert np.allclose(kn.p1.sum(), 1.0)
    assert all(0 < d <= 1 for d in kn.discounts)
    rows = KneserNeyTrigram(stream.reshape(6, 100), V)  # rows: no trigram across two rows
    assert rows.c3.sum() == 6 * 98 and kn.c3.sum() == 598


def test_kn_trigram_by_hand_on_a_tiny_stream():
    # stream a b a b a c (ids 0 1 0 1 0 2), V = 3, every discount 0.5
    kn = KneserNeyTrigram(np.array([0, 1, 0, 1, 0, 2]), 3, discounts=(0.5, 0.5, 0.5))
    # trigrams: aba x2, bab, bac; distinct bigrams ab, ba, ac: each token has one distinct left neighbour
    p1 = (1 - 0.5) / 3 + 0.5 * 3 / 3 / 3
    assert np.allclose(kn.p1, p1)
    # middle order, b = a: distinct trigrams ending in (a, b): {bab} -> 1, in (a, c): {bac} -> 1; N1+(., a, .) = 2
    p2_b_given_a = (1 - 0.5) / 2 + 0.5 * 2 / 2 * p1
    assert kn.prob2(np.array([0]), np.array([1]))[0] == pytest.approx(p2_b_given_a)
    # p(b | b, a): c(b, a, .) = 2 (bab, bac), c(b, a, b) = 1, N1+(b, a, .) = 2
    assert kn.prob(np.array([1]), np.array([0]), np.array([1]))[0] == pytest.approx(
        (1 - 0.5) / 2 + 0.5 * 2 / 2 * p2_b_given_a)
    assert kn.prob(np.array([1]), np.array([0]), np.array([1]))[0] == pytest.approx(0.25 + 0.5 * (0.25 + 1 / 6))
    # an unseen context (c, c) is the middle order of its last token; c never is a middle context: p1
    assert np.allclose(kn.prob(np.full(3, 2), np.full(3, 2), np.arange(3)), kn.p1)


def test_trigram_beats_bigram_on_second_order_text_and_documents_get_their_context():
    rng = np.random.default_rng(3)
    V = 20
    nxt = rng.integers(0, V, (V, V))  # the next token is a function of the two before it, 90% of the time
    s = [0, 1]
    for _ in range(60_000):
        s.append(int(nxt[s[-2], s[-1]]) if rng.random() < 0.9 else int(rng.integers(V)))
    s = np.array(s)
    train, held = s[:55_000], s[55_000:]
    bi, tri = KneserNeyBigram(train, V), KneserNeyTrigram(train, V)
    n2, n3 = document_nll(bi, [held], 0), document_nll(tri, [held], 0)
    assert len(n2) == len(n3) == len(held) and n3.mean() < n2.mean() - 0.5
    windows = np.lib.stride_tricks.sliding_window_view(held, 33)[::32]
    w3 = tri.nll(windows)
    assert w3.shape == (len(windows), 32)
    assert np.allclose(w3[:, 1:], -np.log(tri.prob(windows[:, :-2], windows[:, 1:-1], windows[:, 2:])))
    # the document form predicts the first token from EOS (bigram) or (EOS, EOS) (trigram)
    assert n2[0] == pytest.approx(-np.log(bi.prob(np.array([0]), held[:1]))[0])
    assert n3[0] == pytest.approx(-np.log(tri.prob(np.array([0]), np.array([0]), held[:1]))[0])
