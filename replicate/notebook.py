"""Helpers for the notebooks' first cells: validate parameters, set up display.

Papermill only warns about a parameter the notebook does not declare, and nbval injects nothing, so the cell
after ``parameters`` calls :func:`resolve` with the notebook's globals: it takes every user-level name bound to a
plain value (a literal: what the parameters cell declares and what Papermill injects), passes them to
:func:`replicate.config.resolve` (any name, ``paper_id`` included, is taken as a parameter: it cannot collide with
the function's own arguments), and so rejects an unknown name, a wrong type or an out-of-range value
with one clear line, whichever way the notebook was started. Names bound to anything else (the config, the
results writer, frames, bundles: the notebook's own objects) are not parameters, so running the parameters and
validation cells again in a live kernel after a whole run works (the notebooks bind no literal of their own).
"""

from __future__ import annotations

from replicate.config import ConfigError, resolve as resolve_cls
from replicate.papers import config_class

_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}
# What a parameters cell or Papermill's injected cell can bind: literals (lists and dicts come from YAML / JSON).
_LITERALS = (str, int, float, bool, type(None), tuple, list, dict)


class ParameterError(ConfigError):
    pass


def resolve(paper_id: str, namespace: dict):
    """The validated config from the notebook's parameters (and any injected ones) in ``namespace``."""
    _exit_with_parent()
    params = {k: v for k, v in namespace.items()
              if not k.startswith("_") and k not in _IPYTHON_NAMES and isinstance(v, _LITERALS)}
    scale = params.pop("scale", "small")
    try:
        return resolve_cls(config_class(paper_id), scale, **params)
    except ConfigError as e:
        # Re-raised without the chain so the notebook shows the one line that matters.
        raise ParameterError(str(e)) from None


def peak_memory_gib() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest finished child (a prefetch worker), in GiB (Linux
    reports ru_maxrss in KiB): what a closing note states as the kernel's memory."""
    import resource

    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20)


def note_footer(scale: str, seconds: dict, claims: list, to_settle) -> list[str]:
    """The end of a generated closing note: the experiments' seconds in this kernel (``seconds``: step -> s) with
    this process's and its largest worker's peak memory, and, where claims stayed open (inconclusive, not_run,
    invalid), what would settle each (``to_settle(claim)`` -> text)."""
    peak, child = peak_memory_gib()
    lines = ["", f"Experiments at `{scale}`: {sum(seconds.values()):.0f} s in this kernel ("
             + ", ".join(f"{k} {s:.0f} s" for k, s in seconds.items()) + "; cached runs count as ~0 s); peak memory of "
             f"this process {peak:.2f} GiB, of its largest worker {child:.2f} GiB."]
    open_ = [c for c in claims if c.verdict in ("inconclusive", "not_run", "invalid")]
    if open_:
        lines += ["", "To settle what stayed open: " + "; ".join(f"{c.claim_id}: {to_settle(c)}" for c in open_) + "."]
    return lines


def setup_display():
    """Matplotlib inline with a fixed style, pandas display widths; quiet Lightning's info logs."""
    import logging

    import pandas as pd

    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.precision", 4)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _exit_with_parent():
    """End this kernel when the process that started it dies (a SIGKILLed ``replicate run`` or Papermill), so an
    orphaned kernel never keeps training next to the rerun that resumes its work."""
    import os
    import threading
    import time

    if getattr(_exit_with_parent, "started", False):
        return
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="replicate-parent-watch").start()
    _exit_with_parent.started = True
