"""Where things live. The project root is the checkout that holds this package (or ``REPLICATE_ROOT``).

- ``results/``: published artifacts, committed for ``small``.
- ``runs/``: everything regenerable and git-ignored: training runs keyed by config hash, caches (tokenizers,
  encoded corpora), executed notebooks, staging folders of results being written.
"""

from __future__ import annotations

import os
from pathlib import Path


def root() -> Path:
    env = os.environ.get("REPLICATE_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    return Path.home() / ".cache" / "replicate"


def results_dir() -> Path:
    return Path(os.environ.get("REPLICATE_RESULTS", root() / "results"))


def runs_dir() -> Path:
    return Path(os.environ.get("REPLICATE_RUNS", root() / "runs"))


def cache_dir(kind: str) -> Path:
    d = runs_dir() / "cache" / kind
    d.mkdir(parents=True, exist_ok=True)
    return d


def notebooks_dir() -> Path:
    return root() / "notebooks"
