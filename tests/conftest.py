"""Test-wide set-up. Runs before any test module imports `replicate`.

On a machine without CUDA the Triton kernels can only run in Triton's interpreter, and the interpreter is chosen
when a kernel module is imported (``triton.jit`` reads ``TRITON_INTERPRET`` then), so it is set here, first.
Notebooks and benchmarks never use it: with ``REPLICATE_KERNELS=auto`` the CPU path is PyTorch.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# Property tests draw the same examples on every run, so CI cannot pass or fail by luck; `HYPOTHESIS_PROFILE=explore`
# draws fresh ones when hunting for bugs locally.
from hypothesis import settings as _hyp_settings

_hyp_settings.register_profile("ci", derandomize=True, database=None)
_hyp_settings.register_profile("explore", derandomize=False)
_hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
