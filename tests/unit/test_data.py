"""Corpora, tokenizer and batches: real text, document-level splits, (seed, step)-pure batches."""

import numpy as np
import pytest
import torch

from replicate.data import corpora, lm, tokenizer


@pytest.fixture(autouse=True)
def _runs(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICATE_RUNS", str(tmp_path / "runs"))


@pytest.fixture(scope="module")
def small_docs():
    return corpora.shakespeare()[:3]


def test_shakespeare_is_38_plays_of_real_text():
    docs = corpora.shakespeare()
    assert len(docs) == 38
    hamlet = next(d for d in docs if d.name == "hamlet")
    assert "To be, or not to be" in hamlet.text
    assert "**" not in hamlet.text and "  \n" not in hamlet.text
    assert 4_000_000 < sum(len(d.text) for d in docs) < 6_000_000


def test_python_corpus_is_the_stdlib():
    docs = corpora.python_stdlib(300_000)
    assert docs and all(d.text for d in docs)
    assert sum(len(d.text) for d in docs) <= 300_000
    assert [d.name for d in docs] == sorted(d.name for d in docs)


def test_python_docs_are_english_prose():
    docs = corpora.python_docs()
    assert len(docs) > 50 and 300_000 < sum(len(d.text) for d in docs) < 1_000_000
    assert "identifier" in corpora.load("python_docs")[0].text.lower() or any("identifier" in d.text for d in docs)


def test_split_is_by_document_deterministic_and_disjoint():
    docs = corpora.shakespeare()
    tr, ho = corpora.split(docs)
    assert len(ho) == 4 and len(tr) == 34
    assert not {d.name for d in tr} & {d.name for d in ho}
    assert corpora.split(docs) == (tr, ho)


def test_hf_source_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(corpora.DataUnavailable, match=r"corpus 'hf:wikitext': .*offline"):
        corpora.load("hf:wikitext")
    with pytest.raises(ValueError, match="corpus: unknown corpus 'gutenberg'"):
        corpora.load("gutenberg")


def test_tokenizer_round_trip_cache_and_transformers(small_docs):
    tok = tokenizer.train_bpe(small_docs, 400, name="t")
    assert tok.get_vocab_size() == 400
    assert tok.token_to_id(tokenizer.EOS) == 0
    text = small_docs[0].text[:2000]
    assert tok.decode(tok.encode(text).ids) == text
    again = tokenizer.train_bpe(small_docs, 400, name="t")  # from the cache
    assert again.to_str() == tok.to_str()
    hf = tokenizer.as_transformers(tok)
    assert hf(text)["input_ids"] == tok.encode(text).ids
    enc = tokenizer.encode_documents(tok, small_docs)
    assert [len(e) for e in enc] == [len(tok.encode(d.text).ids) for d in small_docs]
    assert enc[0].dtype == np.uint16


def test_corrupt_tokenizer_cache_is_rebuilt(small_docs):
    tok = tokenizer.train_bpe(small_docs, 300, name="c")
    path = next((tokenizer.cache_dir("tokenizers")).glob("c-v300-*.json"))
    path.write_text("{not json")
    assert tokenizer.train_bpe(small_docs, 300, name="c").to_str() == tok.to_str()


def test_batches_are_a_pure_function_of_seed_and_step():
    stream = lm.Stream(np.arange(10_000, dtype=np.uint16))
    a = lm.Batches((stream,), (1.0,), 4, 16, seed=0)
    b = lm.Batches((stream,), (1.0,), 4, 16, seed=0)
    assert torch.equal(a.batch(7), b.batch(7))
    assert not torch.equal(a.batch(7), a.batch(8))
    assert not torch.equal(a.batch(7), lm.Batches((stream,), (1.0,), 4, 16, seed=1).batch(7))
    x = a.batch(3)
    assert x.shape == (4, 17) and x.dtype == torch.int64
    assert torch.all(x[:, 1:] - x[:, :-1] == 1)  # contiguous slices of the stream


def test_mixture_weights_choose_streams():
    s0, s1 = lm.Stream(np.zeros(1000, dtype=np.uint16)), lm.Stream(np.ones(1000, dtype=np.uint16))
    only0 = lm.Batches((s0, s1), (1.0, 0.0), 64, 8, seed=0).batch(0)
    assert only0.sum() == 0
    half = torch.stack([lm.Batches((s0, s1), (0.5, 0.5), 64, 8, seed=0).batch(k)[:, 0] for k in range(20)])
    assert 0.4 < half.float().mean() < 0.6


def test_eval_windows_stay_inside_documents():
    docs = [np.arange(100, 100 + n, dtype=np.uint16) * 0 + i for i, n in enumerate([50, 300, 1000, 20])]
    w = lm.eval_windows(docs, 8, 31)
    assert w.shape == (8, 32)
    assert all(len(set(row.tolist())) == 1 for row in w)  # every window comes from one document
    assert lm.eval_windows(docs, 8, 31).equal(w)
    with pytest.raises(ValueError, match="only"):
        lm.eval_windows(docs, 1000, 31)


def test_train_curve_and_gap_drift_read_the_run_logs(tmp_path, monkeypatch):
    """``trainer.train_curve`` reads a run's CSV log; ``gap_drift`` pairs two runs' logged losses by step and
    returns late − earlier mean gap (None when a log is missing)."""
    from replicate.models import trainer

    monkeypatch.setattr(trainer, "runs_dir", lambda: tmp_path)

    def log(key, losses):
        d = tmp_path / "p" / key
        d.mkdir(parents=True)
        rows = ["epoch,lr,step,train_loss"] + [f"0,0.1,{s},{x}" for s, x in losses.items()]
        (d / "metrics.csv").write_text("\n".join(rows) + "\n")

    steps = range(9, 100, 10)  # 9, 19, ..., 99 of a 100-step run
    log("a", {s: 2.0 + 0.001 * s for s in steps})  # a's gap to b grows by 0.001 per step
    log("b", {s: 2.0 for s in steps})
    got = trainer.train_curve("p", "a")
    assert list(got[0]) == list(steps) and got[1][0] == pytest.approx(2.009)
    # last 20% (steps 89, 99) mean gap 0.094; the 20% before (69, 79) 0.074
    assert trainer.gap_drift("p", {0: "a"}, {0: "b"}, 100) == pytest.approx(0.02)
    assert trainer.gap_drift("p", {0: "a"}, {0: "missing"}, 100) is None
