"""Atomic file writes and integrity-checked loads, used by every writer in the package.

A write goes to a temporary file in the same folder, is flushed and fsynced, then ``os.replace``d over the
target, so a reader (or a rerun after SIGKILL) sees the old file or the new one, never half of one. The file gets
the mode a plain ``open`` would give it (0666 less the umask: 0644 usually). JSON is written strictly: a NaN or
infinity becomes ``null``, never the invalid ``NaN``.
Checkpoints and caches are loaded with ``weights_only=True``; a file that fails to load is reported in one line
and removed so the caller rebuilds it, never used.

:func:`run_lock` keeps two processes out of one run (a training run's folder, one paper's publication);
:func:`no_interrupt` keeps Ctrl-C out of a few renames that must not stop halfway.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import math
import os
import signal
import socket
import threading
import uuid
from pathlib import Path
from typing import Callable

log = logging.getLogger("replicate")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as for any new file
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
    """``obj`` as strict JSON (NaN and ±inf as ``null``; other objects as their ``str``)."""
    return write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")


def _finite(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


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


# ------------------------------------------------------------------------------------------------ locking


class Busy(RuntimeError):
    """Another live process holds the lock. ``str(err)`` is one line naming it."""


@contextlib.contextmanager
def run_lock(path: str | Path, what: str | None = None, *, wait: bool = False):
    """Hold the exclusive lock file ``path`` for the block, or raise :class:`Busy` at once (one line naming the
    process that holds it, and ``what`` it guards; default: the lock's folder); ``wait``: wait for it instead (for
    locks held a moment, as around a publish). The operating system drops the lock when its holder exits, however
    it exits (SIGKILL included), so a stale lock never blocks a rerun; the file stays (removing it would let a third
    process lock a file the second one no longer sees). In a distributed job only rank 0 takes it: the other ranks
    (started by Lightning or a cluster launcher with ``RANK`` / ``LOCAL_RANK`` / ``NODE_RANK`` set) work on the
    same run."""
    if any(os.environ.get(v, "0") not in ("", "0") for v in ("RANK", "LOCAL_RANK", "NODE_RANK")):
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise Busy(f"{what or path.parent} is in use by {holder}: wait for it to finish (or stop it), then run "
                       "again") from None
        now = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} (since {now})".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def no_interrupt():
    """Ctrl-C (SIGINT) ignored for the block, in the main thread (elsewhere a no-op): for a few renames that
    must not stop halfway. A Ctrl-C pressed meanwhile is dropped; the block is short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc"):
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # it ended meanwhile
        return False
