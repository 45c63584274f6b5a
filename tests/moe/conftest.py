"""MoE layer tests (PyTorch path on the CPU; the kernels' Triton path is covered in tests/kernels)."""

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (bf16 tl.dot, timing); deselected by default")
    config.addinivalue_line("markers", "slow: long-running; deselected by default")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
