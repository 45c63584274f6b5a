"""Reusable harness of the reliability suite: every implemented notebook, isolated folders, real processes.

Everything here is generic over papers: a paper is covered the day its module and ``notebooks/<id>.ipynb`` land.
- :func:`notebooks`: the paper ids with a notebook (``replicate.papers.implemented()`` + ``notebooks/<id>.ipynb``).
- :class:`Sandbox`: ``REPLICATE_RESULTS`` / ``REPLICATE_RUNS`` in a temporary folder, the network off
  (``offline/sitecustomize.py`` on ``PYTHONPATH``), and helpers to run ``python -m replicate`` / ``papermill``.
- :func:`snapshot`: every file under a folder with its size and SHA-256 (``touches nothing`` = equal snapshots).
- :func:`run_until`: start the CLI in its own session, wait for a file pattern to appear, SIGKILL the whole tree.
- :meth:`Sandbox.use_probes`: stand-in notebooks for the runner's own tests (locks, Ctrl-C, failures, what reaches a
  notebook): the paper's real validation cell and results writer, and seconds of work instead of a real run.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from replicate.papers import implemented
from replicate.paths import notebooks_dir

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OFFLINE_DIR = HERE / "offline"
# The notebook whose kill-and-resume run is in `make test` (every notebook's is in `make test-slow`), and the one the
# browser test opens (the issue names the Temporal Scaling Law notebook). The kill-and-resume run in `make test` uses the
# cheapest notebook (lbpe: ~110 s for its five smoke runs, vs ~300 s for temporal_scaling_law);
# REPLICATE_TEST_REPRESENTATIVE picks another.
REPRESENTATIVE = "temporal_scaling_law"
KILL_REPRESENTATIVE = os.environ.get("REPLICATE_TEST_REPRESENTATIVE", "lbpe")


def notebooks() -> list[str]:
    return [p for p in implemented() if (notebooks_dir() / f"{p}.ipynb").exists()]


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (size, sha256)} of every file under ``root`` (empty when it does not exist)."""
    root = Path(root)
    out = {}
    if root.exists():
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def offline_env(base: dict | None = None) -> dict:
    """An environment whose Python processes have no network (and Hugging Face libraries know it)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(OFFLINE_DIR), *filter(None, [env.get("PYTHONPATH")])])
    env.update(REPLICATE_TEST_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env.pop("REPLICATE_DEFER_PUBLISH", None)
    return env


# A probe notebook: the real validation cell (`resolve`), a staged table of the resolved config, then it waits while
# the sandbox holds a file `hold`, fails when it holds `fail`, and publishes a claim.
PROBE_CELLS = (
    'scale: str = "small"  # smoke | small | paper',
    "import time\nfrom pathlib import Path\n\nimport pandas as pd\n\nfrom replicate.claims import Claim\n"
    "from replicate.config import to_dict\nfrom replicate.notebook import resolve\nfrom replicate.results import Results\n\n"
    "cfg = resolve({paper!r}, globals())\nres = Results(cfg)\n"
    "res.table('extra_config', pd.DataFrame({{'name': list(to_dict(cfg)), 'value': [repr(v) for v in to_dict(cfg).values()]}}))",
    "switches = Path({root!r})\nwhile (switches / 'hold').exists():\n    time.sleep(0.05)\n"
    "if (switches / 'fail').exists():\n    raise RuntimeError('probe: asked to fail')",
    "res.claims([Claim('C1', 'probe', 'm', None, 1.0, '', 'inconclusive', 'extra_config')])\nres.finish()",
)


@dataclass
class Sandbox:
    root: Path
    probes: bool = False  # notebooks/ is the sandbox's own (REPLICATE_ROOT): see use_probes

    def __post_init__(self):
        self.root = Path(self.root)
        self.results.mkdir(parents=True, exist_ok=True)
        self.runs.mkdir(parents=True, exist_ok=True)

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def env(self) -> dict:
        env = offline_env()
        env.update(REPLICATE_RESULTS=str(self.results), REPLICATE_RUNS=str(self.runs))
        if self.probes:
            env["REPLICATE_ROOT"] = str(self.root)
        return env

    def use_probes(self, papers: list[str]) -> None:
        """Replace each paper's notebook by a probe (``PROBE_CELLS``) for the processes this sandbox starts."""
        self.probes = True
        for paper in papers:
            cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "outputs": [],
                      "metadata": {"tags": ["parameters"]} if i == 0 else {},
                      "source": src.format(paper=paper, root=str(self.root))} for i, src in enumerate(PROBE_CELLS)]
            nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                              "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}
            (self.root / "notebooks").mkdir(exist_ok=True)
            (self.root / "notebooks" / f"{paper}.ipynb").write_text(json.dumps(nb))

    def probe_config(self, paper: str, scale: str = "smoke") -> dict:
        """The config a probe run published (``extra_config``): {name: repr(value)}."""
        import pandas as pd

        df = pd.read_csv(self.results / paper / scale / "tables" / "extra_config.csv", keep_default_na=False)
        return dict(zip(df["name"], df["value"]))

    def state(self) -> tuple[dict, dict]:
        return snapshot(self.results), snapshot(self.runs)

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "replicate", *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)

    def popen_cli(self, *args: str, log: Path) -> subprocess.Popen:
        f = open(log, "ab")
        return subprocess.Popen([sys.executable, "-m", "replicate", *args], env=self.env, cwd=REPO, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def papermill(self, paper: str, out: Path, params: list[tuple[str, str]], timeout: float = 300):
        """``papermill notebooks/<paper>.ipynb OUT -p name value ...`` run directly (not through our CLI)."""
        cmd = [sys.executable, "-m", "papermill", str(notebooks_dir() / f"{paper}.ipynb"), str(out),
               "--cwd", str(notebooks_dir()), "--no-progress-bar"]
        for name, value in params:
            cmd += ["-p", name, value]
        return subprocess.run(cmd, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the process, its session and every descendant (the Jupyter kernel runs in its own session), at
    once, and wait until all are gone, as after a power cut or the OOM killer."""
    try:
        family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        family = [proc.pid]
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    kill_pids(family)
    proc.wait(timeout=30)
    gone_by = time.time() + 30
    while time.time() < gone_by and any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                        for p in family[1:]):
        time.sleep(0.05)


def run_until(sandbox: Sandbox, args: list[str], pattern: str, log: Path, *, delay: float = 0.0,
              timeout: float = 600) -> str:
    """Start ``python -m replicate ARGS``; when a file matching the glob ``pattern`` (relative to the sandbox)
    exists, wait ``delay`` seconds and SIGKILL the whole tree. Returns the matched path. Fails if the run ends
    (or times out) before the pattern appears: then nothing was interrupted."""
    old = set(glob.glob(str(sandbox.root / pattern)))  # left by an earlier (killed) run: not this run's progress
    proc = sandbox.popen_cli(*args, log=log)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            hits = [h for h in glob.glob(str(sandbox.root / pattern)) if h not in old]
            if hits:
                time.sleep(delay)
                if proc.poll() is not None:
                    raise AssertionError(f"the run ended (exit {proc.returncode}) before it could be killed at "
                                         f"{pattern}; log: {log.read_text()[-2000:]}")
                return hits[0]
            if proc.poll() is not None:
                raise AssertionError(f"the run ended (exit {proc.returncode}) before {pattern} appeared; "
                                     f"log: {log.read_text()[-2000:]}")
            time.sleep(0.02)
        raise AssertionError(f"{pattern} did not appear within {timeout} s")
    finally:
        kill_tree(proc)


def stderr_lines(text: str) -> list[str]:
    """Non-empty lines, without the kernel's unrelated start-up warning lines."""
    return [l for l in text.splitlines() if l.strip() and "Kernel is running over TCP without encryption" not in l]


def kill_pids(pids) -> None:
    """SIGKILL every pid in ``pids`` that still exists."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
