"""Atomic file writes and integrity-checked loads, used by every writer in the package.

A write goes to a temporary file in the same folder, is flushed and fsynced, then ``os.replace``d over the
target, so a reader (or a rerun after SIGKILL) sees the old file or the new one, never half of one.
Checkpoints and caches are loaded with ``weights_only=True``; a file that fails to load is reported in one line
and removed so the caller rebuilds it, never used.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

log = logging.getLogger("replicate")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def discard_corrupt(path: str | Path, err: BaseException) -> None:
    """Report a corrupt checkpoint or cache file in one line and remove it, so the caller rebuilds it."""
    log.warning("corrupt file %s (%s): removed, it will be rebuilt", path, type(err).__name__)
    Path(path).unlink(missing_ok=True)


def read_json(path: str | Path):
    """The JSON in ``path``, or None when it is missing or corrupt (a corrupt file is reported and removed)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        discard_corrupt(path, e)
        return None


def torch_save(path: str | Path, obj) -> Path:
    import torch

    return atomic_write(path, lambda p: torch.save(obj, p))


def torch_load(path: str | Path):
    """``torch.load(weights_only=True)``, or None when missing or corrupt (reported and removed)."""
    import torch

    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip, a pickle error, a bad magic number: all mean "rebuild"
        discard_corrupt(path, e)
        return None
