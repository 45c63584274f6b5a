"""Atomic writes keep a normal file mode and write strict JSON; run locks keep two processes out of one run."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from replicate import io


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path, umask_022):
    """Defect 12 (issue 10): claims.csv, run.json and token caches were published 0600 (mkstemp's mode)."""
    io.write_text(tmp_path / "a.txt", "x")
    io.write_json(tmp_path / "run.json", {"a": 1})
    io.atomic_write(tmp_path / "c.npz", lambda p: p.write_bytes(b"\0"))
    (tmp_path / "plain.txt").write_text("x")
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["a.txt", "run.json", "c.npz", "plain.txt"], 0o644), modes
    os.umask(0o077)
    io.write_text(tmp_path / "private.txt", "x")
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600  # the umask is respected
    assert not list(tmp_path.glob(".*.tmp"))


def test_json_is_strict_nan_becomes_null(tmp_path):
    """Defect 3: a NaN in run.json made it invalid JSON."""
    io.write_json(tmp_path / "run.json", {"margin": math.nan, "xs": (1.0, math.inf, -math.inf), "ok": 0.5})
    text = (tmp_path / "run.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"margin": None, "xs": [1.0, None, None], "ok": 0.5}


def _hold_lock(path, ready):
    code = (f"import time; from replicate.io import run_lock\n"
            f"with run_lock({str(path)!r}):\n    open({str(ready)!r}, 'w').close(); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, "the lock holder did not start"
        time.sleep(0.02)
    return proc


def test_a_held_run_lock_refuses_at_once_naming_its_holder_and_dies_with_it(tmp_path):
    """Defect 4: two runs on one run folder raced (one deleted the other's last.ckpt)."""
    lock = tmp_path / "run" / ".lock"
    holder = _hold_lock(lock, tmp_path / "ready")
    try:
        t = time.perf_counter()
        with pytest.raises(io.Busy) as e:
            with io.run_lock(lock, "training run x"):
                pass
        assert time.perf_counter() - t < 1
        msg = str(e.value)
        assert msg.startswith(f"training run x is in use by process {holder.pid} on ") and "\n" not in msg, msg
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with io.run_lock(lock):  # the OS released the killed holder's lock: no stale lock blocks the rerun
        with pytest.raises(io.Busy):  # and a lock is exclusive within one process too
            with io.run_lock(lock):
                pass


def test_no_interrupt_defers_nothing_but_drops_ctrl_c_for_its_block():
    with io.no_interrupt():
        os.kill(os.getpid(), signal.SIGINT)  # ignored
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_pid_alive():
    assert io.pid_alive(os.getpid())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not io.pid_alive(proc.pid)


def test_only_rank_zero_of_a_distributed_job_takes_a_run_lock(tmp_path, monkeypatch):
    lock = tmp_path / ".lock"
    with io.run_lock(lock):
        monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP worker Lightning started for the same run
        with io.run_lock(lock):
            pass
