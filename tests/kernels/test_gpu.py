"""GPU-only kernel checks (marker ``gpu``, deselected by default): bf16 products (the interpreter has no bf16
``tl.dot``) and compiled-kernel correctness at realistic sizes. Timing lives in ``python -m replicate.bench
kernels --device cuda``."""

import pytest
import torch

from replicate.kernels.testing import assert_close

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("T, E, K", [(1, 8, 2), (4096, 64, 2), (3000, 17, 1)], ids=["T1-E8-K2", "T4096-E64-K2", "T3000-E17-K1"])
def test_moe_experts_triton_on_gpu(T, E, K, dtype):
    from replicate.kernels import moe_experts, route

    D, F = 256, 512
    dev = "cuda"
    logits = torch.randn(T, E, device=dev)
    r = route(logits, K, renormalize=True, impl="torch")
    leaves = [torch.randn(T, D, device=dev, dtype=dtype), torch.randn(E, D, F, device=dev, dtype=dtype) / D**0.5,
              torch.randn(E, D, F, device=dev, dtype=dtype) / D**0.5, torch.randn(E, F, D, device=dev, dtype=dtype) / F**0.5]
    ref_l = [t.float().clone().requires_grad_() for t in leaves]  # fp32 reference from the same values
    tri_l = [t.clone().requires_grad_() for t in leaves]
    ref = moe_experts(ref_l[0], r.topk_idx_TK, r.topk_w_TK, *ref_l[1:], impl="torch")
    tri = moe_experts(tri_l[0], r.topk_idx_TK, r.topk_w_TK, *tri_l[1:], impl="triton")
    assert_close("out", ref.to(dtype), tri) if dtype == torch.bfloat16 else assert_close("out", ref, tri)
    g = torch.randn_like(ref)
    gr_ref = torch.autograd.grad((ref * g).sum(), ref_l)
    gr_tri = torch.autograd.grad((tri.float() * g).sum(), tri_l)
    for name, a, b in zip(("dx", "dW_gate", "dW_up", "dW_down"), gr_ref, gr_tri):
        assert_close(name, a.to(dtype), b, "bwd")
