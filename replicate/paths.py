"""Where things live. The project root is the checkout that holds this package (or ``REPLICATE_ROOT``).

- ``results/``: published artifacts, committed for ``small``.
- ``runs/``: everything regenerable and git-ignored: training runs keyed by config hash, caches (tokenizers,
  encoded corpora), executed notebooks, staging folders of results being written, lock files.

:func:`check_folders` finds a folder that cannot be written (a file in its place, read-only, another filesystem)
before a run starts, not when it publishes.
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


class UnusableFolder(Exception):
    """A results or runs folder that cannot be written. ``str(err)`` is one line naming it."""


def check_folders(paper_id: str, scale: str) -> None:
    """Raise :class:`UnusableFolder` unless a run of ``paper_id`` at ``scale`` can write everything it will write:
    ``results/<id>/<scale>/`` (replaced by a rename), the folders under ``runs/``, and both on one filesystem (the
    publish is a rename). Checked before anything runs; creates nothing."""
    final = results_dir() / paper_id / scale
    _usable(final, "results folder", replaced=True)
    for sub in ("staging", "executed", "trash", "locks", "cache", paper_id):
        _usable(runs_dir() / sub, "runs folder")
    if _existing(final).stat().st_dev != _existing(runs_dir() / "staging").stat().st_dev:
        raise UnusableFolder(f"results folder {results_dir()} and runs folder {runs_dir()} are on different "
                             "filesystems: results are published by a rename; put both on one (REPLICATE_RESULTS, "
                             "REPLICATE_RUNS)")


def check_results_folder() -> None:
    """Raise :class:`UnusableFolder` unless ``results/`` is (or can be made) a writable folder."""
    _usable(results_dir(), "results folder")


def _existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if os.path.lexists(p))


def _usable(path: Path, what: str, replaced: bool = False) -> None:
    """``path`` is a writable folder, or can be created as one; ``replaced``: its parent is writable too."""
    found = _existing(path)
    if not found.is_dir():
        raise UnusableFolder(f"{what} {path}: {found} is not a folder")
    for p in (found, found.parent) if replaced and found == path else (found,):
        if not os.access(p, os.W_OK | os.X_OK):
            raise UnusableFolder(f"{what} {path}: {p} is not writable")
