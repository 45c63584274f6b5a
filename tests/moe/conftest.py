"""MoE layer tests (PyTorch path on the CPU; the kernels' Triton path is covered in tests/kernels)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
