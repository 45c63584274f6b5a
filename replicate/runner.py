"""Run a paper's notebook headless with Papermill and publish its results.

``run_paper(paper_id, scale, seed, overrides)``:
1. validates the parameters with ``resolve_config`` (exit 2 and one line on a bad one; nothing is touched);
2. executes ``notebooks/<id>.ipynb`` with Papermill into ``runs/executed/<id>-<scale>.ipynb``; the notebook
   writes its artifacts into a staging folder (``replicate.results``);
3. on success adds the executed notebook to the staging folder, swaps it into ``results/<id>/<scale>/`` and
   rebuilds ``results/README.md``. On failure ``results/`` is left as it was (exit 1).
4. after a successful run appends the notebook's wall time and the kernel's peak resident memory to
   ``results/benchmarks/notebooks.csv`` (:func:`record_run`), so every real run is also a measurement.
Training runs inside the notebook are cached by config hash under ``runs/<id>/``, so running the same command
again after a crash or a kill resumes where it stopped.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import resource
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

from replicate.config import ConfigError
from replicate.papers import resolve_config
from replicate.paths import notebooks_dir, results_dir, runs_dir

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def notebook_path(paper_id: str) -> Path:
    return notebooks_dir() / f"{paper_id}.ipynb"


def run_paper(paper_id: str, scale: str = "small", seed: int | None = None, overrides: dict | None = None,
              *, out=None) -> int:
    out = out or sys.stderr
    overrides = dict(overrides or {})
    if seed is not None:
        overrides["seed"] = seed
    try:
        resolve_config(paper_id, scale, **overrides)
    except ConfigError as e:
        print(f"error: {e}", file=out)
        return EXIT_USAGE
    nb = notebook_path(paper_id)
    if not nb.exists():
        print(f"error: paper {paper_id!r}: notebook {nb} is missing", file=out)
        return EXIT_USAGE

    import papermill as pm

    executed = runs_dir() / "executed" / f"{paper_id}-{scale}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    handoff = runs_dir() / "staging" / f"{paper_id}-{scale}-{uuid.uuid4().hex[:8]}.path"
    handoff.parent.mkdir(parents=True, exist_ok=True)
    env_before = os.environ.get("REPLICATE_DEFER_PUBLISH")
    os.environ["REPLICATE_DEFER_PUBLISH"] = str(handoff)
    os.environ.setdefault("REPLICATE_PROGRESS", "0")
    logging.getLogger("papermill").setLevel(logging.ERROR)  # "Passed unknown parameter": validated above
    paper_runs = runs_dir() / paper_id
    cache = "warm" if paper_runs.is_dir() and any(paper_runs.iterdir()) else "cold"  # cached training runs or none
    t0, memory = time.perf_counter(), _PeakChildMemory()
    try:
        pm.execute_notebook(str(nb), str(executed), parameters={"scale": scale, **overrides}, kernel_name="python3",
                            progress_bar=False, cwd=str(nb.parent))
    except pm.PapermillExecutionError as e:
        print(f"error: {paper_id} ({scale}) failed in cell {e.exec_count}: {e.ename}: {e.evalue.splitlines()[0] if e.evalue else ''}"
              f" — see {executed}; results/ was not changed", file=out)
        return EXIT_USAGE if e.ename == "ParameterError" else EXIT_FAILED
    finally:
        memory.stop()
        if env_before is None:
            os.environ.pop("REPLICATE_DEFER_PUBLISH", None)
        else:
            os.environ["REPLICATE_DEFER_PUBLISH"] = env_before
    if not handoff.exists():
        print(f"error: {paper_id}: the notebook finished without calling Results.finish(); results/ was not changed",
              file=out)
        return EXIT_FAILED
    staging = Path(handoff.read_text().strip())
    handoff.unlink()
    shutil.copyfile(executed, staging / "notebook.ipynb")
    from replicate.results import publish, write_report

    publish(staging, results_dir() / paper_id / scale)
    write_report()
    record_run(paper_id, scale, time.perf_counter() - t0, memory.peak_mb(), cache)
    print(f"{paper_id} ({scale}): results in {results_dir() / paper_id / scale}", file=out)
    return EXIT_OK


# ------------------------------------------------------------------------------------------- measurements


class _PeakChildMemory:
    """Peak resident memory of the kernel (a child of this process) while a notebook runs, in MiB.

    Two sources, the larger wins: Linux's high-water mark ``VmHWM`` of every child, polled every 0.25 s while the
    kernel lives, and ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (exact, but a maximum over all children this process
    ever waited for, so it only counts when it grew during this run)."""

    def __init__(self):
        self.before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        self.polled_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="replicate-peak-rss")
        self._thread.start()

    def _poll(self):
        me = os.getpid()
        while not self._stop.wait(0.25):
            for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
                if not entry.name.isdigit():
                    continue
                try:
                    status = open(f"/proc/{entry.name}/status").read()
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                if fields.get("PPid", "").strip() == str(me) and "VmHWM" in fields:
                    self.polled_kb = max(self.polled_kb, int(fields["VmHWM"].split()[0]))

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
