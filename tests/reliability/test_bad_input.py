"""Bad input: every parameter of every notebook rejects an unknown name, a wrong type and an out-of-range value
with one clear line naming it, through the CLI and through Papermill directly, and touches nothing.

The cases come from the config dataclasses (``cases.py``). All of them run in-process through
``resolve_config``, the notebook's own validation (``replicate.notebook.resolve``) and the CLI's ``main()``; a few
per notebook run as real processes: ``python -m replicate run`` and ``papermill`` (the notebook's validation cell
raises ``ParameterError``).
"""

from __future__ import annotations

import json

import pytest

import replicate.notebook as nbmod
from cases import Case, cases_for, representative, unbounded
from harness import Sandbox, notebooks, stderr_lines
from replicate import cli
from replicate.config import ConfigError
from replicate.papers import resolve_config

ALL_CASES = [c for p in notebooks() for c in cases_for(p)]


def _check_message(msg: str, case: Case) -> None:
    assert "\n" not in msg.strip(), f"more than one line: {msg!r}"
    assert f"'{case.param}'" in msg or f"--{case.param}" in msg, f"does not name {case.param!r}: {msg!r}"
    if case.kind == "unknown_name":
        assert "unknown" in msg, msg
    else:
        assert "must be" in msg or "invalid choice" in msg or "needs at least" in msg, msg


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    box = Sandbox(tmp_path)
    monkeypatch.setenv("REPLICATE_RESULTS", str(box.results))
    monkeypatch.setenv("REPLICATE_RUNS", str(box.runs))
    return box


def test_every_notebook_has_cases():
    assert notebooks(), "no implemented notebook found"
    for paper in notebooks():
        kinds = {c.kind for c in cases_for(paper)}
        assert kinds == {"unknown_name", "wrong_type", "out_of_range"}, paper
        print(f"{paper}: {len(cases_for(paper))} bad-input cases; no range to violate: {unbounded(paper)}")


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_rejected_in_process(case: Case, sandbox, monkeypatch, capsys):
    before = sandbox.state()
    overrides = {} if case.name == "scale" else {case.name: case.value}
    scale = case.value if case.name == "scale" else "smoke"
    # 1. the config layer
    with pytest.raises(ConfigError) as e:
        resolve_config(case.paper, scale, **overrides)
    _check_message(str(e.value), case)
    # 2. the notebook's validation cell, as Papermill would inject the value
    monkeypatch.setattr(nbmod, "_exit_with_parent", lambda: None)  # not in a kernel: do not watch pytest's parent
    with pytest.raises(nbmod.ParameterError) as e:
        nbmod.resolve(case.paper, {"scale": scale, **overrides, "In": [], "_": None})
    _check_message(str(e.value), case)
    # 3. the CLI: exit 2, one line on stderr naming the parameter
    capsys.readouterr()
    argv = ["run", case.paper, "--scale", str(scale)]
    if case.name != "scale":
        argv += ["-p", f"{case.name}={case.value!r}"]
    assert _cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    _check_message(err, case)
    assert sandbox.state() == before, "a rejected run touched results/ or runs/"


def _cli(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse errors (e.g. --scale) exit 2 through our parser
        return e.code


@pytest.mark.parametrize("paper", notebooks())
def test_rejected_by_the_real_cli(paper, tmp_path):
    """``python -m replicate run``: a wrong type and an out-of-range value (the unknown name goes through
    Papermill below; every case goes through ``cli.main`` above). A process costs seconds: importing a paper's
    config imports its module."""
    box = Sandbox(tmp_path)
    before = box.state()
    _, wrong_type, out_of_range = representative(paper)
    for case in (wrong_type, out_of_range):
        r = box.cli("run", paper, "--scale", "smoke", "-p", f"{case.name}={case.value!r}", timeout=120)
        assert r.returncode == 2, (case, r.stderr)
        lines = stderr_lines(r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        _check_message(lines[0], case)
    assert box.state() == before


def test_bad_scale_and_paper_id_by_the_real_cli(tmp_path):
    box = Sandbox(tmp_path)
    before = box.state()
    r = box.cli("run", notebooks()[0], "--scale", "huge", timeout=120)
    assert r.returncode == 2 and len(stderr_lines(r.stderr)) == 1 and "--scale" in r.stderr, r.stderr
    r = box.cli("run", "no_such_paper", timeout=120)
    assert r.returncode == 2 and len(stderr_lines(r.stderr)) == 1 and "unknown paper id" in r.stderr, r.stderr
    assert box.state() == before


@pytest.mark.parametrize("paper", notebooks())
def test_rejected_by_papermill_directly(paper, tmp_path):
    """``papermill notebooks/<id>.ipynb out.ipynb -p scale smoke -p <misspelt name> value``: Papermill itself only
    warns about the unknown name; the notebook's validation cell stops the run with one line naming it."""
    box = Sandbox(tmp_path / "box")
    before = box.state()
    case = representative(paper)[0]
    out = tmp_path / "out.ipynb"
    r = box.papermill(paper, out, [("scale", "smoke"), (case.name, str(case.value))])
    assert r.returncode != 0, r.stderr[-2000:]
    errors = [o for cell in json.loads(out.read_text())["cells"] for o in cell.get("outputs", [])
              if o.get("output_type") == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "ParameterError", errors
    _check_message(errors[0]["evalue"], case)
    assert "ParameterError" in r.stderr and case.name in r.stderr, r.stderr[-2000:]
    assert box.state() == before
