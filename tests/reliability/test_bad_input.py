"""Bad input: every parameter of every notebook rejects an unknown name, a wrong type, an out-of-range or
non-finite value, a repeat in a set, and every declared cross-field constraint, with one clear line naming it,
through the CLI and through Papermill directly, and touches nothing; good values (tuples, bools spelled as words)
pass every way in.

The cases come from the config dataclasses (``cases.py``). All of them run in-process through ``resolve``, the
notebook's own validation (``replicate.notebook.resolve``) fed exactly what Papermill would inject (Papermill's
own ``-p`` parsing and Python translator, for ``papermill -p`` and for what ``replicate run`` hands Papermill),
and the CLI's ``main()``; a few per notebook run as real processes: ``python -m replicate run`` and ``papermill``
(the notebook's validation cell raises ``ParameterError``).
"""

from __future__ import annotations

import json

import pytest
from papermill.cli import _resolve_type
from papermill.translators import PythonTranslator

import replicate.notebook as nbmod
from cases import Case, accepted_for, as_typed, cases_for, non_finite, representative, unbounded
from harness import Sandbox, notebooks, stderr_lines
from replicate import cli, runner
from replicate.config import ConfigError, resolve
from replicate.papers import config_class

ALL_CASES = [c for p in notebooks() for c in cases_for(p)]
ACCEPTED = [(p, *a) for p in notebooks() for a in accepted_for(p)]


def _check_message(msg: str, case: Case) -> None:
    assert "\n" not in msg.strip(), f"more than one line: {msg!r}"
    assert f"'{case.param}'" in msg or f"--{case.param}" in msg, f"does not name {case.param!r}: {msg!r}"
    expected = {"unknown_name": ("unknown",), "constraint": (f"parameter '{case.param}': ",),
                "reserved_name": ("pass it as the scale",)}.get(
        case.kind, ("must be", "must not", "invalid choice", "needs at least"))
    assert any(e in msg for e in expected), msg


def injected(params: dict) -> dict:
    """The names Papermill's injected cell binds for ``params`` (its Python translator, executed)."""
    namespace: dict = {}
    exec(PythonTranslator.codify(params), namespace)
    return {k: v for k, v in namespace.items() if k != "__builtins__"}


def via_papermill_cli(pairs: list[tuple[str, str]]) -> dict:
    """What ``papermill ... -p name value`` injects (Papermill turns each value into str, int, float, bool or None)."""
    return injected({k: _resolve_type(v) for k, v in pairs})


def via_replicate_run(case_args: list[str]) -> dict:
    """What ``python -m replicate run ... --scale S -p name=value`` hands Papermill, as the notebook sees it."""
    assert case_args[0] == "--scale" and set(case_args[2::2]) <= {"-p"}, case_args
    return injected(runner.notebook_parameters(case_args[1], cli._overrides(case_args[3::2], None)))


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    box = Sandbox(tmp_path)
    monkeypatch.setenv("REPLICATE_RESULTS", str(box.results))
    monkeypatch.setenv("REPLICATE_RUNS", str(box.runs))
    return box


def test_every_notebook_has_cases():
    assert notebooks(), "no implemented notebook found"
    for paper in notebooks():
        cases = cases_for(paper)
        assert {"unknown_name", "wrong_type", "out_of_range", "non_finite", "reserved_name"} <= {c.kind for c in cases}
        rules = getattr(config_class(paper), "CONSTRAINTS", ())
        assert sum(c.kind == "constraint" for c in cases) == len(rules), paper
        print(f"{paper}: {len(cases)} bad-input cases ({len(rules)} constraints); no range to violate: "
              f"{unbounded(paper)}")


def test_the_generator_covers_sets_grids_floats_and_constraints():
    """The kinds no paper may use yet (``distinct``, ``increasing``) are generated from the metadata alone."""
    from dataclasses import dataclass

    from replicate.config import PaperConfig, constraint, param

    @dataclass(frozen=True, kw_only=True)
    class Toy(PaperConfig):
        width: int = param(64, help="w", min=16, max=512)
        heads: int = param(4, help="h", min=1, max=64)
        grid: tuple[int, ...] = param((1, 2, 4), help="g", min=1, max=64, increasing=True)
        arms: tuple[str, ...] = param(("a", "b"), help="a", choices=("a", "b", "c"), distinct=True)
        lr: float | None = param(None, help="l", min=0.0)
        CONSTRAINTS = (constraint("heads", lambda c: c.width % c.heads == 0, "must divide width ({width})", heads=3),)
        smoke = small = paper = classmethod(lambda cls: cls(scale="smoke"))

    Toy.paper_id = "toy"
    got = [(c.kind, c.overrides) for c in cases_for("toy", Toy)]
    for want in [("repeats", (("grid", (1, 1, 2, 4)),)), ("repeats", (("grid", (4, 2, 1)),)),
                 ("repeats", (("arms", ("a", "a", "b")),)), ("constraint", (("heads", 3),)),
                 ("unknown_name", (("paper_id", "x"),)), ("reserved_name", (("scale", "paper"),))]:
        assert want in got, want
    assert {v for k, ov in got if k == "non_finite" for _, v in ov} >= {float("inf"), float("-inf")}
    for case in cases_for("toy", Toy):
        with pytest.raises(ConfigError) as e:
            resolve(Toy, case.scale, **dict(case.overrides))
        _check_message(str(e.value), case)


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_rejected_in_process(case: Case, sandbox, monkeypatch, capsys):
    before = sandbox.state()
    overrides = dict(case.overrides)
    # 1. the config layer
    with pytest.raises(ConfigError) as e:
        resolve(config_class(case.paper), case.scale, **overrides)
    _check_message(str(e.value), case)
    # 2. the notebook's validation cell, fed what Papermill injects: for `papermill -p`, and for `replicate run`
    # (in a notebook `scale` is the scale itself: "scale given as an override" exists only for the CLI and the API)
    monkeypatch.setattr(nbmod, "_exit_with_parent", lambda: None)  # not in a kernel: do not watch pytest's parent
    ways = () if case.kind == "reserved_name" else (via_papermill_cli(case.papermill_args()),
                                                     via_replicate_run(case.cli_args()))
    for namespace in ways:
        with pytest.raises(nbmod.ParameterError) as e:
            nbmod.resolve(case.paper, {**namespace, "In": [], "_": None})
        _check_message(str(e.value), case)
    # 3. the CLI: exit 2, one line on stderr naming the parameter
    capsys.readouterr()
    assert _cli(["run", case.paper, *case.cli_args()]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    _check_message(err, case)
    assert sandbox.state() == before, "a rejected run touched results/ or runs/"


@pytest.mark.parametrize("paper, name, given, expected", ACCEPTED, ids=lambda x: repr(x)[:40])
def test_accepted_every_way_in(paper, name, given, expected, sandbox, monkeypatch):
    """Defects 1 and 11 (issue 10): a tuple given to ``replicate run -p`` reached the notebook as a string, and
    ``-p flag=true`` was refused. Each way in must give the config the same value."""
    monkeypatch.setattr(nbmod, "_exit_with_parent", lambda: None)
    want = resolve(config_class(paper), "smoke", **{name: expected})
    assert getattr(want, name) == expected
    ways = {
        "replicate run": via_replicate_run(["--scale", "smoke", "-p", f"{name}={as_typed(given)}"]),
        "papermill -p": via_papermill_cli([("scale", "smoke"), (name, as_typed(given))]),
        "papermill -y": injected({"scale": "smoke", name: list(given) if isinstance(given, tuple) else given}),
    }
    for way, namespace in ways.items():
        assert nbmod.resolve(paper, namespace) == want, way
    assert runner.check(paper, "smoke", cli._overrides([f"{name}={as_typed(given)}"], None)) == []


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
        r = box.cli("run", paper, *case.cli_args(), timeout=120)
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


@pytest.mark.parametrize("paper, which", [(p, w) for p in notebooks() for w in ("unknown_name", "non_finite")])
def test_rejected_by_papermill_directly(paper, which, tmp_path):
    """``papermill notebooks/<id>.ipynb out.ipynb -p scale smoke -p <misspelt name> value`` (Papermill itself only
    warns about the unknown name) and ``-p <float> nan`` (Papermill injects ``float('nan')``, which passed every
    range check: defect 3): the notebook's validation cell stops the run with one line naming it."""
    box = Sandbox(tmp_path / "box")
    before = box.state()
    case = representative(paper)[0] if which == "unknown_name" else non_finite(paper)
    out = tmp_path / "out.ipynb"
    r = box.papermill(paper, out, case.papermill_args())
    assert r.returncode != 0, r.stderr[-2000:]
    errors = [o for cell in json.loads(out.read_text())["cells"] for o in cell.get("outputs", [])
              if o.get("output_type") == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "ParameterError", errors
    _check_message(errors[0]["evalue"], case)
    assert "ParameterError" in r.stderr and case.name in r.stderr, r.stderr[-2000:]
    assert box.state() == before
