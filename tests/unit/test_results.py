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
