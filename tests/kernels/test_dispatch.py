"""Implementation choice (DESIGN.md §4.4): decided once from REPLICATE_KERNELS, outside autograd."""

import os
import subprocess
import sys

import pytest
import torch

from replicate.kernels import dispatch
from replicate.kernels.dispatch import KernelConfigError, resolve_impl, use_impl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(code: str, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "REPLICATE_KERNELS")}
    full.update(env)
    full["PYTHONPATH"] = REPO
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback rule")
def test_auto_is_torch_on_cpu():
    out = _run("from replicate.kernels.dispatch import resolve_impl; print(resolve_impl('cpu'))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU without the interpreter")
def test_forced_triton_on_cpu_without_interpreter_is_a_clear_error():
    code = ("import torch, replicate.moe as m\n"
            "layer = m.build_moe(d_model=8, d_ff=16, n_experts=4, k=2)\n"
            "layer(torch.randn(1, 3, 8))\n")
    out = _run(code, REPLICATE_KERNELS="triton")
    assert out.returncode != 0
    assert "KernelConfigError" in out.stderr and "TRITON_INTERPRET=1" in out.stderr


def test_invalid_value_is_a_clear_error():
    out = _run("from replicate.kernels.dispatch import resolve_impl; resolve_impl('cpu')", REPLICATE_KERNELS="cuda")
    assert out.returncode != 0
    assert "REPLICATE_KERNELS='cuda'" in out.stderr and "auto, torch, triton" in out.stderr


def test_forced_torch_and_override():
    out = _run("from replicate.kernels.dispatch import resolve_impl; print(resolve_impl('cuda'))",
               REPLICATE_KERNELS="torch")
    assert out.stdout.strip() == "torch", out.stderr
    with use_impl("triton"):  # the interpreter is on in this test process
        assert resolve_impl("cpu") == "triton"
    assert resolve_impl("cpu", impl="torch") == "torch"
    with pytest.raises(KernelConfigError):
        with use_impl("fast"):
            pass


def test_triton_path_of_the_layer_matches_torch_path():
    """The full MoE layer, once per implementation (choice made before Function.apply), same numbers."""
    import replicate.moe as m

    layer = m.build_moe(d_model=16, d_ff=24, n_experts=5, k=2, d_shared=8)
    x = torch.randn(2, 5, 16)
    outs = {}
    for impl in ("torch", "triton"):
        with use_impl(impl):
            xi = x.clone().requires_grad_()
            y, aux = layer(xi)
            (y.square().sum() + sum(aux.values())).backward()
            outs[impl] = (y.detach(), xi.grad, layer.experts.w_down_EFD.grad.clone(), layer.router.weight.grad.clone())
            layer.zero_grad(set_to_none=True)
    for a, b in zip(outs["torch"], outs["triton"]):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3)


def test_mode_is_cached():
    dispatch._reset_for_tests()
    first = dispatch.kernel_mode()
    os.environ["REPLICATE_KERNELS"] = "torch" if first != "torch" else "auto"
    try:
        assert dispatch.kernel_mode() == first  # decided once
    finally:
        os.environ.pop("REPLICATE_KERNELS")
        dispatch._reset_for_tests()
