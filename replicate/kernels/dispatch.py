"""Which implementation of the routing kernels runs: decided once, outside any ``autograd.Function``.

``REPLICATE_KERNELS`` (read the first time a kernel op is called, then cached):

| value          | on CUDA tensors        | on CPU tensors                                                      |
|----------------|------------------------|---------------------------------------------------------------------|
| ``auto`` (default) | Triton             | PyTorch (``reference.py``)                                          |
| ``torch``      | PyTorch                | PyTorch                                                             |
| ``triton``     | Triton                 | Triton through the interpreter; needs ``TRITON_INTERPRET=1`` exported before |
|                |                        | any kernel module is imported, else a ``KernelConfigError`` says so  |

The interpreter runs one program instance at a time (milliseconds each): it serves the kernel tests only.
Notebooks and benchmarks on the CPU use the PyTorch path (``auto``). The choice is made before
``Function.apply`` (Liger-Kernel PR #1396: a fallback chosen inside ``forward`` drops gradients), and logged once.

Tests force one implementation per call with the ``impl=`` argument every public op takes, or for a block of
code with ``with use_impl("triton"): ...``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os

import torch

log = logging.getLogger(__name__)

ENV_VAR = "REPLICATE_KERNELS"
CHOICES = ("auto", "torch", "triton")

HAS_TRITON = importlib.util.find_spec("triton") is not None

_mode: str | None = None  # resolved value of REPLICATE_KERNELS, cached at first use
_override: str | None = None  # set by use_impl()
_logged: set[str] = set()


class KernelConfigError(RuntimeError):
    """A kernel implementation was requested that cannot run here."""


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel_mode() -> str:
    """The value of ``REPLICATE_KERNELS`` (validated once, then cached)."""
    global _mode
    if _mode is None:
        value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if value not in CHOICES:
            raise KernelConfigError(f"{ENV_VAR}={value!r}: allowed values are {', '.join(CHOICES)}")
        _mode = value
    return _mode


def check_triton_usable(device: torch.device | str | None = None) -> None:
    """Raise a ``KernelConfigError`` with the fix if Triton kernels cannot run on ``device`` here."""
    if not HAS_TRITON:
        raise KernelConfigError(
            "Triton kernels were requested but `triton` is not installed; "
            f"install the `triton` extra or set {ENV_VAR}=torch"
        )
    on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if not on_cuda and not interpreter_enabled():
        raise KernelConfigError(
            f"{ENV_VAR}=triton on a CPU needs the Triton interpreter: export TRITON_INTERPRET=1 before Python "
            f"imports any kernel module (it is meant for the kernel tests only), or set {ENV_VAR}=auto/torch"
        )


def resolve_impl(device: torch.device | str, impl: str | None = None) -> str:
    """``"torch"`` or ``"triton"`` for tensors on ``device``. ``impl`` (if given) overrides the environment."""
    choice = impl or _override or kernel_mode()
    if choice not in CHOICES:
        raise KernelConfigError(f"kernel impl {choice!r}: allowed values are {', '.join(CHOICES)}")
    dev_type = torch.device(device).type
    if choice == "auto":
        choice = "triton" if (dev_type == "cuda" and HAS_TRITON) else "torch"
    if choice == "triton":
        check_triton_usable(device)
    key = f"{dev_type}:{choice}"
    if key not in _logged:
        _logged.add(key)
        log.info("replicate.kernels: %s implementation on %s", choice, dev_type)
    return choice


@contextlib.contextmanager
def use_impl(impl: str):
    """Force ``"torch"``, ``"triton"`` or ``"auto"`` inside a ``with`` block (tests, benchmarks)."""
    global _override
    if impl not in CHOICES:
        raise KernelConfigError(f"kernel impl {impl!r}: allowed values are {', '.join(CHOICES)}")
    previous, _override = _override, impl
    try:
        yield
    finally:
        _override = previous


def _reset_for_tests() -> None:
    """Forget the cached environment value (tests that change ``REPLICATE_KERNELS``)."""
    global _mode
    _mode = None
    _logged.clear()
