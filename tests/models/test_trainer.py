"""The run cache: finished runs are reused, killed runs resume to the same numbers, corrupt files are rebuilt."""

import dataclasses
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from replicate.models.lm import CausalLM, LRMap, OptimConfig, lr_at
from replicate.models.trainer import continued, prefetch, train

sys.path.insert(0, str(Path(__file__).parent))
import tiny_run  # noqa: E402

SCRIPT = Path(__file__).parent / "tiny_run.py"


def _same(a, b):
    assert a["evals"].keys() == b["evals"].keys()
    for name in a["evals"]:
        assert a["evals"][name].keys() == b["evals"][name].keys()
        for step in a["evals"][name]:
            assert torch.equal(a["evals"][name][step], b["evals"][name][step]), (name, step)
    for name in a["final"]:
        assert torch.equal(a["final"][name], b["final"][name])


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICATE_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def test_lr_schedule():
    o = OptimConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, o) == pytest.approx(0.1)
    assert lr_at(9, o) == pytest.approx(1.0)
    assert lr_at(10, o) == pytest.approx(1.0)
    assert lr_at(60, o) == pytest.approx(0.55)
    assert lr_at(110, o) == pytest.approx(0.1)


def test_a_finished_run_is_reused(runs):
    b, ev = tiny_run.data()
    first = train("tiny", tiny_run.spec(20), b, ev)
    assert first["final"]["val"].shape == (8, 32)
    assert sorted(first["evals"]["val"]) == [5, 15, 20]
    t = time.perf_counter()
    again = train("tiny", tiny_run.spec(20), b, ev)
    assert time.perf_counter() - t < 1.0  # loaded, not retrained
    _same(first, again)
    assert not (runs / "tiny" / tiny_run.spec(20).key / "ckpt").exists()


def test_prefetch_trains_in_workers_and_the_caller_reads_the_cache(runs, tmp_path, monkeypatch):
    calls = [functools.partial(tiny_run.train_seed, 20, s) for s in (0, 1)]
    prefetch(calls, workers=2, threads=1)
    for s in (0, 1):
        assert (runs / "tiny" / dataclasses.replace(tiny_run.spec(20), seed=s).key / "result.pt").exists()
    t = time.perf_counter()
    cached = [c() for c in calls]
    assert time.perf_counter() - t < 2.0  # read from the cache, not retrained
    assert not torch.equal(cached[0]["final"]["val"], cached[1]["final"]["val"])  # two runs, not one twice
    monkeypatch.setenv("REPLICATE_RUNS", str(tmp_path / "fresh"))
    for c, r in zip(calls, cached):
        _same(c(), r)  # trained here, at the same thread count: the same numbers as in the worker
    with pytest.raises(ValueError, match="fails in its worker"):
        prefetch([tiny_run.fail, functools.partial(tiny_run.train_seed, 20, 2)], workers=2)


def test_prefetch_from_a_script_on_stdin_warns_and_leaves_the_runs_to_the_caller(tmp_path):
    script = ("import functools, sys\n"
              f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "import tiny_run\n"
              "from replicate.models.trainer import prefetch\n"
              "prefetch([functools.partial(tiny_run.train_seed, 5, s) for s in (0, 1)], 2)\n"
              "print('returned')\n")
    env = dict(os.environ, REPLICATE_RUNS=str(tmp_path / "runs"))
    out = subprocess.run([sys.executable, "-"], input=script, text=True, capture_output=True, env=env, timeout=300)
    assert out.returncode == 0 and "returned" in out.stdout
    assert "prefetch: the worker processes stopped" in out.stderr  # spawned workers cannot import <stdin>


def _kill_at_checkpoint(cmd, env, ckpt: Path, out: Path):
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run finished before it could be killed"


def test_sigkill_then_rerun_gives_the_uninterrupted_numbers(tmp_path):
    env = {**os.environ, "REPLICATE_RUNS": str(tmp_path / "a")}
    subprocess.run([sys.executable, SCRIPT, tmp_path / "ref.pt"], env=env, check=True, capture_output=True)
    ref = torch.load(tmp_path / "ref.pt", weights_only=True)

    env = {**os.environ, "REPLICATE_RUNS": str(tmp_path / "b")}
    ckpt = tmp_path / "b" / "tiny" / tiny_run.spec().key / "ckpt" / "last.ckpt"
    _kill_at_checkpoint([sys.executable, SCRIPT, tmp_path / "out.pt"], env, ckpt, tmp_path / "out.pt")
    subprocess.run([sys.executable, SCRIPT, tmp_path / "out.pt"], env=env, check=True, capture_output=True)
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["resumed"]
    _same(ref, out)


def test_a_killed_continued_run_resumes_to_the_uninterrupted_numbers(tmp_path, monkeypatch):
    env = {**os.environ, "REPLICATE_RUNS": str(tmp_path / "a")}
    subprocess.run([sys.executable, SCRIPT, tmp_path / "ref.pt", "30", "--continued"], env=env, check=True,
                   capture_output=True)
    ref = torch.load(tmp_path / "ref.pt", weights_only=True)

    monkeypatch.setenv("REPLICATE_RUNS", str(tmp_path / "b"))
    _, child, _, _ = tiny_run.continued_run(30)  # the parent, trained here; the script reuses it from the cache
    ckpt = tmp_path / "b" / "tiny" / child.key / "ckpt" / "last.ckpt"
    env = {**os.environ, "REPLICATE_RUNS": str(tmp_path / "b")}
    cmd = [sys.executable, SCRIPT, tmp_path / "out.pt", "30", "--continued"]
    _kill_at_checkpoint(cmd, env, ckpt, tmp_path / "out.pt")
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["resumed"] and out["key"] == child.key
    _same(ref, out)


def test_corrupt_checkpoint_and_result_are_rebuilt(runs, caplog):
    b, ev = tiny_run.data()
    ref = train("tiny", tiny_run.spec(20), b, ev)
    run_dir = runs / "tiny" / tiny_run.spec(20).key
    (run_dir / "result.pt").write_bytes(b"\x00garbage")
    (run_dir / "ckpt").mkdir()
    (run_dir / "ckpt" / "last.ckpt").write_bytes(b"PK\x03\x04truncated")
    with caplog.at_level("WARNING", logger="replicate"):
        again = train("tiny", tiny_run.spec(20), b, ev)
    assert not again["resumed"]
    assert sum("corrupt file" in r.message for r in caplog.records) == 2
    _same(ref, again)


# ------------------------------------------------------------------------------- runs started from another run


def test_kept_weights_reproduce_the_final_loss(runs):
    b, ev = tiny_run.data()
    spec = tiny_run.spec(8)
    no_w = train("tiny", spec, b, ev)
    assert "state_dict" not in no_w
    res = train("tiny", spec, b, ev, keep_weights=True)  # cached without weights: retrained, with them
    m = CausalLM(spec.model, spec.optim)
    m.load_state_dict(res["state_dict"])
    assert torch.allclose(m.per_token_loss(ev["val"]), res["final"]["val"], atol=1e-6)
    assert torch.equal(res["final"]["val"], no_w["final"]["val"])


def test_lr_map_continues_a_longer_schedule():
    sched = OptimConfig(lr=1.0, warmup_steps=2, max_steps=100, min_lr_ratio=0.1)
    m = CausalLM(tiny_run.spec().model, dataclasses.replace(sched, max_steps=10), LRMap(sched, offset=80, stretch=2.0))
    for step, want in ((0, lr_at(80, sched)), (5, lr_at(90, sched)), (10, lr_at(100, sched))):
        assert m.lr(step) == pytest.approx(want)
    assert CausalLM(tiny_run.spec().model, sched).lr(7) == lr_at(7, sched)  # no map: the run's own schedule


def test_a_continued_run_starts_from_its_parents_weights(runs):
    b, ev = tiny_run.data()
    parent = train("tiny", tiny_run.spec(10), b, ev, keep_weights=True)
    frozen = dataclasses.replace(tiny_run.spec(3), optim=OptimConfig(lr=0.0, weight_decay=0.0, warmup_steps=1,
                                                                     max_steps=3), eval_steps=())
    child_spec = continued(frozen, parent)
    assert child_spec.key != frozen.key and child_spec.init_from == parent["key"]
    child = train("tiny", child_spec, dataclasses.replace(b, offset=10), ev, parent=parent)
    assert torch.allclose(child["final"]["val"], parent["final"]["val"], atol=1e-6)  # lr 0: still the parent
    fresh = train("tiny", frozen, b, ev)
    assert not torch.allclose(fresh["final"]["val"], parent["final"]["val"])  # ... which a fresh init is not
    with pytest.raises(ValueError, match="parent: run .* starts from run"):
        train("tiny", dataclasses.replace(child_spec, seed=1), b, ev)
    with pytest.raises(ValueError, match="conversion: unknown 'nope'"):
        continued(frozen, parent, conversion="nope")
    with pytest.raises(ValueError, match="keep_weights=True"):
        continued(frozen, {"key": "x"})


def test_batches_with_an_offset_continue_the_sequence():
    b, _ = tiny_run.data()
    later = dataclasses.replace(b, offset=7)
    assert torch.equal(later.batch(0), b.batch(7)) and torch.equal(later.batch(3), b.batch(10))


def test_a_run_being_trained_elsewhere_is_refused(runs):
    from replicate.io import Busy, run_lock

    b, ev = tiny_run.data()
    spec = tiny_run.spec(5)
    with run_lock(runs / "tiny" / spec.key / ".lock", "test holder"):
        # flock is per open file description: a second open in this process conflicts like another process would
        with pytest.raises(Busy, match=f"training run tiny/{spec.key} is in use by process {os.getpid()}"):
            train("tiny", spec, b, ev)
    assert train("tiny", spec, b, ev)["final"]["val"].shape == (8, 32)  # released: it trains


def test_named_conversions_start_a_continued_run_from_a_converted_parent(runs):
    b, ev = tiny_run.data()
    parent = train("tiny", tiny_run.spec(6), b, ev, keep_weights=True)
    frozen = OptimConfig(lr=0.0, weight_decay=0.0, warmup_steps=1, max_steps=2)
    # MHA -> GQA (2 heads -> 1 KV head): the pooled model differs, and its K/V are the parent's means
    gqa = dataclasses.replace(tiny_run.spec(2), model=dataclasses.replace(tiny_run.spec().model, n_kv_heads=1),
                              optim=frozen, eval_steps=())
    child = train("tiny", continued(gqa, parent, conversion="mha_to_gqa"), b, ev, parent=parent, keep_weights=True)
    hd = gqa.model.head_dim
    k_parent = parent["state_dict"]["model.layers.0.attn.qkv_proj.weight"][2 * hd: 4 * hd]
    k_child = child["state_dict"]["model.layers.0.attn.qkv_proj.weight"][2 * hd: 3 * hd]
    assert torch.allclose(k_child, k_parent.view(2, hd, -1).mean(0))
    # dense -> sigmoid-gated experts with no gate: exactly the parent's function
    moe = dataclasses.replace(tiny_run.spec(2), model=dataclasses.replace(
        tiny_run.spec().model, ffn="sigmoid_moe", ffn_kwargs=(("n_experts", 4), ("gate", "none"))), optim=frozen,
        eval_steps=())
    same = train("tiny", continued(moe, parent, conversion="dense_to_experts"), b, ev, parent=parent)
    assert torch.allclose(same["final"]["val"], parent["final"]["val"], atol=1e-5)
