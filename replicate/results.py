"""The one results writer: tables (CSV + Markdown), figures (PNG + SVG), claims.csv, run.json — atomically.

A notebook opens ``Results(cfg)``, adds artifacts, and calls ``finish()``. Everything is written into a staging
folder under ``runs/staging/``; ``finish()`` writes ``run.json`` and then swaps the whole folder into
``results/<paper>/<scale>/`` with renames. A run that fails or is killed before that leaves ``results/``
exactly as it was: never a half-written file, never a mix of old and new artifacts.

When the CLI runs a notebook it sets ``REPLICATE_DEFER_PUBLISH`` to a file path: ``finish()`` then only writes
the staging folder's path there, and the runner adds the executed notebook before publishing.

A staging folder is named ``<paper>-<scale>-<pid>-<hex>`` after the process writing it; one whose process is gone
(a failed, interrupted or killed run) is removed by :func:`sweep_staging`, which the runner calls before and after
every run. Importing this module imports no pandas or torch (the CLI validates before the heavy imports).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from replicate import __version__
from replicate.config import config_hash, to_dict
from replicate.io import atomic_write, no_interrupt, pid_alive, run_lock, write_json, write_text
from replicate.paths import check_folders, results_dir, root, runs_dir

if TYPE_CHECKING:
    import pandas as pd

    from replicate.claims import Claim

ARTIFACT_ID = r"^(table|fig)\d+[a-z]?$|^extra_[a-z0-9_]+$"


def _check_id(kind: str, artifact_id: str) -> None:
    if not re.match(ARTIFACT_ID, artifact_id):
        raise ValueError(f"{kind} id {artifact_id!r}: use the paper's numbering (table1, fig3) or extra_<name>")


class Results:
    def __init__(self, cfg, paper_id: str | None = None):
        self.cfg = cfg
        self.paper_id = paper_id or type(cfg).paper_id
        self.scale = cfg.scale
        self.started = time.time()
        check_folders(self.paper_id, self.scale)
        self.staging = staging_path(self.paper_id, self.scale)
        (self.staging / "tables").mkdir(parents=True)
        (self.staging / "figures").mkdir(parents=True)
        self.tables: dict[str, pd.DataFrame] = {}
        self.figures: list[str] = []
        self.claim_rows: list[dict] = []
        self.extra_provenance: dict = {}

    # -------------------------------------------------------------------------------------------- artifacts
    def table(self, table_id: str, df: pd.DataFrame, floatfmt: str = ".4g") -> pd.DataFrame:
        """Write ``tables/<table_id>.csv`` and ``.md``; return ``df`` for display."""
        _check_id("table", table_id)
        atomic_write(self.staging / "tables" / f"{table_id}.csv", lambda p: df.to_csv(p, index=False))
        write_text(self.staging / "tables" / f"{table_id}.md", df.to_markdown(index=False, floatfmt=floatfmt) + "\n")
        self.tables[table_id] = df
        return df

    def figure(self, fig_id: str, fig):
        """Write ``figures/<fig_id>.png`` and ``.svg`` (deterministic bytes); close and return the figure."""
        import matplotlib.pyplot as plt

        _check_id("figure", fig_id)
        with plt.rc_context({"svg.hashsalt": "replicate"}):
            atomic_write(self.staging / "figures" / f"{fig_id}.png",
                         lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None}))
            atomic_write(self.staging / "figures" / f"{fig_id}.svg",
                         lambda p: fig.savefig(p, format="svg", bbox_inches="tight", metadata={"Date": None}))
        plt.close(fig)
        self.figures.append(fig_id)
        return fig

    def claims(self, claims: list[Claim]) -> pd.DataFrame:
        """Write ``claims.csv`` (DESIGN.md §3 columns); return it as a frame."""
        import pandas as pd

        from replicate.claims import COLUMNS

        ids = [c.claim_id for c in claims]
        if len(set(ids)) != len(ids):
            raise ValueError(f"claims: duplicate claim ids in {ids}")
        df = pd.DataFrame([c.row() for c in claims], columns=list(COLUMNS))
        atomic_write(self.staging / "claims.csv", lambda p: df.to_csv(p, index=False))
        self.claim_rows = df.to_dict("records")
        return df

    # ---------------------------------------------------------------------------------------------- finish
    def provenance(self) -> dict:
        import torch

        versions = {}
        for pkg in ("torch", "lightning", "transformers", "tokenizers", "numpy", "pandas", "scipy", "matplotlib",
                    "papermill", "triton"):
            try:
                from importlib.metadata import version

                versions[pkg] = version(pkg)
            except Exception:
                versions[pkg] = None
        end = time.time()
        return {
            "paper_id": self.paper_id,
            "scale": self.scale,
            "config": to_dict(self.cfg),
            "config_hash": config_hash(self.cfg),
            "replicate_version": __version__,
            "git_commit": _git_commit(),
            "packages": versions,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "start": dt.datetime.fromtimestamp(self.started, dt.timezone.utc).isoformat(timespec="seconds"),
            "end": dt.datetime.fromtimestamp(end, dt.timezone.utc).isoformat(timespec="seconds"),
            "duration_s": round(end - self.started, 1),
            "tables": sorted(self.tables),
            "figures": sorted(self.figures),
            **self.extra_provenance,
        }

    def finish(self) -> Path:
        """Write run.json and publish (or hand the staging folder to the CLI runner). Returns the final path."""
        if not (self.staging / "claims.csv").exists():
            raise RuntimeError("finish(): write claims (Results.claims) before finishing")
        write_json(self.staging / "run.json", self.provenance())
        final = results_dir() / self.paper_id / self.scale
        deferred = os.environ.get("REPLICATE_DEFER_PUBLISH")
        if deferred:
            write_text(deferred, str(self.staging))
        else:
            publish(self.staging, final)
            write_report()
        return final


def publish(staging: Path, final: Path) -> None:
    """Replace ``final`` with ``staging`` by renames (the old folder goes to ``runs/trash`` and is removed). Two
    publishers of one folder take turns (a lock), and Ctrl-C cannot fall between the two renames."""
    name = f"{final.parent.name}-{final.name}"
    trash = runs_dir() / "trash" / f"{name}-{uuid.uuid4().hex[:8]}"
    final.parent.mkdir(parents=True, exist_ok=True)
    trash.parent.mkdir(parents=True, exist_ok=True)
    with run_lock(runs_dir() / "locks" / f"{name}.publish.lock", wait=True), no_interrupt():
        for old in trash.parent.glob(f"{name}-*"):  # left by a publish killed between its renames
            shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, trash)
        os.replace(staging, final)
    shutil.rmtree(trash, ignore_errors=True)


_STAGED = re.compile(r"^(?P<prefix>.+)-(?P<pid>\d+)-[0-9a-f]{8}(\.path)?$")


def staging_path(paper_id: str, scale: str, suffix: str = "") -> Path:
    """A new staging name under ``runs/staging/`` owned by this process (``suffix`` ".path": a hand-off file)."""
    return runs_dir() / "staging" / f"{paper_id}-{scale}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def sweep_staging(paper_id: str, scale: str) -> list[Path]:
    """Remove the staging folders (and hand-off files) of ``paper_id`` at ``scale`` whose process has ended: what
    failed, interrupted and killed runs left. A live process's staging (a running notebook) is never touched."""
    removed = []
    for p in sorted((runs_dir() / "staging").glob(f"{paper_id}-{scale}-*")):
        m = _STAGED.match(p.name)
        if m and m["prefix"] == f"{paper_id}-{scale}" and not pid_alive(int(m["pid"])):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root(), capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root(),
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


# ------------------------------------------------------------------------------------------------- the index


def read_claims(paper_id: str, scale: str) -> pd.DataFrame | None:
    import pandas as pd

    path = results_dir() / paper_id / scale / "claims.csv"
    if not path.exists():
        return None
    return pd.read_csv(path, keep_default_na=False)


def write_report() -> Path:
    """Rebuild ``results/README.md``: per paper and scale, every claim with its verdict, links to every artifact."""
    from replicate.claims import VERDICTS
    from replicate.papers import PAPERS

    out = ["# Results", "", "Generated by `python -m replicate report` from the folders below; do not edit by hand.",
           "Verdicts are computed by code from the numbers (see `replicate/claims.py`).", ""]
    summary = ["| paper | scale | reproduced | not reproduced | inconclusive | not run | invalid |",
               "|---|---|---|---|---|---|---|"]
    body = []
    for pid, title in PAPERS.items():
        scales = [s for s in ("small", "paper", "smoke") if (results_dir() / pid / s / "claims.csv").exists()]
        if not scales:
            summary.append(f"| {pid} | — |" + " |" * len(VERDICTS))
            continue
        for scale in scales:
            d = results_dir() / pid / scale
            claims = read_claims(pid, scale)
            counts = claims["verdict"].value_counts()
            summary.append(f"| [{pid}](#{pid}-{scale}) | {scale} | " + " | ".join(
                str(counts.get(v, 0)) for v in VERDICTS) + " |")
            run = json.loads((d / "run.json").read_text()) if (d / "run.json").exists() else {}
            body += [f"<a id=\"{pid}-{scale}\"></a>", f"## {title} — `{pid}`, {scale}", "",
                     f"Run {run.get('end', '?')}, {run.get('duration_s', '?')} s, commit `{run.get('git_commit', '?')}`. "
                     f"[Executed notebook]({pid}/{scale}/notebook.ipynb)", ""]
            body.append("| claim | metric | paper | ours | spread | verdict |")
            body.append("|---|---|---|---|---|---|")
            for r in claims.to_dict("records"):
                cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
                body.append(f"| **{r['claim_id']}** {cell(r['claim'])} | {cell(r['metric'])} | {cell(r['paper_value'])} "
                            f"| {cell(r['ours_value'])} | {cell(r['ours_ci'])} | {r['verdict']} |")
            tables = sorted(p.stem for p in (d / "tables").glob("*.csv"))
            figs = sorted(p.stem for p in (d / "figures").glob("*.png"))
            body += ["", "Tables: " + ", ".join(f"[{t}]({pid}/{scale}/tables/{t}.md)" for t in tables),
                     "", "Figures: " + ", ".join(f"[{f}]({pid}/{scale}/figures/{f}.png)" for f in figs), ""]
    path = results_dir() / "README.md"
    write_text(path, "\n".join(out + summary + [""] + body) + "\n")
    return path
