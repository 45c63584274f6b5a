"""LBPE replication (replicate/papers/lbpe/): bits per byte, equal-byte budgeting, continual pre-training,
frequency tables and claims. Uses the `smoke` configuration's data (38 plays cut to 8 KB each, vocab 512)."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from replicate import claims as C
from replicate.config import ConfigError
from replicate.data import lm
from replicate.data.evaluation import bits_per_byte, eval_set, eval_steps_at, nats_per_token, steps_for_bytes
from replicate.papers import lbpe, resolve_config
from replicate.papers.lbpe import experiments as lbpe_experiments


PAPER = "lbpe"  # the shared fixtures (conftest.py): env, cfg = its smoke config


@pytest.fixture(scope="module")
def data(env, cfg):
    return lbpe.data(cfg)


# ------------------------------------------------------------------------------------------------- config


def test_scales_resolve_and_unconfirmed_choices_switch(cfg):
    assert resolve_config("lbpe", "small").n_seeds == 3
    assert resolve_config("lbpe", "small").run_cpt is False  # continual pre-training is paper scale
    with pytest.raises(ConfigError, match="budget"):  # paper scale on this CPU: refused without force
        resolve_config("lbpe", "paper")
    with pytest.warns(UserWarning, match="budget"):
        assert resolve_config("lbpe", "paper", force=True).run_cpt and cfg.run_cpt  # ... and its path runs at smoke
    assert (cfg.lbpe_mode, cfg.tie_break) == ("scan", "leftmost")
    merge = resolve_config("lbpe", "smoke", lbpe_mode="merge", tie_break="rank")
    assert lbpe.lbpe_name(merge) != lbpe.lbpe_name(cfg)  # a different encoding is a different token cache / run
    with pytest.raises(ConfigError, match="lbpe_mode"):
        resolve_config("lbpe", "smoke", lbpe_mode="greedy")
    with pytest.raises(ConfigError, match="corpus"):
        resolve_config("lbpe", "smoke", corpus="wikipedia")


# ------------------------------------------------------------------------------------------ bits per byte


def test_both_encodings_cover_the_same_text(data):
    for e in lbpe.ENCODINGS:
        enc = data.encoders[e]
        for ids, doc in zip(data.train_ids[e][:5], data.train_docs[:5]):
            assert enc.decode(ids.tolist()) == doc.text
    assert not np.array_equal(data.streams["bpe"], data.streams["lbpe"])  # LBPE really segments differently
    assert data.byte_len[data.eos_id] == 0 and data.byte_len[data.encoders["bpe"].vocab["a"]] == 1


def test_eval_windows_predict_every_token_exactly_once(data, cfg):
    for e in lbpe.ENCODINGS:
        ev = data.eval_sets[e]
        assert ev.windows.shape[1] == cfg.seq_len + 1 and ev.mask.shape == (len(ev.windows), cfg.seq_len)
        targets = ev.targets[ev.mask].numpy()
        assert np.array_equal(targets, np.concatenate([np.asarray(x, dtype=np.int64) for x in data.eval_ids[e]]))
        assert ev.n_bytes == sum(len(d.text.encode("utf-8")) for d in data.eval_docs)  # the same bytes, both
        assert data.encoders[e].decode(targets.tolist()) == "".join(d.text for d in data.eval_docs)
        # every document's first prediction is made from the EOS that precedes it in the training stream
        assert int(ev.windows[0, 0]) == data.eos_id


def test_eval_set_padding_and_window_overlap():
    byte_len = np.array([0, 1, 2, 3])
    ev = eval_set([np.array([1, 2, 3, 1, 2]), np.array([3])], seq_len=3, eos_id=0, byte_len=byte_len)
    assert ev.windows.tolist() == [[0, 1, 2, 3], [3, 1, 2, 0], [0, 3, 0, 0]]
    assert ev.mask.tolist() == [[True] * 3, [True, True, False], [True, False, False]]
    assert ev.n_bytes == 1 + 2 + 3 + 1 + 2 + 3


def test_bits_per_byte_is_summed_nats_over_the_exact_byte_count(data):
    ev = data.eval_sets["lbpe"]
    g = torch.Generator().manual_seed(0)
    loss = torch.rand(ev.mask.shape, generator=g) * 5
    loss[~ev.mask] = 1e6  # padding must not count
    want = float(loss[ev.mask].double().sum()) / math.log(2) / sum(len(d.text.encode()) for d in data.eval_docs)
    assert bits_per_byte(loss, ev, data.byte_len) == pytest.approx(want, rel=1e-12)
    # a uniform model over V: bpb = log2|V| · tokens / bytes, so the encoding with more bytes per token scores
    # lower although its per-token loss is identical (why per-token loss is not comparable)
    V = data.tok.get_vocab_size()
    for e in lbpe.ENCODINGS:
        ev = data.eval_sets[e]
        uni = torch.full(ev.mask.shape, math.log(V))
        assert bits_per_byte(uni, ev, data.byte_len) == pytest.approx(
            math.log2(V) * int(ev.mask.sum()) / ev.n_bytes)
        assert nats_per_token(uni, ev) == pytest.approx(math.log(V))


# ------------------------------------------------------------------------------------ equal training bytes


def test_steps_for_bytes_counts_target_bytes_exactly():
    byte_len = np.array([0, 1, 2, 4])
    tokens = np.tile(np.array([1, 2, 3, 0], dtype=np.uint16), 500)
    b = lm.Batches((lm.Stream(tokens),), (1.0,), 4, 8, seed=3)
    cum = steps_for_bytes(b, byte_len, 1000)
    by_hand = np.cumsum([byte_len[b.batch(s)[:, 1:].numpy()].sum() for s in range(len(cum))])
    assert np.array_equal(cum, by_hand)
    assert cum[-1] >= 1000 and (len(cum) == 1 or cum[-2] < 1000)  # the smallest step count reaching the budget


def test_equal_training_bytes_for_both_encodings(data, cfg):
    big = dataclasses.replace(cfg, train_bytes=60_000)
    per_step = {}
    for e in lbpe.ENCODINGS:
        b = lbpe.lm_batches(big, data, e, seed=0)
        cum = steps_for_bytes(b, data.byte_len, big.train_bytes)
        one_batch = big.batch_size * big.seq_len * data.byte_len.max()
        assert big.train_bytes <= cum[-1] < big.train_bytes + one_batch
        per_step[e] = cum[-1] / len(cum)
        steps = eval_steps_at(cum, 3)
        assert len(steps) == 3 and all(1 <= s < len(cum) for s in steps)
    stream_bpt = {e: data.byte_len[data.streams[e].astype(np.int64)].sum() / len(data.streams[e])
                  for e in lbpe.ENCODINGS}
    # bytes per step follow the stream's bytes per token, so the steps differ and the bytes do not
    for e in lbpe.ENCODINGS:
        assert per_step[e] / (big.batch_size * big.seq_len) == pytest.approx(stream_bpt[e], rel=0.05)


def test_run_lm_trains_both_encodings_on_the_same_bytes(data, cfg):
    one = dataclasses.replace(cfg, n_seeds=1)
    runs = lbpe.run_lm(one, data)
    frame = lbpe.lm_frame(runs, data)
    t1 = lbpe.table1(frame, data)
    assert list(t1["encoding"]) == ["bpe", "lbpe"]
    assert (t1["train_bytes"] >= one.train_bytes).all()
    assert (t1["eval_bytes"] == t1["eval_bytes"].iloc[0]).all()
    final = frame[frame["final"]]
    assert np.isfinite(final["bpb"]).all() and (final["bpb"] > 0).all()
    # untrained, a model would be at about log2|V| bits per token; training must have moved it well below
    for _, r in final.iterrows():
        bpt = data.eval_sets[r["encoding"]].n_bytes / int(data.eval_sets[r["encoding"]].mask.sum())
        assert r["bpb"] < math.log2(data.tok.get_vocab_size()) / bpt


# -------------------------------------------------------------------------------- continual pre-training


def test_cpt_switches_encoding_and_continues_phase1(data, cfg, monkeypatch):
    calls = []

    def fake_train(paper_id, spec, batches, eval_sets, *, keep_weights=False, parent=None, **kw):
        calls.append({"spec": spec, "batches": batches, "keep": keep_weights, "parent": parent})
        W, T1 = next(iter(eval_sets.values())).shape
        out = {"key": spec.key, "final": {"heldout": torch.full((W, T1 - 1), 2.0)}, "evals": {}, "wall_s": 0.0,
               "n_params": 1}
        if keep_weights:
            out["state_dict"] = {}
        return out

    monkeypatch.setattr(lbpe_experiments, "train", fake_train)
    c = dataclasses.replace(cfg, cpt_n_seeds=1, train_bytes=20_000)
    runs = lbpe.run_cpt(c, data)
    phase1, arms = calls[0], calls[1:]
    assert phase1["keep"] and phase1["batches"].streams[0].tokens is data.streams["bpe"]
    assert [r["encoding"] for r in runs] == ["bpe", "lbpe"]
    s1 = runs[0]["phase1_steps"]
    full = steps_for_bytes(lbpe.lm_batches(c, data, "bpe", c.seed), data.byte_len, c.train_bytes)
    assert full[s1 - 1] >= c.cpt_switch_frac * full[-1] > (full[s1 - 2] if s1 > 1 else 0)
    # phase 1 is the first s1 steps of the whole BPE run: its learning rate follows the whole schedule
    sched = phase1["spec"].lr_map.schedule
    assert sched.max_steps == len(full) and phase1["spec"].optim.max_steps == s1 and phase1["spec"].lr_map.offset == 0
    for e, call, r in zip(lbpe.ENCODINGS, arms, runs):
        assert call["batches"].streams[0].tokens is data.streams[e]  # the encoder switches ...
        assert call["spec"].init_from == phase1["spec"].key and call["parent"]["key"] == phase1["spec"].key  # ... weights kept
        assert call["spec"].model.vocab_size == phase1["spec"].model.vocab_size
        assert call["spec"].lr_map.schedule == sched and call["spec"].lr_map.offset == s1  # ... the schedule continues
        assert r["phase1_bytes"] + r["phase2_bytes"] >= c.train_bytes
    # the BPE arm continues phase 1's data order exactly
    base = lbpe.lm_batches(c, data, "bpe", c.seed)
    assert torch.equal(arms[0]["batches"].batch(0), base.batch(s1))
    frame = lbpe.cpt_frame(runs, data)
    assert list(frame["arm"]) == ["BPE → BPE", "BPE → LBPE"] and C.paired_gap(frame, "bpe", "lbpe").shape == (1,)


# ------------------------------------------------------------------------------------ frequency analyses


def test_frequency_tables_totals(data, cfg):
    f = lbpe.frequency(cfg, data)
    ids = lbpe.freq_ids(cfg, data)
    for e in lbpe.ENCODINGS:
        n = sum(len(x) for x in ids[e])
        occ = f["occurrence"][f["occurrence"]["encoding"] == e]
        assert occ["occurrences"].sum() == n  # every token counted once, under its length
        assert occ["share"].sum() == pytest.approx(1.0)
        assert occ["n_vocab"].sum() == len(data.encoders["bpe"].vocab)
        comp = f["compression"].set_index("encoding").loc[e]
        assert comp["n_tokens"] == n
        assert comp["n_bytes"] == sum(len(d.text.encode()) for d in (*data.train_docs, *data.heldout_docs))
    blocks = lbpe.block_counts(ids["lbpe"], data.encoders["bpe"].vocab_size, n_blocks=7)
    assert blocks.shape[0] == 7 and blocks.sum() == sum(len(x) for x in ids["lbpe"])


def test_frequency_stats_known_answer():
    lengths = [1, 1, 2, 3, 4, 5]  # ids 0-5
    groups = lbpe.length_groups(lengths, range(6), long_min=4)
    assert [g.tolist() for g in groups.values()] == [[0, 1], [2, 3], [4, 5]]
    counts = {"bpe": np.array([10, 10, 8, 4, 1, 1]), "lbpe": np.array([12, 10, 4, 2, 3, 3])}
    st = lbpe.frequency_stats(counts, groups)
    assert st["c1_ratio"] == pytest.approx((32 / 4) / (2 / 2))
    assert st["ratio_long"] == pytest.approx(6 / 2)
    assert st["ratio_short"] == pytest.approx(6 / 12)
    assert st["ratio_single"] == pytest.approx(22 / 20)


def test_frequency_bootstrap_brackets_the_point(data, cfg):
    fb = lbpe.freq_boot(dataclasses.replace(cfg, n_boot=40), data)
    point, boot = fb.point, fb.boot
    assert len(boot) == 40
    for k in ("c1_ratio", "ratio_long", "ratio_short", "ratio_single", "gini_delta"):
        assert boot[k].min() <= point[k] <= boot[k].max()


# ----------------------------------------------------------------------------------------------- claims


def _frame(bpe, lb):
    rows = [{"encoding": e, "seed": s, "bpb": v, "final": True} for e, vals in (("bpe", bpe), ("lbpe", lb))
            for s, v in enumerate(vals)]
    return pd.DataFrame(rows)


def test_lm_verdict_needs_the_gap_to_exceed_the_seed_spread():
    def verdict(frame):
        return C.seed_gap_claim("x", "c", C.paired_gap(frame, "bpe", "lbpe"), metric="m").verdict

    assert verdict(_frame([1.50, 1.52, 1.51], [1.40, 1.42, 1.41])) == "reproduced"
    assert verdict(_frame([1.40, 1.42, 1.41], [1.50, 1.52, 1.51])) == "not_reproduced"
    assert verdict(_frame([1.50, 1.40, 1.45], [1.41, 1.50, 1.44])) == "inconclusive"
    assert verdict(_frame([1.5], [1.0])) == "inconclusive"
    same = _frame([1.50, 1.52, 1.51], [1.50, 1.52, 1.51])  # two identical arms: no effect, never "reproduced"
    assert verdict(same) == "inconclusive"


def test_complexity_slope_known_answer():
    n = np.array([100, 200, 400, 800])
    frame = pd.DataFrame({"encoder": ["lbpe"] * 4 + ["bpe"] * 4, "length": np.r_[n, n],
                          "seconds": np.r_[1e-6 * n * (1 + 0.01 * np.arange(4)), 1e-9 * n ** 2]})
    s, ci = lbpe.loglog_slope(frame, "lbpe")
    assert s == pytest.approx(1.0, abs=0.02) and ci[1] < 1.5
    assert lbpe.loglog_slope(frame, "bpe")[0] == pytest.approx(2.0)


def test_segmentation_example_is_the_spec_worked_example(data, cfg):
    seg = lbpe.segmentation(cfg, data)
    assert (seg.loc[0, "bpe"], seg.loc[0, "lbpe"]) == ("ab | c | d", "a | bcd")
    for _, r in seg.iloc[1:].iterrows():
        assert r["bpe"] != r["lbpe"] and r["bpe"].replace(" | ", "") == r["lbpe"].replace(" | ", "")


# ------------------------------------------------------------------------------------------- Scaffold-BPE


@pytest.fixture(scope="module")
def sdata(data, cfg):
    return lbpe.scaffold_data(cfg, data)


def test_scaffold_arm_keeps_bpe_embedding_size_and_text(sdata, data, cfg):
    assert sdata.n_ids == data.n_ids == cfg.vocab_size  # as many usable ids as BPE: the same model
    assert len(sdata.byte_len) > sdata.n_ids  # the scaffolds are extra entries, above the usable ids
    assert set(sdata.encoders) == {"scaffold_bpe", "scaffold_lbpe"}
    for e, enc in sdata.encoders.items():
        for ids, doc in zip(sdata.train_ids[e][:5], sdata.train_docs[:5]):
            assert enc.decode(ids.tolist()) == doc.text
        assert max(int(a.max()) for a in sdata.train_ids[e] if len(a)) < sdata.n_ids  # no scaffold emitted
        assert sdata.eval_sets[e].n_bytes == data.eval_sets["bpe"].n_bytes  # the same evaluated bytes
    assert not np.array_equal(sdata.streams["scaffold_bpe"], sdata.streams["scaffold_lbpe"])


def test_scaffold_summary_rows(sdata, data, cfg):
    t = lbpe.scaffold_summary(cfg, data, sdata)
    assert list(t["encoding"]) == ["bpe", "lbpe", "scaffold_bpe", "scaffold_lbpe"]
    assert (t["scaffold_ids_emitted"] == 0).all()
    assert (t["usable_vocab"] == cfg.vocab_size - 1).all()  # every id but EOS
    assert (t.set_index("encoding").loc[["bpe", "lbpe"], "scaffolds"] == 0).all()
    assert (t.set_index("encoding").loc[["scaffold_bpe", "scaffold_lbpe"], "scaffolds"] > 0).all()
    # the same text under every encoding: tokens x bytes per token is the same byte count
    nbytes = t["tokens"] * t["bytes_per_token"]
    assert np.allclose(nbytes, nbytes.iloc[0])


def test_scaffold_claim_is_paired_by_seed_and_not_run_without_runs(data, cfg):
    f = _frame([1.50, 1.52, 1.51], [1.40, 1.42, 1.41]).replace({"encoding": {"bpe": "scaffold_bpe",
                                                                              "lbpe": "scaffold_lbpe"}})
    gap = C.paired_gap(f, "scaffold_bpe", "scaffold_lbpe")
    assert np.allclose(gap.to_numpy(), 0.10)
    assert C.seed_gap_claim("C4-scaffold", "c", gap, metric="m").verdict == "reproduced"
    assert dataclasses.replace(cfg, scaffold_compose="demolish") != cfg
    with pytest.raises(ConfigError, match="scaffold_compose"):
        resolve_config("lbpe", "smoke", scaffold_compose="both")
    assert resolve_config("lbpe", "small").run_scaffold is False and cfg.run_scaffold
