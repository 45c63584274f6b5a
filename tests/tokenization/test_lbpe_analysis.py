"""Token-frequency analyses, loss by token length and the speed table, on synthetic inputs with known answers."""

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

from replicate.tokenization.analysis import (
    compression,
    encoding_speed,
    frequency_summary,
    gini,
    loss_by_token_length,
    occurrence_by_length,
    plot_encoding_speed,
    plot_loss_by_token_length,
    plot_occurrence_by_length,
    plot_rank_frequency,
    plot_vocab_utilisation,
    rank_frequency,
    segmentation_examples,
    top_changed_tokens,
    vocab_utilisation,
)
from replicate.papers.lbpe import LBPEEncoder
from replicate.tokenization.words import BPEEncoder

# vocabulary of 6 ids: lengths 1, 1, 2, 2, 3 and a special token (id 5) left out of V
LENGTHS = [1, 1, 2, 2, 3, 13]
V = [0, 1, 2, 3, 4]
ENC = {"bpe": [0, 0, 0, 1, 2, 2, 3, 0], "lbpe": [4, 4, 2, 1]}


def test_occurrence_by_length_known_answer():
    df = occurrence_by_length(ENC, LENGTHS, V)
    assert list(df.columns) == ["encoding", "token_len", "n_vocab", "occurrences", "share", "mean_per_entry"]
    bpe = df[df.encoding == "bpe"].set_index("token_len")
    assert bpe["n_vocab"].to_dict() == {1: 2, 2: 2, 3: 1}
    assert bpe["occurrences"].to_dict() == {1: 5, 2: 3, 3: 0}
    assert bpe["share"].to_dict() == {1: 5 / 8, 2: 3 / 8, 3: 0.0}
    assert bpe["mean_per_entry"].to_dict() == {1: 2.5, 2: 1.5, 3: 0.0}
    lb = df[df.encoding == "lbpe"].set_index("token_len")
    assert lb["occurrences"].to_dict() == {1: 1, 2: 1, 3: 2}
    assert lb["mean_per_entry"][3] == 2.0


def test_rank_frequency_known_answer():
    df = rank_frequency(ENC)
    bpe = df[df.encoding == "bpe"]
    assert bpe["token_id"].tolist() == [0, 2, 1, 3]  # count ties (1, 1) ordered by id
    assert bpe["count"].tolist() == [4, 2, 1, 1] and bpe["rank"].tolist() == [1, 2, 3, 4]
    assert math.isclose(bpe["freq"].sum(), 1.0)
    assert df[df.encoding == "lbpe"]["token_id"].tolist() == [4, 1, 2]


def test_frequency_summary_and_gini():
    assert gini([1, 1, 1, 1]) == 0.0
    assert math.isclose(gini([0, 0, 0, 4]), 3 / 4)
    assert gini([]) == 0.0 and gini([0, 0]) == 0.0
    df = frequency_summary({"flat": [0, 1, 2, 3], "peaked": [0, 0, 0, 0]}, vocab_size=4).set_index("encoding")
    assert df.loc["flat", "entropy_bits"] == 2.0 and df.loc["flat", "gini"] == 0.0
    assert df.loc["peaked", "entropy_bits"] == 0.0 and math.isclose(df.loc["peaked", "gini"], 0.75)
    assert df.loc["flat", "n_distinct"] == 4 and df.loc["peaked", "n_tokens"] == 4


def test_vocab_utilisation_known_answer():
    ids = [0] * 150 + [1] * 20 + [2] * 5  # counts over V: 150, 20, 5, 0, 0
    df = vocab_utilisation({"x": ids}, vocab_size=6, vocab_ids=V, ks=(1, 10, 100)).set_index("k")
    assert df["n_below"].to_dict() == {1: 2, 10: 3, 100: 4}
    assert df["frac_below"].to_dict() == {1: 0.4, 10: 0.6, 100: 0.8}
    assert (df["n_vocab"] == 5).all()


def test_compression_known_answer():
    df = compression(ENC, LENGTHS).set_index("encoding")
    assert df.loc["bpe", "n_bytes"] == 4 * 1 + 1 + 3 * 2 and df.loc["bpe", "n_tokens"] == 8
    assert df.loc["lbpe", "n_bytes"] == 3 + 3 + 2 + 1 and df.loc["lbpe", "bytes_per_token"] == 9 / 4
    df2 = compression(ENC, n_bytes=100).set_index("encoding")
    assert df2.loc["bpe", "bytes_per_token"] == 12.5
    with pytest.raises(ValueError):
        compression(ENC)


def test_loss_by_token_length_known_answer():
    ids = [0, 2, 4, 4, 1]  # lengths 1, 2, 3, 3, 1
    losses = [1.0, 2.0, 3.0, 5.0, 3.0]
    df = loss_by_token_length({"lbpe": (ids, losses)}, LENGTHS).set_index("bucket")
    assert df.index.tolist() == ["1", "2", "3"]
    assert df["n_targets"].to_dict() == {"1": 2, "2": 1, "3": 2}
    assert df["mean_loss"].to_dict() == {"1": 2.0, "2": 2.0, "3": 4.0}
    assert df["n_bytes"].to_dict() == {"1": 2, "2": 2, "3": 6}
    assert math.isclose(df.loc["3", "bits_per_byte"], 8.0 / math.log(2) / 6)
    assert math.isclose(df["share_of_loss"].sum(), 1.0) and math.isclose(df.loc["3", "share_of_loss"], 8 / 14)
    b = loss_by_token_length({"x": (ids, losses)}, LENGTHS, bins=[1, 2, 4]).set_index("bucket")
    assert b.index.tolist() == ["1", "2-3", "4+"]
    assert b["n_targets"].tolist() == [2, 3, 0] and b.loc["2-3", "mean_loss"] == 10 / 3
    assert math.isnan(b.loc["4+", "mean_loss"])
    with pytest.raises(ValueError, match="losses"):
        loss_by_token_length({"x": ([0, 1], [1.0])}, LENGTHS)
    with pytest.raises(ValueError, match="bin"):
        loss_by_token_length({"x": (ids, losses)}, LENGTHS, bins=[2, 3])


def test_encoding_speed_with_fake_clock():
    ticks = iter(np.arange(0.0, 100.0, 1.0))  # each clock() call advances 1 s: every pass takes 1 s

    def factory():
        cache = {}

        def encode_batch(texts):
            return [cache.setdefault(t, [1] * len(t)) for t in texts]

        return encode_batch

    df = encoding_speed(
        ["abcd", "ef"], {"ours": factory, "theirs": factory}, warm={"theirs": False}, clock=lambda: next(ticks)
    )
    assert df[["encoder", "cache"]].values.tolist() == [["ours", "cold"], ["ours", "warm"], ["theirs", "cold"]]
    assert (df["seconds"] == 1.0).all() and (df["n_tokens"] == 6).all() and (df["n_bytes"] == 6).all()
    assert (df["tokens_per_s"] == 6.0).all() and (df["slowdown"] == 1.0).all()


def test_encoding_speed_real_encoders_smoke(bpe_tok):
    texts = ["To be, or not to be", "that is the question"] * 20
    df = encoding_speed(
        texts,
        {
            "hf": lambda: lambda xs: [e.ids for e in bpe_tok.encode_batch(xs)],
            "lbpe": lambda: LBPEEncoder(bpe_tok).encode_batch,
        },
        warm={"hf": False},
    )
    assert df["encoder"].tolist() == ["hf", "lbpe", "lbpe"] and (df["seconds"] > 0).all()
    assert df["slowdown"].min() == 1.0


def test_top_changed_and_segmentation_examples(bpe_tok, held_out_text):
    enc = {"bpe": [0, 0, 1], "lbpe": [2, 2, 2, 1]}
    df = top_changed_tokens(enc, ["a", "b", "abc"], n=5)
    assert df["token"].tolist() == ["abc", "a", "b"] and df["delta"].tolist() == [3, -2, 0]
    encs = {"bpe": BPEEncoder(bpe_tok), "lbpe": LBPEEncoder(bpe_tok)}
    ex = segmentation_examples(encs, held_out_text[:20_000], n=5)
    assert len(ex) == 5 and list(ex.columns) == ["word", "count", "bpe", "lbpe"]
    assert (ex["bpe"] != ex["lbpe"]).all() and ex["count"].is_monotonic_decreasing
    for _, row in ex.iterrows():
        assert row["bpe"].replace(" | ", "") == row["lbpe"].replace(" | ", "") == row["word"]


def test_plots_return_figures():
    import matplotlib.pyplot as plt

    figs = [
        plot_occurrence_by_length(occurrence_by_length(ENC, LENGTHS, V)),
        plot_occurrence_by_length(occurrence_by_length(ENC, LENGTHS, V), value="mean_per_entry", logy=False),
        plot_rank_frequency(rank_frequency(ENC)),
        plot_vocab_utilisation(vocab_utilisation(ENC, 6, V)),
        plot_loss_by_token_length(loss_by_token_length({"a": ([0, 2], [1.0, 2.0])}, LENGTHS)),
        plot_encoding_speed(
            pd.DataFrame({"encoder": ["hf", "lbpe"], "cache": ["cold", "warm"], "bytes_per_s": [2e6, 5e6]})
        ),
    ]
    for fig in figs:
        assert isinstance(fig, matplotlib.figure.Figure) and fig.axes
        plt.close(fig)
    assert len(figs[2].axes[0].lines) == 2  # one Zipf curve per encoding
