"""The runner's own promises, with real ``python -m replicate`` and ``papermill`` processes, on probe notebooks
(``Sandbox.use_probes``: the paper's real validation cell and results writer, seconds of work; a real notebook's
kill-and-resume is ``test_interrupt_resume.py``):

- what the command line gives reaches the notebook: tuples and bools, through ``replicate run -p`` and
  ``papermill -p`` (defects 1 and 11 of issue 10), and the published files have the usual mode 0644 (defect 12);
- a second run of the same paper and scale is refused in one line naming the first, and every run's executed
  notebook has its own name, so a failure's evidence is never overwritten (defect 4);
- a failed run exits 1 in one line naming its executed notebook and leaves no staging folder (defect 10);
- Ctrl-C: one line, exit 130, results untouched, no staging and no kernel left, the rerun completes (defect 9).
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from cases import accepted_for, as_typed
from harness import Sandbox, notebooks, stderr_lines

SCALE = "smoke"


@pytest.fixture
def box(tmp_path):
    box = Sandbox(tmp_path)
    box.use_probes(notebooks())
    old = os.umask(0o022)
    yield box
    os.umask(old)


def _wait_for(box: Sandbox, pattern: str, proc: subprocess.Popen, log, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        hits = glob.glob(str(box.root / pattern))
        if hits:
            return hits[0]
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}): {log.read_text()[-2000:]}"
        time.sleep(0.05)
    raise AssertionError(f"{pattern} did not appear within {timeout} s")


def _staging(box: Sandbox) -> list[str]:
    d = box.runs / "staging"
    return sorted(os.listdir(d)) if d.exists() else []


@pytest.mark.parametrize("paper", notebooks())
def test_tuples_and_bools_reach_the_notebook_every_way(paper, box, tmp_path):
    given = {name: value for name, value, _ in accepted_for(paper)}  # the last spelling of each bool
    expected = {name: repr(want) for name, _, want in accepted_for(paper)}
    r = box.cli("run", paper, "--scale", SCALE, *[a for k, v in given.items() for a in ("-p", f"{k}={as_typed(v)}")],
                timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    published = box.probe_config(paper)
    assert {k: published[k] for k in expected} == expected
    final = box.results / paper / SCALE
    modes = {str(p.relative_to(final)): oct(p.stat().st_mode & 0o777) for p in final.rglob("*") if p.is_file()}
    assert set(modes.values()) == {"0o644"}, modes

    # papermill -p name value, as typed: a tuple arrives as its string, a bool word as a string
    out = tmp_path / "out.ipynb"
    cmd = [sys.executable, "-m", "papermill", str(box.root / "notebooks" / f"{paper}.ipynb"), str(out), "-p", "scale",
           SCALE, *[a for k, v in given.items() for a in ("-p", k, as_typed(v))]]
    (box.results / paper).rename(tmp_path / "first")
    r = subprocess.run(cmd, env=box.env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {k: box.probe_config(paper)[k] for k in expected} == expected


def test_a_second_run_of_one_paper_is_refused_naming_the_first(box, tmp_path):
    paper = notebooks()[0]
    (box.root / "hold").touch()
    log = tmp_path / "first.log"
    first = box.popen_cli("run", paper, "--scale", SCALE, log=log)
    try:
        _wait_for(box, f"runs/staging/{paper}-{SCALE}-*/tables/*.csv", first, log)
        r = box.cli("run", paper, "--scale", SCALE, timeout=120)
        lines = stderr_lines(r.stderr)
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith(f"error: {paper} ({SCALE}) is in use by process {first.pid} on "), lines
        (box.root / "hold").unlink()
        assert first.wait(timeout=120) == 0, log.read_text()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()


def test_a_failed_run_names_its_own_notebook_and_leaves_no_staging(box):
    paper = notebooks()[0]
    published = box.state()[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = box.runs / "staging" / f"{paper}-{SCALE}-{dead.pid}-0123abcd"  # left by a killed run
    (stale / "tables").mkdir(parents=True)
    (box.root / "fail").touch()
    r = box.cli("run", paper, "--scale", SCALE, timeout=300)
    lines = stderr_lines(r.stderr)
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "RuntimeError: probe: asked to fail — see " in lines[0] and "results/ was not changed" in lines[0]
    assert _staging(box) == [] and box.state()[0] == published
    # the next run's executed notebook has its own name: the failure's evidence stays
    (box.root / "fail").unlink()
    assert box.cli("run", paper, "--scale", SCALE, timeout=300).returncode == 0
    executed = sorted((box.runs / "executed").glob(f"{paper}-{SCALE}-*.ipynb"))
    assert len(executed) == 2, executed
    assert [p for p in executed if f"see {p};" in lines[0] and "probe: asked to fail" in p.read_text()]


def test_ctrl_c_is_one_line_exit_130_and_the_rerun_completes(box, tmp_path):
    paper = notebooks()[0]
    published = box.state()[0]
    (box.root / "hold").touch()
    log = tmp_path / "run.log"
    proc = box.popen_cli("run", paper, "--scale", SCALE, log=log)
    try:
        _wait_for(box, f"runs/staging/{paper}-{SCALE}-*/tables/*.csv", proc, log)
        kernels = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert kernels, "no kernel running"
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends (the kernel has a session of its own)
        assert proc.wait(timeout=60) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = stderr_lines(log.read_text())
    assert len(lines) == 1 and lines[0].startswith(f"interrupted: {paper} ({SCALE}) stopped; ") and \
        "rerun the same command to resume" in lines[0], lines
    assert not any(psutil.pid_exists(k) and psutil.Process(k).status() != psutil.STATUS_ZOMBIE for k in kernels)
    assert box.state()[0] == published and _staging(box) == []
    (box.root / "hold").unlink()
    r = box.cli("run", paper, "--scale", SCALE, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
