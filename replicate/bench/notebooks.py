"""Wall time and peak memory of every notebook, from real ``python -m replicate run`` invocations.

``python -m replicate.bench notebooks [--scale smoke small] [--paper ID ...] [--out results/benchmarks/notebooks.csv]``

Each (notebook, scale) runs as ``python -m replicate run <id> --scale <scale>`` in a fresh, empty ``runs/`` folder (no
cached training run, tokenizer or encoded corpus: the time a first run takes) and a scratch ``results/`` folder (a
benchmark publishes nothing). The runner measures it (``replicate.runner.record_run``: wall time of the Papermill
execution and publish, and the kernel's peak resident memory) into the scratch ``benchmarks/notebooks.csv``; this
command appends those rows (``cache`` = cold) to the project's ``results/benchmarks/notebooks.csv``.

That is the one notebook log: every real run appends its row there too, marked ``cold`` (no training run of the
paper was cached) or ``warm``, so the ``small`` numbers of ``make replicate`` are recorded without running anything
twice.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COLUMNS = ["paper_id", "scale", "wall_s", "peak_rss_mb", "cpu_count", "load_avg_1m", "date", "cache"]


def measure(paper_id: str, scale: str, *, timeout: float | None = None, log=print) -> dict:
    """Run one notebook from a cold cache; return the runner's measurement row."""
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix=f"bench-{paper_id}-{scale}-") as tmp:
        env = {**os.environ, "REPLICATE_RUNS": str(Path(tmp) / "runs"), "REPLICATE_RESULTS": str(Path(tmp) / "results")}
        env.pop("REPLICATE_DEFER_PUBLISH", None)
        log(f"{paper_id} ({scale}): running from a cold cache ...")
        r = subprocess.run([sys.executable, "-m", "replicate", "run", paper_id, "--scale", scale], env=env,
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            tail = r.stderr.strip().splitlines()[-1:] or ["?"]
            raise RuntimeError(f"{paper_id} ({scale}) failed with exit {r.returncode}: {tail[0]}")
        rows = pd.read_csv(Path(tmp) / "results" / "benchmarks" / "notebooks.csv")
        row = rows.iloc[-1].to_dict()
    log(f"{paper_id} ({scale}): {row['wall_s']:.0f} s, peak {row['peak_rss_mb']:.0f} MiB")
    return row


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from replicate.paths import notebooks_dir, results_dir
    from replicate.runner import append_rows
    from replicate.papers import implemented

    available = [p for p in implemented() if (notebooks_dir() / f"{p}.ipynb").exists()]
    p = argparse.ArgumentParser(prog="python -m replicate.bench notebooks", description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", nargs="+", default=["smoke"], choices=["smoke", "small", "paper"])
    p.add_argument("--paper", nargs="+", default=available, help="paper ids (default: every notebook)")
    p.add_argument("--out", type=Path, default=None, help="CSV log appended to (default results/benchmarks/notebooks.csv)")
    args = p.parse_args(argv)
    unknown = [x for x in args.paper if x not in available]
    if unknown:
        print(f"error: --paper: no notebook for {', '.join(unknown)}; available: {', '.join(available)}",
              file=sys.stderr)
        return 2
    out = args.out or results_dir() / "benchmarks" / "notebooks.csv"
    rows = [measure(pid, s, log=lambda m: print(m, file=sys.stderr)) for s in args.scale for pid in args.paper]
    new = pd.DataFrame(rows)[COLUMNS]
    append_rows(out, new.to_dict("records"))
    print(new.to_string(index=False))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
