"""Run a paper's notebook headless with Papermill and publish its results.

``run_paper(paper_id, scale, seed, overrides)``:
1. validates the parameters with ``resolve_config`` (exit 2 and one line on a bad one; nothing is touched);
2. executes ``notebooks/<id>.ipynb`` with Papermill into ``runs/executed/<id>-<scale>.ipynb``; the notebook
   writes its artifacts into a staging folder (``replicate.results``);
3. on success adds the executed notebook to the staging folder, swaps it into ``results/<id>/<scale>/`` and
   rebuilds ``results/README.md``. On failure ``results/`` is left as it was (exit 1).
Training runs inside the notebook are cached by config hash under ``runs/<id>/``, so running the same command
again after a crash or a kill resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import uuid
from pathlib import Path

from replicate.config import ConfigError, resolve_config
from replicate.paths import notebooks_dir, results_dir, runs_dir

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def notebook_path(paper_id: str) -> Path:
    return notebooks_dir() / f"{paper_id}.ipynb"


def run_paper(paper_id: str, scale: str = "small", seed: int | None = None, overrides: dict | None = None,
              *, out=None) -> int:
    out = out or sys.stderr
    overrides = dict(overrides or {})
    if seed is not None:
        overrides["seed"] = seed
    try:
        resolve_config(paper_id, scale, **overrides)
    except ConfigError as e:
        print(f"error: {e}", file=out)
        return EXIT_USAGE
    nb = notebook_path(paper_id)
    if not nb.exists():
        print(f"error: paper {paper_id!r}: notebook {nb} is missing", file=out)
        return EXIT_USAGE

    import papermill as pm

    executed = runs_dir() / "executed" / f"{paper_id}-{scale}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    handoff = runs_dir() / "staging" / f"{paper_id}-{scale}-{uuid.uuid4().hex[:8]}.path"
    handoff.parent.mkdir(parents=True, exist_ok=True)
    env_before = os.environ.get("REPLICATE_DEFER_PUBLISH")
    os.environ["REPLICATE_DEFER_PUBLISH"] = str(handoff)
    os.environ.setdefault("REPLICATE_PROGRESS", "0")
    logging.getLogger("papermill").setLevel(logging.ERROR)  # "Passed unknown parameter": validated above
    try:
        pm.execute_notebook(str(nb), str(executed), parameters={"scale": scale, **overrides}, kernel_name="python3",
                            progress_bar=False, cwd=str(nb.parent))
    except pm.PapermillExecutionError as e:
        print(f"error: {paper_id} ({scale}) failed in cell {e.exec_count}: {e.ename}: {e.evalue.splitlines()[0] if e.evalue else ''}"
              f" — see {executed}; results/ was not changed", file=out)
        return EXIT_USAGE if e.ename == "ParameterError" else EXIT_FAILED
    finally:
        if env_before is None:
            os.environ.pop("REPLICATE_DEFER_PUBLISH", None)
        else:
            os.environ["REPLICATE_DEFER_PUBLISH"] = env_before
    if not handoff.exists():
        print(f"error: {paper_id}: the notebook finished without calling Results.finish(); results/ was not changed",
              file=out)
        return EXIT_FAILED
    staging = Path(handoff.read_text().strip())
    handoff.unlink()
    shutil.copyfile(executed, staging / "notebook.ipynb")
    from replicate.results import publish, write_report

    publish(staging, results_dir() / paper_id / scale)
    write_report()
    print(f"{paper_id} ({scale}): results in {results_dir() / paper_id / scale}", file=out)
    return EXIT_OK
