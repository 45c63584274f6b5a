"""Kernel tests: every Triton kernel against its PyTorch reference, through the Triton interpreter on a CPU
(``tests/conftest.py`` exports ``TRITON_INTERPRET=1`` before anything is imported). Shapes stay tiny: each
interpreted program instance costs milliseconds."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_precision():
    torch.manual_seed(0)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = prev
