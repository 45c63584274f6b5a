"""``python -m replicate {run,list,report,bench}``.

  run <id|all> [--scale smoke|small|paper] [--seed N] [-p key=value ...]
        execute notebooks/<id>.ipynb with Papermill and publish results/<id>/<scale>/
  list  papers, their claims and current verdicts
  report  rebuild results/README.md from results/
  bench ...  benchmarks (python -m replicate.bench --help)

Exit codes: 0 success; 1 a notebook started and failed; 2 refused before anything ran (a bad argument or
parameter, a budget this machine cannot meet, an unusable results or runs folder, the same paper and scale already
running), in one line naming it and what is allowed; 130 interrupted (Ctrl-C). Whatever the code, results/ is
changed only by a run that succeeded, and running the same command again resumes a failed or interrupted run.
``run all`` checks every paper's parameters before the first run starts.
"""

from __future__ import annotations

import argparse
import ast
import sys

from replicate.config import SCALES
from replicate.papers import PAPERS, implemented


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the whole usage first)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


class _Usage(Exception):
    pass


def _parse_param(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise _Usage(f"-p {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw  # a bare word is a string
    return key.strip(), value


def _overrides(params: list[str], seed: int | None) -> dict:
    """``-p`` values by name (each given once) and ``--seed`` (not beside ``-p seed=``)."""
    out: dict = {}
    for key, value in map(_parse_param, params):
        if key in out:
            raise _Usage(f"-p {key!r}: given twice ({out[key]!r} and {value!r}); give it once")
        out[key] = value
    if seed is not None:
        if "seed" in out:
            raise _Usage("--seed and -p seed=...: give the seed once")
        out["seed"] = seed
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("interrupted: nothing was changed; rerun the same command to resume", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    if argv[:1] == ["bench"]:
        from replicate.bench.__main__ import main as bench_main

        return bench_main(argv[1:])
    parser = _Parser(prog="python -m replicate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a paper's notebook headless and publish its results")
    run.add_argument("paper", help="paper id or 'all'")
    run.add_argument("--scale", default="small", choices=SCALES)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("-p", "--param", action="append", default=[], metavar="key=value",
                     help="override a config parameter (Python literal or bare string)")
    sub.add_parser("list", help="papers, claims and verdicts")
    sub.add_parser("report", help="rebuild results/README.md")
    sub.add_parser("bench", help="benchmarks: python -m replicate bench --help")
    args = parser.parse_args(argv)

    if args.command == "report":
        from replicate.paths import UnusableFolder, check_results_folder
        from replicate.results import write_report

        try:
            check_results_folder()
        except UnusableFolder as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(write_report())
        return 0
    if args.command == "list":
        return _list()
    if args.paper != "all" and args.paper not in PAPERS:
        print(f"error: paper: unknown paper id {args.paper!r}; allowed: all, {', '.join(PAPERS)}", file=sys.stderr)
        return 2
    from replicate import runner

    papers = implemented() if args.paper == "all" else [args.paper]
    try:
        overrides = _overrides(args.param, args.seed)
        for pid in papers if len(papers) > 1 else ():  # all of them before the first run starts
            runner.check(pid, args.scale, overrides)
    except (_Usage, runner.Refused) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    worst = 0
    for pid in papers:
        code = runner.run_paper(pid, args.scale, overrides)
        worst = max(worst, code)
        if code in (runner.EXIT_USAGE, runner.EXIT_INTERRUPTED):
            return code
    return worst


def _list() -> int:
    from replicate.results import read_claims

    impl = set(implemented())
    for pid, title in PAPERS.items():
        print(f"{pid:22s} {title}" + ("" if pid in impl else "  [not implemented yet]"))
        for scale in ("small", "paper", "smoke"):
            claims = read_claims(pid, scale)
            if claims is None:
                continue
            for r in claims.to_dict("records"):
                print(f"    [{scale}] {r['claim_id']:4s} {r['verdict']:15s} {r['claim'][:90]}")
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
