"""Comparison helpers shared by the kernel tests and the GPU check (``python -m replicate.bench kernels``).

Tolerance table by dtype (forward outputs; gradients; fla-style relative RMS for bf16 on the GPU):

| dtype | forward atol / rtol | backward atol / rtol | note |
|---|---|---|---|
| float64 | 1e-10 / 1e-10 | 1e-9 / 1e-9 | oracles |
| float32 | 1e-5 / 1e-4 | 1e-4 / 1e-3 | IEEE products (TF32 off), as the interpreter computes |
| bfloat16 | rel. RMS <= 1e-2 | rel. RMS <= 2e-2 | GPU only (no bf16 ``tl.dot`` in the interpreter) |

Indices, permutations, offsets and counts are compared for exact equality.
"""

from __future__ import annotations

import torch

TOLERANCES = {
    torch.float64: {"fwd": dict(atol=1e-10, rtol=1e-10), "bwd": dict(atol=1e-9, rtol=1e-9)},
    torch.float32: {"fwd": dict(atol=1e-5, rtol=1e-4), "bwd": dict(atol=1e-4, rtol=1e-3)},
}
BF16_REL_RMS = {"fwd": 1e-2, "bwd": 2e-2}


def rel_rms(ref: torch.Tensor, actual: torch.Tensor) -> float:
    ref, actual = ref.double(), actual.double()
    return float((ref - actual).square().mean().sqrt() / ref.square().mean().sqrt().clamp(min=1e-12))


def assert_close(name: str, ref: torch.Tensor, actual: torch.Tensor, kind: str = "fwd") -> None:
    """``torch.testing.assert_close`` with the table's tolerance for ``actual``'s dtype; NaN/inf aware."""
    assert ref.shape == actual.shape, f"{name}: shape {tuple(actual.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    if actual.dtype == torch.bfloat16:
        err = rel_rms(ref, actual)
        assert err <= BF16_REL_RMS[kind], f"{name}: relative RMS error {err:.2e} > {BF16_REL_RMS[kind]:.0e}"
        return
    tol = TOLERANCES[actual.dtype][kind]
    torch.testing.assert_close(actual, ref.to(actual.dtype), msg=lambda m: f"{name} ({kind}): {m}", **tol)
