"""The results writer publishes all or nothing, and the index lists every claim and artifact."""

import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from replicate.claims import Claim
from replicate.papers import resolve_config
from replicate.results import Results, read_claims, write_report


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICATE_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("REPLICATE_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("REPLICATE_DEFER_PUBLISH", raising=False)
    return tmp_path


def _write(res):
    res.table("table1", pd.DataFrame({"a": [1, 2], "b": [0.5, 0.25]}))
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    res.figure("fig1", fig)
    res.claims([Claim("C1", "x improves y", "Δ", None, 0.1, "[0.05, 0.15]", "reproduced", "table1")])


def test_nothing_is_published_before_finish(dirs):
    res = Results(resolve_config("temporal_scaling_law", "smoke"))
    _write(res)
    assert not (dirs / "results" / "temporal_scaling_law").exists()
    final = res.finish()
    assert sorted(p.name for p in final.iterdir()) == ["claims.csv", "figures", "run.json", "tables"]
    assert sorted(p.name for p in (final / "tables").iterdir()) == ["table1.csv", "table1.md"]
    assert sorted(p.name for p in (final / "figures").iterdir()) == ["fig1.png", "fig1.svg"]
    run = json.loads((final / "run.json").read_text())
    for key in ("config", "config_hash", "git_commit", "packages", "torch_threads", "start", "end", "duration_s"):
        assert key in run
    assert read_claims("temporal_scaling_law", "smoke")["verdict"].tolist() == ["reproduced"]
    assert "x improves y" in (dirs / "results" / "README.md").read_text()


def test_a_rerun_replaces_the_folder_whole(dirs):
    res = Results(resolve_config("temporal_scaling_law", "smoke"))
    _write(res)
    res.table("extra_old", pd.DataFrame({"x": [1]}))
    final = res.finish()
    res2 = Results(resolve_config("temporal_scaling_law", "smoke"))
    _write(res2)
    res2.finish()
    assert not (final / "tables" / "extra_old.csv").exists()  # no stale artifact survives


def test_svg_bytes_are_deterministic(dirs):
    outs = []
    for _ in range(2):
        res = Results(resolve_config("temporal_scaling_law", "smoke"))
        _write(res)
        outs.append((res.staging / "figures" / "fig1.svg").read_bytes())
    assert outs[0] == outs[1]


def test_ids_and_claims_are_checked(dirs):
    res = Results(resolve_config("temporal_scaling_law", "smoke"))
    with pytest.raises(ValueError, match="table id 'Table 1'"):
        res.table("Table 1", pd.DataFrame())
    c = Claim("C1", "x", "m", None, 1.0, "", "inconclusive", "")
    with pytest.raises(ValueError, match="duplicate"):
        res.claims([c, c])
    with pytest.raises(RuntimeError, match="write claims"):
        Results(resolve_config("temporal_scaling_law", "smoke")).finish()


def test_report_lists_papers_without_results(dirs):
    text = write_report().read_text()
    assert "| lbpe | — |" in text


def test_published_files_have_the_mode_of_a_plain_open(dirs):
    """Defect 12 (issue 10): claims.csv and run.json were published 0600 while tables were 0644."""
    import os

    old = os.umask(0o022)
    try:
        res = Results(resolve_config("temporal_scaling_law", "smoke"))
        _write(res)
        final = res.finish()
    finally:
        os.umask(old)
    modes = {str(p.relative_to(final)): p.stat().st_mode & 0o777 for p in final.rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o644}, modes


def test_run_json_stays_valid_json_with_a_nan(dirs):
    """Defect 3: a NaN reached run.json as the invalid token NaN."""
    res = Results(resolve_config("temporal_scaling_law", "smoke"))
    _write(res)
    res.extra_provenance["fit_rmse"] = float("nan")
    run = json.loads((res.finish() / "run.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert run["fit_rmse"] is None


def test_staging_of_ended_processes_is_swept_and_a_live_ones_kept(dirs):
    """Defect 10: failed runs left runs/staging/* behind. A staging folder is named after its process; the sweep
    removes those whose process is gone, never a live one's (a notebook still running), nor another paper's."""
    import os
    import subprocess
    import sys

    from replicate.results import staging_path, sweep_staging

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    staging = dirs / "runs" / "staging"
    live = Results(resolve_config("temporal_scaling_law", "smoke")).staging  # this process: alive
    assert live.name.startswith(f"temporal_scaling_law-smoke-{os.getpid()}-")
    gone = [staging / f"temporal_scaling_law-smoke-{dead.pid}-0123abcd", staging / f"temporal_scaling_law-smoke-{dead.pid}-89abcdef.path"]
    other = [staging / f"lbpe-smoke-{dead.pid}-0123abcd", staging / f"temporal_scaling_law-small-{dead.pid}-0123abcd",
             staging / "temporal_scaling_law-smoke-notmine"]
    gone[0].mkdir()
    (gone[0] / "claims.csv").write_text("x")
    gone[1].write_text("x")
    for p in other:
        p.mkdir()
    assert sorted(sweep_staging("temporal_scaling_law", "smoke")) == sorted(gone)
    assert live.exists() and all(p.exists() for p in other) and not any(p.exists() for p in gone)
    assert staging_path("lbpe", "small", ".path").name.endswith(".path")


def test_plan_start_imports_the_papers_report_module():
    """``Plan.start`` imports the paper's report module at once, so a notebook pairs its plan with the report code
    of the same moment (not with code edited during a long run, imported lazily when the tables are drawn)."""
    import subprocess
    import sys

    code = ("import sys; from replicate.papers import finedeep; from replicate.papers.finedeep import FinedeepConfig; "
            "assert 'replicate.papers.finedeep.report' not in sys.modules; finedeep.plan.start(FinedeepConfig.smoke()); "
            "assert 'replicate.papers.finedeep.report' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
