"""Run a paper's notebook headless with Papermill and publish its results.

``run_paper(paper_id, scale, overrides)``:
1. checks, before anything runs, everything that can be checked (:func:`check`): the parameters (``resolve``:
   names, types, ranges, cross-field rules, this machine's budget), the notebook, the folders it will write
   (:func:`replicate.paths.check_folders`); then takes the lock of (paper, scale), so a second run of the same
   paper and scale is refused instead of racing the first. A refusal is one line and exit 2; nothing is touched;
2. executes ``notebooks/<id>.ipynb`` with Papermill into ``runs/executed/<id>-<scale>-<time>-<pid>.ipynb`` (one
   file per run: a failed run's evidence is never overwritten); the notebook writes its artifacts into a staging
   folder (``replicate.results``);
3. on success adds the executed notebook to the staging folder, swaps it into ``results/<id>/<scale>/`` and
   rebuilds ``results/README.md``. A failed notebook exits 1 naming the executed notebook; Ctrl-C stops the kernel
   and exits 130. Either way ``results/`` is left as it was and the run's staging folder is removed;
4. after a successful run appends the notebook's wall time and the peak resident memory of the kernel and its
   training workers to ``results/benchmarks/notebooks.csv`` (:func:`record_run`), so every real run is also a measurement.
Training runs inside the notebook are cached by config hash under ``runs/<id>/``, so running the same command
again after a failure, a Ctrl-C or a kill resumes where it stopped.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import resource
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from replicate.budget import BudgetWarning
from replicate.config import ConfigError, resolve
from replicate.io import Busy, no_interrupt, pid_alive, run_lock
from replicate.papers import config_class
from replicate.paths import UnusableFolder, check_folders, notebooks_dir, results_dir, runs_dir

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
KEEP_EXECUTED = 10  # executed notebooks kept per paper and scale under runs/executed/


class Refused(Exception):
    """A run refused before it started (exit 2). ``str(err)`` is one line."""


def notebook_path(paper_id: str) -> Path:
    return notebooks_dir() / f"{paper_id}.ipynb"


def check(paper_id: str, scale: str, overrides: dict) -> list[str]:
    """Raise :class:`Refused` unless a run of ``paper_id`` at ``scale`` with ``overrides`` can start; return the
    budget warnings (one line each). Imports the paper's config only: no torch, no Papermill."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BudgetWarning)
            resolve(config_class(paper_id), scale, **overrides)
        nb = notebook_path(paper_id)
        if not nb.exists():
            raise Refused(f"paper {paper_id!r}: notebook {nb} is missing")
        check_folders(paper_id, scale)
    except (ConfigError, UnusableFolder) as e:
        raise Refused(str(e)) from None
    return [str(w.message) for w in caught if issubclass(w.category, BudgetWarning)]


def notebook_parameters(scale: str, overrides: dict) -> dict:
    """What Papermill injects: Papermill renders lists but turns a tuple into its string, so tuples go as lists
    (the config turns them back)."""
    as_list = lambda v: [as_list(x) for x in v] if isinstance(v, (tuple, list)) else v
    return {"scale": scale, **{k: as_list(v) for k, v in overrides.items()}}


def run_paper(paper_id: str, scale: str = "small", overrides: dict | None = None, *, out=None) -> int:
    out = out or sys.stderr
    overrides = dict(overrides or {})
    try:
        for line in check(paper_id, scale, overrides):
            print(f"warning: {line}", file=out)
        with run_lock(runs_dir() / "locks" / f"{paper_id}-{scale}.lock", f"{paper_id} ({scale})"):
            return _execute(paper_id, scale, overrides, out)
    except (Refused, Busy) as e:
        print(f"error: {e}", file=out)
        return EXIT_USAGE


def _execute(paper_id: str, scale: str, overrides: dict, out) -> int:
    """Run the notebook (the lock of (paper, scale) held) and publish; see the module docstring."""
    import papermill as pm

    from replicate.results import publish, staging_path, sweep_staging, write_report

    sweep_staging(paper_id, scale)  # what earlier failed or killed runs left
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    executed = runs_dir() / "executed" / f"{paper_id}-{scale}-{stamp}-{os.getpid()}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    handoff = staging_path(paper_id, scale, ".path")
    handoff.parent.mkdir(parents=True, exist_ok=True)
    env_before = os.environ.get("REPLICATE_DEFER_PUBLISH")
    os.environ["REPLICATE_DEFER_PUBLISH"] = str(handoff)
    os.environ.setdefault("REPLICATE_PROGRESS", "0")
    logging.getLogger("papermill").setLevel(logging.ERROR)  # "Passed unknown parameter": validated above
    paper_runs = runs_dir() / paper_id
    cache = "warm" if paper_runs.is_dir() and any(paper_runs.iterdir()) else "cold"  # cached training runs or none
    t0, memory = time.perf_counter(), _PeakChildMemory()
    unchanged = "results/ was not changed"
    try:
        try:
            nb = notebook_path(paper_id)
            pm.execute_notebook(str(nb), str(executed), parameters=notebook_parameters(scale, overrides),
                                kernel_name="python3", progress_bar=False, cwd=str(nb.parent),
                                extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
        except pm.PapermillExecutionError as e:
            first = e.evalue.splitlines()[0] if e.evalue else ""
            print(f"error: {paper_id} ({scale}) failed in cell {e.exec_count}: {e.ename}: {first} — see {executed}; "
                  f"{unchanged}", file=out)
            return EXIT_USAGE if e.ename == "ParameterError" else EXIT_FAILED
        except Exception as e:  # the kernel died (out of memory, killed), a timeout: the same one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"error: {paper_id} ({scale}) failed: {type(e).__name__}: {first} — see {executed}; {unchanged}",
                  file=out)
            return EXIT_FAILED
        finally:
            memory.stop()
            if env_before is None:
                os.environ.pop("REPLICATE_DEFER_PUBLISH", None)
            else:
                os.environ["REPLICATE_DEFER_PUBLISH"] = env_before
        if not handoff.exists():
            print(f"error: {paper_id}: the notebook finished without calling Results.finish(); {unchanged}", file=out)
            return EXIT_FAILED
        with no_interrupt():  # a second or two of copying and renames: finish them
            staging = Path(handoff.read_text().strip())
            shutil.copyfile(executed, staging / "notebook.ipynb")
            publish(staging, results_dir() / paper_id / scale)
            write_report()
            record_run(paper_id, scale, time.perf_counter() - t0, memory.peak_mb(), cache)
            _prune_executed(paper_id, scale)
        print(f"{paper_id} ({scale}): results in {results_dir() / paper_id / scale}", file=out)
        return EXIT_OK
    except KeyboardInterrupt:
        with no_interrupt():
            _stop_kernels()
        print(f"interrupted: {paper_id} ({scale}) stopped; {unchanged}; rerun the same command to resume", file=out)
        return EXIT_INTERRUPTED
    finally:
        with no_interrupt():
            handoff.unlink(missing_ok=True)
            sweep_staging(paper_id, scale)  # this run's staging, when it did not publish


def _prune_executed(paper_id: str, scale: str) -> None:
    runs = sorted((runs_dir() / "executed").glob(f"{paper_id}-{scale}-*.ipynb"), key=lambda p: p.stat().st_mtime)
    for old in runs[:-KEEP_EXECUTED]:
        old.unlink(missing_ok=True)


def _children() -> dict[int, list[int]]:
    """{parent pid: [child pids]} of every process (from /proc; empty without it)."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if entry.name.isdigit():
            try:
                ppid = int(open(f"/proc/{entry.name}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _stop_kernels(grace_s: float = 3.0) -> None:
    """Stop the Jupyter kernels this process started, and everything they started: SIGTERM, then SIGKILL after
    ``grace_s``; wait until they are gone (so their staging folders can be swept)."""
    tree = _children()
    kernels = []
    for pid in tree.get(os.getpid(), []):
        try:
            if b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes():
                kernels.append(pid)
        except OSError:
            pass
    family, todo = [], list(kernels)
    while todo:
        pid = todo.pop()
        family.append(pid)
        todo += tree.get(pid, [])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in family:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while time.time() < deadline and any(pid_alive(p) for p in family):
            for pid in kernels:  # our children: reap them, or they stay zombies
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            time.sleep(0.05)
        if not any(pid_alive(p) for p in family):
            return


# ------------------------------------------------------------------------------------------- measurements


class _PeakChildMemory:
    """Peak resident memory of the kernel (a child of this process) and of the processes it starts (training
    workers, ``replicate.models.trainer.prefetch``) while a notebook runs, in MiB.

    Three sources, the largest wins: the largest sum of ``VmRSS`` over the whole tree below this process at one
    poll (every 0.25 s; shared library pages count once per process, so it errs high), Linux's high-water mark
    ``VmHWM`` of every direct child, and ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (exact, but a maximum over all
    children this process ever waited for, so it only counts when it grew during this run)."""

    def __init__(self):
        self.before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        self.polled_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="replicate-peak-rss")
        self._thread.start()

    def _poll(self):
        me = str(os.getpid())
        kb = lambda fields, key: int(fields[key].split()[0]) if key in fields else 0
        while not self._stop.wait(0.25):
            procs = {}
            for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
                if not entry.name.isdigit():
                    continue
                try:
                    status = open(f"/proc/{entry.name}/status").read()
                except OSError:
                    continue
                procs[entry.name] = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            tree, frontier = set(), {me}
            while frontier:  # every process below this one, the kernel's workers included
                frontier = {pid for pid, f in procs.items() if f.get("PPid", "").strip() in frontier} - tree
                tree |= frontier
            self.polled_kb = max([self.polled_kb, sum(kb(procs[p], "VmRSS") for p in tree)]
                                 + [kb(procs[p], "VmHWM") for p in tree if procs[p].get("PPid", "").strip() == me])

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=2)

    def peak_mb(self) -> float | None:
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
        kb = max(self.polled_kb, after if after > self.before else 0)
        return round(kb / 1024, 1) if kb else None


def record_run(paper_id: str, scale: str, wall_s: float, peak_rss_mb: float | None, cache: str) -> None:
    """Append one row to ``results/benchmarks/notebooks.csv`` (atomically: read, append, replace). ``cache``:
    "cold" when no training run of the paper was cached before this one started, "warm" otherwise."""
    row = {"paper_id": paper_id, "scale": scale, "wall_s": round(wall_s, 1), "peak_rss_mb": peak_rss_mb,
           "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cache": cache}
    append_rows(results_dir() / "benchmarks" / "notebooks.csv", [row])


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows to a CSV log (atomically: read, append, replace); a corrupt log is reported and started afresh."""
    import pandas as pd

    from replicate.io import atomic_write

    try:
        old = pd.read_csv(path) if path.exists() else None
    except (ValueError, OSError) as e:  # a corrupt log is reported and started afresh; it never fails a run
        logging.getLogger("replicate").warning("corrupt file %s (%s): started afresh", path, type(e).__name__)
        old = None
    df = pd.DataFrame(rows) if old is None else pd.concat([old, pd.DataFrame(rows)], ignore_index=True)
    atomic_write(path, lambda p: df.to_csv(p, index=False))
