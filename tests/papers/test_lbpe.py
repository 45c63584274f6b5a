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
    assert resolve_config("lbpe", "small").n_seeds >= 3
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
    with pytest.raises(ConfigError, match="lm_arms"):  # bpe and lbpe always; other arms only among extra_arms
        resolve_config("lbpe", "smoke", lm_arms=("bpe", "maxmatch"))
    with pytest.raises(ConfigError, match="lm_arms"):
        resolve_config("lbpe", "smoke", lm_arms=("bpe", "lbpe", "maxmatch"), extra_arms=("lbpe_merge",))
    small = resolve_config("lbpe", "small")
    assert small.lm_arms == lbpe.ENCODINGS and set(small.extra_arms) == set(lbpe.OTHER_ARMS)  # other arms: frequency
    assert set(resolve_config("lbpe", "paper", force=True).lm_arms) == set(lbpe.ENCODINGS + lbpe.OTHER_ARMS)


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
    runs = lbpe.run_lm(one, data, arms=lbpe.ENCODINGS)
    frame = lbpe.lm_frame(runs, data)
    t1 = lbpe.table1(frame, data)
    assert list(t1["encoding"]) == ["bpe", "lbpe"]
    assert (t1["evals_averaged"] == one.last_evals).all()  # the score is the mean of the last evaluations
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
    assert phase1["keep"] and phase1["batches"].tokens is data.streams["bpe"]
    assert [r["encoding"] for r in runs] == ["bpe", "lbpe"]
    s1 = runs[0]["phase1_steps"]
    full = steps_for_bytes(lbpe.lm_batches(c, data, "bpe", c.seed), data.byte_len, c.train_bytes)
    assert full[s1 - 1] >= c.cpt_switch_frac * full[-1] > (full[s1 - 2] if s1 > 1 else 0)
    # phase 1 is the first s1 steps of the whole BPE run: its learning rate follows the whole schedule
    sched = phase1["spec"].lr_map.schedule
    assert sched.max_steps == len(full) and phase1["spec"].optim.max_steps == s1 and phase1["spec"].lr_map.offset == 0
    for e, call, r in zip(lbpe.ENCODINGS, arms, runs):
        assert call["batches"].tokens is data.streams[e]  # the encoder switches ...
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
    assert st["ratio_lt_long"] == pytest.approx((22 + 6) / (20 + 12))  # the paper's grouping: < 4 bytes
    assert st["unused_delta"] == 0
    same = lbpe.frequency_stats({"bpe": counts["bpe"], "lbpe": counts["bpe"]}, groups, lengths=np.array(lengths))
    assert (same["gini_delta"], same["entropy_delta"], same["unused_delta"]) == (0, 0, 0)  # null case
    assert all(same[f"len_ratio_{L}"] == 1 for L in (1, 2, 3, 4, 5))


def test_frequency_bootstrap_brackets_the_point(data, cfg):
    fb = lbpe.freq_boot(dataclasses.replace(cfg, n_boot=40), data)
    point, boot = fb.point, fb.boot
    assert len(boot) == 40
    for k in ("c1_ratio", "ratio_long", "ratio_short", "ratio_single", "gini_delta", "entropy_delta",
              "unused_delta", "ratio_lt_long", "len_ratio_1"):
        assert boot[k].min() <= point[k] <= boot[k].max()
    assert len(fb.heldout_boot) == 40 and fb.heldout_blocks >= 2
    for k in ("gini_delta", "entropy_delta", "ratio_single"):  # held-out text only (C3-flat), paired byte blocks
        assert fb.heldout_boot[k].min() <= fb.heldout_point[k] <= fb.heldout_boot[k].max()


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
    assert list(t["encoding"]) == ["bpe", "lbpe", *cfg.extra_arms, "scaffold_bpe", "scaffold_lbpe"]
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


# ------------------------------------------------------------------------------ issue #13: baselines, pairing, rules


from replicate.papers.lbpe import baselines as B  # noqa: E402
from replicate.papers.lbpe import report as R  # noqa: E402
from replicate.tokenization.words import bpe_encode_word  # noqa: E402


def test_heap_bpe_equals_the_naive_loop_and_hf(data):
    import random

    bpe = data.encoders["bpe"]
    heap = B.HeapBPEEncoder(data.tok)
    text = "".join(d.text for d in data.eval_docs)
    assert heap.encode(text) == bpe.encode(text) == data.tok.encode(text).ids
    rng = random.Random(0)
    alphabet = sorted({t for t in bpe.vocab if len(t) == 1 and t.isalpha()})[:8] + ["Ġ"]
    for _ in range(500):  # repeated symbols exercise overlapping pairs ("aaaa")
        w = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert B.heap_bpe_encode_word(list(w), bpe.merge_ranks) == bpe_encode_word(list(w), bpe.merge_ranks), w
    ranks = {("a", "a"): 0, ("aa", "a"): 1}
    for n in range(1, 8):
        assert B.heap_bpe_encode_word(list("a" * n), ranks) == bpe_encode_word(list("a" * n), ranks)


def test_maxmatch_is_the_longest_prefix_first(data):
    vocab = {"a": 0, "b": 1, "c": 2, "d": 3, "ab": 4, "bc": 5, "bcd": 6}
    assert B.maxmatch_encode_word(list("abcd"), vocab, 3) == ["ab", "c", "d"]  # longest prefix at each position
    assert B.maxmatch_encode_word(list("bcda"), vocab, 3) == ["bcd", "a"]
    mm = data.encoders["maxmatch"]
    for ids, doc in zip(data.eval_ids["maxmatch"], data.eval_docs):
        assert mm.decode(ids.tolist()) == doc.text
    for w in list(mm._raw_cache)[:300]:
        units = list(w.encode("utf-8").decode("latin-1").translate(mm._byte_table))
        assert mm._encode_units("".join(units)) == B.maxmatch_encode_word(units, mm.vocab, mm.max_len)


def test_operation_counts_separate_linear_from_quadratic(data, cfg):
    lb, heap, naive = data.encoders["lbpe"], B.HeapBPEEncoder(data.tok), data.encoders["bpe"]
    ops = {e: [B.count_ops(enc, lbpe.long_word(data, n)) for n in (400, 800, 1600)]
           for e, enc in (("lbpe", lb), ("heap", heap), ("naive", naive))}
    for n, o in zip((400, 800, 1600), ops["lbpe"]):
        assert o <= (lb.max_len - 1) * n  # at most m - 1 window checks per start position
    assert ops["lbpe"][2] / ops["lbpe"][0] == pytest.approx(4, rel=0.15)  # 4x the length, 4x the work
    assert ops["heap"][2] / ops["heap"][0] == pytest.approx(4, rel=0.2)
    # superlinear: every pass rescans the word (passes are bounded by the merges that apply, so below 16x)
    assert ops["naive"][2] / ops["naive"][0] > 5


def test_complexity_rows_and_m_sweep(data, cfg):
    cx = lbpe.complexity(cfg, data)
    f = cx.frame
    assert set(f["encoder"]) == {"lbpe", "bpe_heap", "bpe_naive"}
    assert (f.groupby("length")["n_tokens"].nunique() >= 1).all()
    assert len(cx.m_sweep) == len(cfg.ablation_vocab_sizes) and cx.m_sweep["within_bound"].all()
    assert cx.m_sweep["m"].is_monotonic_increasing


def test_aligned_batches_pair_the_text(data, cfg):
    """Both encodings' rows of a (seed, step) start at the same byte of the training text, or within a token of it."""
    b = {e: lbpe.lm_batches(cfg, data, e, seed=3) for e in lbpe.ENCODINGS}
    assert b["bpe"].limit == b["lbpe"].limit
    m = data.encoders["bpe"].max_len
    text = lambda e, ids: data.encoders[e].decode_bytes([i for i in ids if i != data.eos_id])  # EOS: 0 bytes
    full = {e: text(e, data.streams[e].tolist()) for e in lbpe.ENCODINGS}
    assert full["bpe"] == full["lbpe"]  # the same training text under both encodings
    for step in (0, 5):
        offs = np.random.default_rng([3, step]).integers(0, b["bpe"].limit, cfg.batch_size)
        for e in lbpe.ENCODINGS:
            rows = b[e].batch(step).numpy()
            for i, off in enumerate(offs):
                first = int(np.searchsorted(b[e].starts, off))
                start = int(b[e].starts[first])
                assert off <= start < off + m  # the row starts at the first token at or after the drawn byte
                assert full[e][start:start + 20] == text(e, rows[i].tolist())[:20]
    other = lbpe.lm_batches(cfg, data, "bpe", seed=4)
    assert not torch.equal(other.batch(0), b["bpe"].batch(0))
    assert torch.equal(dataclasses.replace(b["bpe"], offset=2).batch(0), b["bpe"].batch(2))


def test_eval_schedule_ends_with_the_last_evaluations(cfg):
    c = dataclasses.replace(cfg, last_evals=3, last_eval_span=0.2, n_eval_checkpoints=2)
    cum = np.arange(1, 101) * 10
    evals, last = lbpe.eval_schedule(c, cum)
    assert last[-1] == 100 and len(last) == 3 and last[0] >= 80
    assert set(last[:-1]) <= set(evals) and 100 not in evals


def test_flatness_needs_every_metric_to_agree():
    assert R.agree(["reproduced"] * 3) == ("reproduced", False)
    assert R.agree(["not_reproduced"] * 3) == ("not_reproduced", False)
    assert R.agree(["reproduced", "not_reproduced", "not_reproduced"]) == ("inconclusive", True)  # mixed
    assert R.agree(["reproduced", "inconclusive", "reproduced"]) == ("inconclusive", False)


def test_equivalence_margin_and_minimum_detectable_effect():
    def claim(gaps):
        c = C.seed_gap_claim("x", "c", gaps, metric="m", need=True)
        return R.with_equivalence(c, C.t_interval(gaps), 0.02)

    assert claim([0.0, 0.0, 0.0]).verdict == "not_reproduced"  # identical arms: never reproduced; equivalent
    assert claim([0.003, -0.002, 0.001, 0.0]).verdict == "not_reproduced"  # inside ±0.02: no effect that large
    assert claim([0.05, 0.06, 0.055]).verdict == "reproduced"
    # an interval that excludes 0 but lies inside the margin: no effect larger than the margin (was "reproduced")
    inside = claim([0.005, 0.006, 0.0055, 0.0052])
    assert inside.verdict == "not_reproduced" and "statistically non-zero but below the margin" in inside.evidence
    assert claim([-0.005, -0.006, -0.0055]).verdict == "not_reproduced"
    assert claim([0.05, -0.04, 0.01]).verdict == "inconclusive"  # wider than the margin, straddles 0
    assert "paired seeds" in claim([0.05, -0.04, 0.01]).ours_ci
    from scipy import stats

    assert R.min_detectable(0.01, 4) == pytest.approx((stats.t.ppf(0.975, 3) + stats.t.ppf(0.8, 3)) * 0.01 / 2)


def test_equivalence_is_reachable_only_with_enough_seeds():
    # the committed small run: gap std 0.0134 over 4 seeds, margin 0.02 (referee audit F3)
    assert R.seeds_for_equivalence(0.0134, 0.02) == 5 and R.seeds_for_equivalence(0.0134, 0.02, 0.0075) == 7
    assert R.equivalence_reach(0.0134, 4, 0.02, -0.0075).startswith("equivalence unreachable at 4 seeds")
    assert R.equivalence_reach(0.0134, 7, 0.02, -0.0075).startswith("equivalence reachable")
    assert R.seeds_for_equivalence(0.01, 0.02, 0.03) is None  # a gap beyond the margin is never equivalent


def test_bootstrap_block_size_is_at_least_20_kb():
    for scale in ("small", "paper"):
        assert resolve_config("lbpe", scale, force=True).block_bytes >= 20_000  # blocks of 2 kB were too correlated


def test_basic_interval_brackets_a_biased_statistic():
    reps = np.array([80.0, 70, 60, 75, 65] * 20)  # resamples biased below the point (never-seen entries)
    q = C.percentile_interval(reps)
    assert q[1] < 91  # the percentile interval excludes its own point (the audit's "+91 [+55, +88]")
    assert R.basic_interval(91.0, reps) == pytest.approx((2 * 91 - q[1], 2 * 91 - q[0]))  # reflected: bias removed
    assert R.basic_interval(5.0, np.full(10, 5.0)) == (5.0, 5.0)


def test_tie_break_check_rows(data, cfg):
    t = lbpe.tie_break_check(cfg, data).set_index("tie_break")
    assert list(t.index) == ["leftmost", "rank"] and t.loc["leftmost", "default"]
    fb = lbpe.freq_boot(dataclasses.replace(cfg, n_boot=10, freq_corpus="heldout"), data)
    assert t.loc["leftmost", "single_ratio"] == pytest.approx(fb.point["ratio_single"])  # the same held-out counts


def test_count_arm_is_paired_and_deterministic(data, cfg):
    ca = lbpe.count_arm(dataclasses.replace(cfg, n_boot=30), data)
    f = ca.frame.set_index(["model", "encoding"])
    nbytes = sum(len(d.text.encode()) for d in data.heldout_docs)
    assert (f["bytes"] == nbytes).all()  # the same bytes, every arm and order
    assert set(ca.frame["model"]) == {"bigram", "trigram"}
    assert ca.block_bytes == cfg.block_bytes and ca.n_blocks == nbytes // cfg.block_bytes + 1
    assert ((ca.boot["bigram:bpe"] - ca.boot["bigram:bpe"]) == 0).all() and len(ca.boot) == 30
    assert (f.xs("trigram")["bpb"] < f.xs("bigram")["bpb"]).all()  # the trigram has more context
    per = ca.per_doc[(ca.per_doc["model"] == "bigram") & (ca.per_doc["encoding"] == "bpe")]
    assert len(per) == len(data.heldout_docs) and per["bytes"].sum() == nbytes
    # the per-play bits per byte combine to the whole text's
    assert (per["bpb"] * per["bytes"]).sum() / nbytes == pytest.approx(f.loc[("bigram", "bpe"), "bpb"])
    again = lbpe.count_arm(dataclasses.replace(cfg, n_boot=30), data)
    assert again.frame.equals(ca.frame) and again.boot.equals(ca.boot)


def test_lm_claim_is_invalid_when_a_run_does_not_beat_the_bigram(cfg):
    from types import SimpleNamespace

    frame = pd.DataFrame([{"encoding": e, "seed": s, "step": 10, "final": True, "last": True, "bpb": v,
                           "nats_per_token": v * 2, "train_bytes": 100, "train_tokens": 40, "wall_s": 1.0,
                           "n_params": 10} for e, v in (("bpe", 2.0), ("lbpe", 2.1)) for s in (0, 1, 2)])
    bars = pd.DataFrame([{"encoding": e, "seed": s, "unigram": 6.0, "full_bigram": 4.1, "seen_bigram": 4.5,
                          "unigram_bpb": 3.0, "full_bigram_bpb": 2.05, "seen_bigram_bpb": 2.2, "seen_trigram": 4.3,
                          "seen_trigram_bpb": 2.15, "full_trigram": 3.9, "full_trigram_bpb": 1.95}
                         for e in ("bpe", "lbpe") for s in (0, 1, 2)])
    b = SimpleNamespace(lm_runs=SimpleNamespace(frame=frame, bars=bars), cfg=cfg, data=SimpleNamespace(n_ids=512))
    v = R.lm_validity(b)
    assert not v.ok and "lbpe/seed 0" in "; ".join(v.failures) and " bpe/seed 0" not in "; ".join(v.failures)
    ok = SimpleNamespace(lm_runs=SimpleNamespace(frame=frame, bars=bars.assign(full_bigram=4.5, full_bigram_bpb=2.2)),
                         cfg=cfg, data=SimpleNamespace(n_ids=512))
    assert R.lm_validity(ok).ok  # above the whole-text trigram (3.9 nats) is reported, not a condition
    assert not R.validity_table(ok)["beats_full_trigram"].any()
    tri = SimpleNamespace(lm_runs=SimpleNamespace(frame=frame, bars=bars.assign(full_bigram=4.5, seen_trigram=4.1)),
                          cfg=cfg, data=SimpleNamespace(n_ids=512))
    v = R.lm_validity(tri)  # every run above the trigram of its own training windows: invalid
    assert not v.ok and "trigram of their own training windows" in "; ".join(v.failures)


def test_single_byte_positions_add_up(data, cfg):
    sb = lbpe.single_bytes(cfg, data).set_index("encoding")
    occ = lbpe.frequency(cfg, data)["occurrence"]
    for e in lbpe.ENCODINGS:
        ones = int(occ[(occ["encoding"] == e) & (occ["token_len"] == 1)]["occurrences"].sum())
        assert sb.loc[e, "total"] == ones  # every single-byte token placed exactly once
        assert sb.loc[e, "first_space"] <= sb.loc[e, "first"]


def _ns(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(**kw)


def _flat_bundle(point, boot):
    return _ns(freq_boot=_ns(point=point, boot=boot, heldout_point=point, heldout_boot=boot, heldout_blocks=20))


def test_flatness_claim_null_and_mixed_cases(cfg):
    zeros = pd.DataFrame({k: np.zeros(50) for k in ("gini_delta", "entropy_delta", "unused_delta")})
    null = _flat_bundle({"gini_delta": 0.0, "entropy_delta": 0.0, "unused_delta": 0.0}, zeros)
    assert R._flat_claim(cfg, null).verdict == "inconclusive"  # identical encodings: never "reproduced"
    rng = np.random.default_rng(0)
    flatter = pd.DataFrame({"gini_delta": -0.01 + 0.001 * rng.standard_normal(50),
                            "entropy_delta": 0.05 + 0.005 * rng.standard_normal(50),
                            "unused_delta": -20 + rng.standard_normal(50)})
    point = {k: float(flatter[k].mean()) for k in flatter}
    assert R._flat_claim(cfg, _flat_bundle(point, flatter)).verdict == "reproduced"
    mixed = flatter.assign(entropy_delta=-flatter["entropy_delta"])  # Gini flatter, entropy less flat
    c = R._flat_claim(cfg, _flat_bundle({**point, "entropy_delta": -point["entropy_delta"]}, mixed))
    assert c.verdict == "inconclusive" and c.evidence.startswith("mixed") and c.ours_value is None
    # unused entries are judged on the basic interval, not the percentile one
    biased = flatter.assign(unused_delta=-30 + rng.standard_normal(50))
    lo, hi = R.basic_interval(point["unused_delta"], biased["unused_delta"])
    assert f"[{lo:+.4g}, {hi:+.4g}]" in R._flat_claim(cfg, _flat_bundle(point, biased)).ours_ci


def _count_bundle(gaps: dict, n=40, sd=0.001):
    """A count arm whose BPE − LBPE gap is ``gaps[model]`` per order, resampled with noise ``sd``."""
    rng = np.random.default_rng(1)
    rows, boot = [], {}
    for m, g in gaps.items():
        rows += [{"model": m, "encoding": "bpe", "bpb": 2.4 + g}, {"model": m, "encoding": "lbpe", "bpb": 2.4}]
        boot[f"{m}:bpe"] = 2.4 + g + sd * rng.standard_normal(n)
        boot[f"{m}:lbpe"] = np.full(n, 2.4)
    per = pd.DataFrame(columns=["model", "encoding", "play", "bytes", "bpb"])
    return _ns(count_arm=_ns(frame=pd.DataFrame(rows), boot=pd.DataFrame(boot), per_doc=per, n_blocks=30,
                             block_bytes=20_000))


def test_count_claim_identical_arms_are_never_reproduced(cfg):
    c = R._count_claim(cfg, _count_bundle({"bigram": 0.0, "trigram": 0.0}, sd=0.0))
    assert c.verdict == "not_reproduced" and "equivalent" in c.evidence  # no effect larger than the margin
    assert R._count_claim(cfg, _count_bundle({"bigram": 0.05, "trigram": 0.04})).verdict == "reproduced"
    # both orders clearly non-zero but inside ±0.02: was "reproduced", now no effect larger than the margin
    small = R._count_claim(cfg, _count_bundle({"bigram": 0.0074, "trigram": 0.006}))
    assert small.verdict == "not_reproduced" and "statistically non-zero but below the margin" in small.evidence
    # the orders point opposite ways: mixed, inconclusive
    c = R._count_claim(cfg, _count_bundle({"bigram": 0.05, "trigram": -0.05}))
    assert c.verdict == "inconclusive" and c.evidence.startswith("mixed")
    # one order decides, the other straddles 0 outside the margin: they do not agree, inconclusive
    wide = _count_bundle({"bigram": 0.05, "trigram": 0.0}, sd=0.001)
    wide.count_arm.boot["trigram:bpe"] = 2.4 + 0.03 * np.random.default_rng(2).standard_normal(40)
    assert R._count_claim(cfg, wide).verdict == "inconclusive"


def test_complexity_claim_rejects_quadratic_work(cfg):
    n = np.array([1000, 2000, 4000, 8000])

    def bundle(ops_lbpe):
        rows = [{"encoder": e, "length": L, "ops": o, "seconds": 1e-6 * o, "max_token_len": 14}
                for e, opss in (("lbpe", ops_lbpe), ("bpe_heap", 2 * n), ("bpe_naive", n ** 2))
                for L, o in zip(n, opss)]
        f = pd.DataFrame(rows)
        encs = f["encoder"].unique()
        ms = pd.DataFrame({"vocab_size": [2048], "m": [14], "ops_per_byte": [2.0], "bound_m_per_byte": [14],
                           "within_bound": [True]})
        return _ns(complexity=lbpe.Complexity(f, {e: lbpe.loglog_slope(f, e) for e in encs},
                                              {e: lbpe.loglog_slope(f, e, "ops")[0] for e in encs}, ms))

    assert R._complexity_claim(cfg, bundle(2 * n)).verdict == "reproduced"
    assert R._complexity_claim(cfg, bundle(n ** 2 // 100)).verdict != "reproduced"  # quadratic work
