"""The CLI: bad input exits 2 with one line and changes nothing; list and report work."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from replicate.cli import main
from replicate.papers import PAPERS, implemented

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


PLANNED = [p for p in PAPERS if p not in implemented()]  # ids listed but without a package yet


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
        *([(["run", PLANNED[-1]], f"paper: {PLANNED[-1]!r} is not implemented yet")] if PLANNED else []),
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
    assert "temporal_scaling_law" in out and "reproduced" in out and ("[not implemented yet]" in out) == bool(PLANNED)
    assert main(["report"]) == 0
    text = (results / "README.md").read_text()
    assert "| **C1** x | m |" in text


def _err(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _one_line(code, err, fragment):
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and fragment in err, (code, err)


def test_a_tuple_reaches_the_notebook_through_papermill(monkeypatch):
    """Defect 1 (issue 10): ``-p "fit_fractions=(0.2,)"`` passed the CLI's check, then Papermill rendered the tuple
    as the string '(0.2,)'. What the CLI hands Papermill, rendered by Papermill's own translator and run as its
    injected cell, must validate in the notebook."""
    from papermill.translators import PythonTranslator

    import replicate.notebook as nbmod
    from replicate import cli, runner

    monkeypatch.setattr(nbmod, "_exit_with_parent", lambda: None)
    overrides = cli._overrides(["fit_fractions=(0.2,)", "main_fit_fraction=0.2"], None)
    namespace: dict = {}
    exec(PythonTranslator.codify(runner.notebook_parameters("smoke", overrides)), namespace)
    cfg = nbmod.resolve("temporal_scaling_law", {k: v for k, v in namespace.items() if k != "__builtins__"})
    assert cfg.fit_fractions == (0.2,) and cfg.scale == "smoke"


def test_run_all_checks_every_paper_before_the_first_run(results, monkeypatch, capsys):
    """Defect 2: ``run all -p n_checkpoints=39`` published temporal_scaling_law, then refused for lbpe."""
    from replicate import runner

    ran = []
    monkeypatch.setattr(runner, "run_paper", lambda *a, **k: ran.append(a) or 0)
    code, err = _err(["run", "all", "--scale", "smoke", "-p", "n_checkpoints=39"], capsys)
    _one_line(code, err, "parameter 'n_checkpoints': unknown for lbpe")
    assert ran == []
    assert _err(["run", "all", "--scale", "smoke", "-p", "seed=3"], capsys)[0] == 0 and len(ran) == len(implemented())


@pytest.mark.parametrize("argv, fragment", [
    (["-p", "scale=paper"], "parameter 'scale': pass it as the scale (--scale)"),
    (["-p", "paper_id=x"], "parameter 'paper_id': unknown for temporal_scaling_law"),
    (["-p", "lr=1e-3", "-p", "lr=2e-3"], "-p 'lr': given twice (0.001 and 0.002); give it once"),
    (["--seed", "1", "-p", "seed=2"], "--seed and -p seed=...: give the seed once"),
    (["-p", "equivalence_margin=nan"], "parameter 'equivalence_margin': must be a finite number"),
    (["-p", "equivalence_margin=1e999"], "parameter 'equivalence_margin': must be a finite number"),
    (["-p", "run_reweighting=yes"], "parameter 'run_reweighting': must be true | false | True | False, got 'yes'"),
])
def test_more_bad_input_is_one_line(argv, fragment, results, capsys):
    """Defect 5 (``-p scale=`` / ``-p paper_id=`` were TypeError tracebacks), defect 3 (non-finite numbers), a
    repeated ``-p`` key (last won silently), ``--seed`` beside ``-p seed=``."""
    before = _snapshot(results)
    _one_line(*_err(["run", "temporal_scaling_law", "--scale", "smoke", *argv], capsys), fragment)
    assert _snapshot(results) == before


def test_bool_words_pass_the_check(results):
    """Defect 11: ``-p run_reweighting=true`` said "must be true/false, got 'true'"."""
    from replicate import cli, runner

    for word in ("true", "True", "false", "False"):
        assert runner.check("temporal_scaling_law", "smoke", cli._overrides([f"run_reweighting={word}"], None)) == []


@pytest.mark.parametrize("spoil", ["results_file", "paper_file", "runs_file", "staging_file", "read_only",
                                   "other_filesystem"])
def test_unusable_folders_are_refused_before_anything_runs(spoil, tmp_path, monkeypatch, capsys):
    """Defect 6: a results or runs folder that is a file, read-only or otherwise unusable was found only after the
    whole notebook ran (NotADirectoryError, staging left behind); ``report`` crashed with FileExistsError."""
    results, runs = tmp_path / "results", tmp_path / "runs"
    results.mkdir()
    runs.mkdir()
    if spoil == "results_file":
        results.rmdir()
        results.write_text("not a folder")
    elif spoil == "paper_file":
        (results / "temporal_scaling_law").write_text("not a folder")
    elif spoil == "runs_file":
        runs.rmdir()
        runs.write_text("not a folder")
    elif spoil == "staging_file":
        (runs / "staging").write_text("not a folder")
    elif spoil == "read_only":  # chmod does not stop root: the check asks access(2), as the kernel would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and Path(p) != results)
    else:
        if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("no second filesystem")
        runs = Path("/dev/shm") / f"replicate-test-{os.getpid()}"
    monkeypatch.setenv("REPLICATE_RESULTS", str(results))
    monkeypatch.setenv("REPLICATE_RUNS", str(runs))
    before = {p: (p.is_file() and p.read_bytes()) for p in tmp_path.rglob("*")}
    code, err = _err(["run", "temporal_scaling_law", "--scale", "smoke"], capsys)
    fragment = {"read_only": "is not writable", "other_filesystem": "different filesystems"}.get(spoil, "is not a folder")
    _one_line(code, err, fragment)
    assert ("results folder" if spoil in ("results_file", "paper_file", "read_only", "other_filesystem")
            else "runs folder") in err
    if spoil in ("results_file", "read_only"):
        _one_line(*_err(["report"], capsys), fragment)
    assert {p: (p.is_file() and p.read_bytes()) for p in tmp_path.rglob("*")} == before  # nothing created
    assert spoil != "other_filesystem" or not runs.exists()


def test_a_rejected_value_is_reported_before_any_heavy_import():
    """A rejected value used to take 15-21 s (torch and the paper imported first): the CLI, the runner's checks and
    every paper's config must validate with torch, pandas, Lightning and Papermill unavailable."""
    from replicate.papers import implemented

    code = ("import sys\n"
            "for m in ('torch', 'pandas', 'lightning', 'papermill', 'matplotlib'): sys.modules[m] = None\n"
            "import replicate.cli, replicate.runner, replicate.config, replicate.budget, replicate.results, "
            "replicate.notebook, replicate.io, replicate.paths, replicate.papers\n"
            f"codes = [replicate.cli.main(['run', p, '--scale', 'smoke', '-p', 'seed=-1']) for p in {implemented()!r}]\n"
            "assert codes == [2] * len(codes), codes\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("parameter 'seed': must be an integer in [0, ") == len(implemented()), p.stderr
