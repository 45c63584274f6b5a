"""The CLI: bad input exits 2 with one line and changes nothing; list and report work."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from replicate.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def results(tmp_path, monkeypatch):
    r = tmp_path / "results"
    (r / "temporal_scaling_law" / "small").mkdir(parents=True)
    (r / "temporal_scaling_law" / "small" / "claims.csv").write_text(
        "claim_id,claim,metric,paper_value,ours_value,ours_ci,verdict,evidence\nC1,x,m,,1.0,,reproduced,fig1\n")
    monkeypatch.setenv("REPLICATE_RESULTS", str(r))
    monkeypatch.setenv("REPLICATE_RUNS", str(tmp_path / "runs"))
    return r


def _snapshot(root: Path):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "temporal_scaling_law", "--scale", "nonsense"], "argument --scale: invalid choice: 'nonsense'"),
        (["run", "temporal_scaling_law", "-p", "steps=-3"], "parameter 'steps': must be an integer in [10, "),
        (["run", "temporal_scaling_law", "-p", "nope=1"], "parameter 'nope': unknown for temporal_scaling_law"),
        (["run", "temporal_scaling_law", "-p", "steps"], "-p 'steps': expected key=value"),
        (["run", "temporal_scaling_law", "--seed", "-1"], "parameter 'seed': must be an integer in [0, "),
        (["run", "not_a_paper"], "paper: unknown paper id 'not_a_paper'"),
        (["run", "maskmoe"], "paper: 'maskmoe' is not implemented yet"),
        (["frobnicate"], "argument command: invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_touches_nothing(argv, message, results, capsys):
    before = _snapshot(results)
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert _snapshot(results) == before


def test_bad_input_through_a_real_process(results):
    env = {**os.environ}
    for argv in (["--scale", "nonsense"], ["-p", "steps=-3"]):
        p = subprocess.run([sys.executable, "-m", "replicate", "run", "temporal_scaling_law", *argv], env=env,
                           capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and p.stdout == "", p.stderr


def test_list_and_report(results, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "temporal_scaling_law" in out and "reproduced" in out and "[not implemented yet]" in out
    assert main(["report"]) == 0
    text = (results / "README.md").read_text()
    assert "| **C1** x | m |" in text
