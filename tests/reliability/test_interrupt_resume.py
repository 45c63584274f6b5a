"""Interrupt and resume, determinism: real ``python -m replicate run <id> --scale smoke`` processes, offline.

A run is SIGKILLed (the CLI, its session and the Jupyter kernel, all at once) at three moments detected from the
files it writes: during training (a checkpoint ``runs/<id>/<hash>/ckpt/last.ckpt`` exists), during evaluation (the
first table is staged: training is over, the analysis is running) and while writing results (``run.json`` is
staged: ``Results.finish()`` is running and the publish is next). After each kill ``results/`` holds exactly what it
held before (the previous complete results, byte for byte: never a partial file). Before the last rerun a trained
run's ``result.pt``, the tokenizer and the token caches are corrupted; the rerun must report each in one line and
rebuild them. The last rerun then ends with exactly the ``claims.csv`` of an uninterrupted run.

Cost: a smoke run per kill point, so over every notebook this is ``slow`` (``make test-slow``); the representative
notebook runs in ``make test``. Determinism (two fresh uninterrupted runs, identical ``claims.csv``) is ``slow`` for
every notebook: in ``make test`` the representative's resumed run is compared with a fresh run in another folder,
which checks the same property.

"Identical" means the ``claims.csv`` text, byte for byte, except the rows of claims measured in wall-clock time (an
encoding-speed slope cannot repeat bit for bit): a paper module lists those claim ids in ``TIMING_CLAIMS``; they are
left out of the comparison (they must still be present), and nothing else is.
"""

from __future__ import annotations

import importlib
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness import KILL_REPRESENTATIVE, Sandbox, notebooks, run_until, snapshot

SCALE = "smoke"
KILL_POINTS = {  # moment -> file pattern (relative to the sandbox) whose appearance marks it
    "training": "runs/{paper}/*/ckpt/last.ckpt",
    "evaluation": "runs/staging/{paper}-{scale}-*/tables/*.csv",
    "writing_results": "runs/staging/{paper}-{scale}-*/run.json",
}


def _params():
    return [pytest.param(p, marks=() if p == KILL_REPRESENTATIVE else pytest.mark.slow) for p in notebooks()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """paper -> (sandbox, claims.csv text) of one uninterrupted run, made on first use."""
    made = {}

    def get(paper: str):
        if paper not in made:
            box = Sandbox(tmp_path_factory.mktemp(f"ref-{paper}"))
            r = box.cli("run", paper, "--scale", SCALE, timeout=900)
            assert r.returncode == 0, r.stderr[-3000:]
            made[paper] = box, (box.results / paper / SCALE / "claims.csv").read_text()
        return made[paper]

    return get


def comparable(paper: str, claims_csv: str) -> str:
    """``claims.csv`` without the rows of the paper's ``TIMING_CLAIMS`` (which must be present)."""
    timing = set(getattr(importlib.import_module(f"replicate.papers.{paper}"), "TIMING_CLAIMS", ()))
    df = pd.read_csv(io.StringIO(claims_csv), dtype=str, keep_default_na=False)
    assert timing <= set(df["claim_id"]), f"TIMING_CLAIMS not in claims.csv: {timing - set(df['claim_id'])}"
    return df[~df["claim_id"].isin(timing)].to_csv(index=False)


def _outputs_text(notebook: Path) -> str:
    nb = json.loads(notebook.read_text())
    return "\n".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


@pytest.mark.parametrize("paper", _params())
def test_killed_three_times_then_rerun_gives_the_uninterrupted_claims(paper, reference, tmp_path):
    ref_box, ref_claims = reference(paper)
    box = Sandbox(tmp_path / "box")
    shutil.copytree(ref_box.results, box.results, dirs_exist_ok=True)  # earlier complete results must survive
    published = snapshot(box.results)
    args = ["run", paper, "--scale", SCALE]
    for moment, pattern in KILL_POINTS.items():
        hit = run_until(box, args, pattern.format(paper=paper, scale=SCALE), tmp_path / f"{moment}.log",
                        timeout=900)
        assert snapshot(box.results) == published, f"killed during {moment} ({hit}): results/ changed"

    # Corrupt the caches the next run depends on: the smallest finished run, the tokenizers, the encoded corpora.
    results = sorted((box.runs / paper).glob("*/result.pt"), key=lambda p: p.stat().st_size)
    caches = sorted((box.runs / "cache").glob("tokenizers/*.json")) + sorted((box.runs / "cache").glob("tokens/*.npz"))
    corrupted = results[:1] + caches
    assert results and caches, "the run left no cache to corrupt"
    for path in corrupted:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])

    r = box.cli("run", *args[1:], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = box.results / paper / SCALE
    assert snapshot(out)["run.json"] != published[f"{paper}/{SCALE}/run.json"], "the rerun did not publish"
    assert comparable(paper, (out / "claims.csv").read_text()) == comparable(paper, ref_claims)
    reports = [l for l in (_outputs_text(out / "notebook.ipynb") + "\n" + r.stderr).splitlines()
               if "corrupt file" in l]
    for path in corrupted:
        assert sum(str(path) in l for l in reports) >= 1, f"no one-line report for {path}: {reports}"
    assert not list(box.results.rglob("*.tmp")), "a temporary file was left under results/"


@pytest.mark.slow
@pytest.mark.parametrize("paper", notebooks())
def test_same_command_twice_gives_identical_claims(paper, reference, tmp_path):
    _, ref_claims = reference(paper)
    box = Sandbox(tmp_path)
    r = box.cli("run", paper, "--scale", SCALE, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert comparable(paper, (box.results / paper / SCALE / "claims.csv").read_text()) == comparable(paper, ref_claims)
